"""A picture of what pretraining learned: one held-back ECG (val/test split), its masked patches
and the model's reconstruction of them, lead by lead -> WORKDIR/reconstruction.png."""
from __future__ import annotations

import jax
import numpy as np
from etils import epath

from crema_jax import models
from crema_jax.data import batch as batch_lib
from crema_jax.data import pipeline
from crema_jax.data.leads import LEADS


def held_back_batch(config, *, seed: int = 0) -> tuple[dict, str]:
    """One masked view batch (B=1) of the first record of the test split (else val, else train;
    synthetic data has no splits), built by the training pipeline's own view transform. Returns
    (batch, record description)."""
    data_cfg = config.data
    splits = ("",) if int(data_cfg.synthetic_records) > 0 else ("test", "val", "train")
    for split in splits:
        source = pipeline.make_source(data_cfg, split=split)
        if len(source):
            break
    else:
        raise ValueError(f"config.data: no records found under {data_cfg.root!r}")
    element = source[0]
    loaded = dict(element, **source.load(element))
    views = pipeline.PretrainViews(data_cfg)
    batch = views.random_map([loaded], np.random.default_rng(seed))
    return batch, f"{element['path']} ({split or 'synthetic'} split)"


def reconstruct(config, state, graphdef, batch) -> np.ndarray:
    """(L, N, P) reconstruction of view 0 in signal units: normalised-target predictions are
    mapped back with each target patch's own mean and std (MAE's visualisation convention)."""
    device_batch = batch_lib.device_part(batch)
    host_state = jax.device_get((state["params"], state["fixed"]))
    outputs = jax.jit(models.forward, static_argnums=0, static_argnames="train")(
        graphdef, host_state, device_batch, None, train=False)
    pred = np.asarray(outputs["pred"])[0, 0]
    if config.loss.norm_pix_loss or config.loss.name == "stmem":
        target = np.asarray(batch["patches"])[0, 0].astype(np.float64)
        mean = target.mean(-1, keepdims=True)
        std = np.sqrt(target.var(-1, ddof=1, keepdims=True) + 1e-6)
        pred = pred * std + mean
    return pred


def plot(batch, pred, path, *, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    patches = np.asarray(batch["patches"])[0, 0]          # (L, N, P)
    mask = np.asarray(batch["mask"])[0, 0]                # (L, N)
    leads = np.asarray(batch["lead_indices"])[0]
    num_leads, n, p = patches.shape
    t = np.arange(n * p)
    fig, axes = plt.subplots(num_leads, 1, figsize=(14, 1.3 * num_leads), sharex=True)
    axes = np.atleast_1d(axes)
    for row, ax in enumerate(axes):
        ax.plot(t, patches[row].reshape(-1), color="black", lw=0.7, label="ECG")
        for j in np.flatnonzero(mask[row]):
            span = slice(j * p, (j + 1) * p)
            ax.axvspan(j * p, (j + 1) * p, color="0.85", lw=0)
            ax.plot(t[span], pred[row, j], color="tab:red", lw=0.9,
                    label="reconstruction" if j == np.flatnonzero(mask[row])[0] else None)
        ax.set_ylabel(LEADS[int(leads[row])], rotation=0, labelpad=18)
        ax.set_yticks([])
    axes[0].legend(loc="upper right", ncol=2, fontsize=8)
    axes[0].set_title(title + "   (grey = masked patches the encoder never saw)", fontsize=9)
    axes[-1].set_xlabel("sample (250 Hz)")
    fig.tight_layout()
    with epath.Path(path).open("wb") as f:
        fig.savefig(f, format="png", dpi=90)
    plt.close(fig)


def write_png(config, result: dict, workdir) -> epath.Path:
    """Plots the held-back reconstruction of a finished `trainer.train` result."""
    if jax.process_count() > 1:
        raise ValueError("reconstruction.png is drawn by single-process runs only "
                         "(set config.train.reconstruction_png=False on multi-host jobs)")
    batch, record = held_back_batch(config)
    pred = reconstruct(config, result["state"], result["graphdef"], batch)
    path = epath.Path(workdir) / "reconstruction.png"
    plot(batch, pred, path, title=f"{record} after {result['last_step']} steps")
    return path
