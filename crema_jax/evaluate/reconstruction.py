"""Held-back masked reconstruction: the figures of the `reconstruction` evaluator and the picture
WORKDIR/reconstruction.png (every lead of a held-back ECG, its masked patches and the model's
reconstruction of them).

Masked reconstruction in the units the loss uses, beside three baselines that see
exactly what the encoder sees (the visible patches):

- zero: predict 0 everywhere (z-scored records: the per-lead mean).
- nearest_patch: copy the nearest visible patch of the same lead (earlier one on a tie).
- correlated_lead: the same instant of the visible lead most correlated with the hidden one, times
  that correlation (the least-squares slope between unit-variance leads); correlations are
  measured on training records. Zero where no lead is visible at that position.

With config.loss.norm_pix_loss every prediction and target is standardised per patch first (the
loss's space); otherwise the figures are in z-scored signal units.
"""
from __future__ import annotations

import jax
import numpy as np
from etils import epath

from crema_jax import losses, models
from crema_jax.data.pipeline import batch as batch_lib
from crema_jax.data.pipeline import crops, sources
from crema_jax.data.pipeline.transforms import PretrainViews
from crema_jax.data.reading.leads import LEADS
from crema_jax.evaluate import plots
from crema_jax.losses.mae import masked_mse as loss_masked_mse
from crema_jax.losses.mae import normalise_patches

BASELINES = ("zero", "nearest_patch", "correlated_lead")


def held_back_batch(data_cfg, *, split: str, num_records: int, seed: int) -> tuple[dict, list]:
    """Fixed masked views (view axis V) of the first `num_records` records of `split`, drawn by
    the pretraining pipeline's own transform with a fixed seed: the same masks at every
    evaluation. Returns (batch, record paths)."""
    source = sources.make_source(data_cfg, split=split)
    if not len(source):
        raise ValueError(f"config.evals.reconstruction.split={split!r}: no records in "
                         f"{data_cfg.root or data_cfg.cache_dir!r}")
    chunk = []
    for i in range(min(int(num_records), len(source))):
        element = source[i]
        chunk.append(dict(element, **source.load(element)))
    batch = PretrainViews(data_cfg).random_map(chunk, np.random.default_rng(seed))
    batch["patches"] = np.broadcast_to(
        batch["patches"], batch["mask"].shape + batch["patches"].shape[-1:]).copy()
    return batch, [e["path"] for e in chunk]


def lead_correlations(data_cfg, *, split: str = "train", max_records: int = 64) -> np.ndarray:
    """(L, L) Pearson correlations of the fed leads over (up to) `max_records` preprocessed
    records of `split`, pooled over samples."""
    source = sources.make_source(data_cfg, split=split)
    rows = crops.lead_rows(data_cfg.leads)
    sums, count = None, 0
    for i in range(min(len(source), int(max_records))):
        element = source[i]
        x = np.asarray(source.load(element)["signal"], np.float64)[rows]
        x = x - x.mean(1, keepdims=True)
        sums = x @ x.T if sums is None else sums + x @ x.T
        count += 1
    if not count:
        raise ValueError(f"no {split!r} records to measure lead correlations on")
    scale = np.sqrt(np.clip(np.diag(sums), 1e-12, None))
    return sums / scale[:, None] / scale[None, :]


def nearest_patch(patches: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(..., L, N, P) predictions: each hidden patch a copy of its lead's nearest visible one."""
    n = mask.shape[-1]
    position = np.arange(n)
    # distance from every slot to every visible slot of its lead (doubled, +1 for a later slot:
    # the earlier wins a tie); hidden slots are "infinitely" far
    later = position[None, :] > position[:, None]
    dist = np.abs(position[:, None] - position[None, :]) * 2 + later
    dist = np.where(mask[..., None, :], np.iinfo(np.int64).max // 4, dist)   # (..., L, N, N)
    source = np.argmin(dist, axis=-1)                                        # (..., L, N)
    return np.take_along_axis(patches, source[..., None], axis=-2)


def correlated_lead(patches: np.ndarray, mask: np.ndarray, corr: np.ndarray) -> np.ndarray:
    """(..., L, N, P) predictions: corr[k, j] * x_j at the same position, j the visible lead
    with the largest |corr[k, j]| (j != k); zero where no other lead is visible."""
    strength = np.abs(corr).astype(np.float64)
    np.fill_diagonal(strength, -np.inf)
    visible = ~mask                                                         # (..., L, N)
    # score[..., k, j, n] = |corr[k, j]| if lead j visible at n
    score = np.where(visible[..., None, :, :], strength[:, :, None], -np.inf)
    best = np.argmax(score, axis=-2)                                         # (..., L(k), N)
    found = np.take_along_axis(score, best[..., None, :], axis=-2)[..., 0, :] > -np.inf
    k = np.arange(mask.shape[-2])[:, None]
    slope = corr[k, best]                                                    # (..., L, N)
    copied = np.take_along_axis(patches, best[..., None], axis=-3)
    return np.where(found[..., None], slope[..., None] * copied, 0.0)


def masked_mse(pred: np.ndarray, patches: np.ndarray, weights: np.ndarray, *,
               norm_pix_loss: bool) -> float:
    """Mean over hidden valid patches of the per-patch MSE: the training loss's definition
    (losses/mae.py), in float64."""
    return float(loss_masked_mse(np.asarray(pred), np.asarray(patches), np.asarray(weights),
                                norm_pix_loss=norm_pix_loss, xp=np)[0])


def baseline_predictions(batch: dict, corr: np.ndarray, *, norm_pix_loss: bool) -> dict:
    patches, mask = np.asarray(batch["patches"], np.float64), np.asarray(batch["mask"])
    preds = {"zero": np.zeros_like(patches), "nearest_patch": nearest_patch(patches, mask),
             "correlated_lead": correlated_lead(patches, mask, corr)}
    if norm_pix_loss:  # a copied patch standardised by its own statistics (zero stays zero)
        preds = {k: v if k == "zero" else normalise_patches(v, xp=np)
                 for k, v in preds.items()}
    return preds


def scores(pred: np.ndarray, batch: dict, corr: np.ndarray, *, norm_pix_loss: bool) -> dict:
    """{"mse": model, "mse/<baseline>": ..., "mse_over/<baseline>": model / baseline}."""
    weights = np.asarray(batch["mask"])
    if "patch_valid" in batch:
        weights = weights & np.asarray(batch["patch_valid"])
    out = {"mse": masked_mse(pred, batch["patches"], weights, norm_pix_loss=norm_pix_loss)}
    for name, base in baseline_predictions(batch, corr, norm_pix_loss=norm_pix_loss).items():
        value = masked_mse(base, batch["patches"], weights, norm_pix_loss=norm_pix_loss)
        out[f"mse/{name}"] = value
        out[f"mse_over/{name}"] = out["mse"] / max(value, 1e-12)
    return out


# ------------------------------------------------------------------------------------ picture
def in_signal_units(pred: np.ndarray, patches: np.ndarray, norm_pix_loss: bool) -> np.ndarray:
    """Predictions of normalised targets mapped back with each target patch's own mean and std
    (MAE's visualisation convention); raw-target predictions as they are."""
    if not norm_pix_loss:
        return pred
    target = np.asarray(patches, np.float64)
    mean = target.mean(-1, keepdims=True)
    std = np.sqrt(target.var(-1, ddof=1, keepdims=True) + 1e-6)
    return pred * std + mean


def plot(batch, pred, path, *, title: str) -> None:
    plt = plots.pyplot()

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


def png_skip_reason(config) -> str | None:
    """Why `crema-jax pretrain` draws no reconstruction.png for this config, or None: the figure
    is drawn by a single process, of a decoder the loss trains (a contrastive-only loss leaves it
    at its random init: its reconstructions would mean nothing)."""
    if jax.process_count() > 1:
        return "single-process runs only"
    if not losses.trained_parts(config.loss)["decoder"]:
        return losses.untrained(config.loss, "decoder")
    return None


def write_png(config, result: dict, workdir) -> epath.Path:
    """Plots the first held-back record of a finished `trainer.train` result: the
    reconstruction evaluator's batch and predictions when it ran, else one record of the
    test split (val, train when empty) with the evaluator's default seed."""
    if jax.process_count() > 1:
        raise ValueError("reconstruction.png is drawn by single-process runs only "
                         "(set config.train.reconstruction_png=False on multi-host jobs)")
    norm_pix = losses.uses_norm_pix(config.loss)
    ran = [e for e in result.get("evaluators", ()) if getattr(e, "name", "") == "reconstruction"]
    if ran and ran[0].last is not None:
        batch, pred, paths = ran[0].batch, ran[0].last, ran[0].paths
    else:
        splits = ("",) if int(config.data.synthetic_records) > 0 else ("test", "val", "train")
        for split in splits:
            if len(sources.make_source(config.data, split=split)):
                break
        batch, paths = held_back_batch(config.data, split=split, num_records=1, seed=0)
        host_state = jax.device_get((result["state"]["params"], result["state"]["fixed"]))
        pred = np.asarray(jax.jit(models.forward, static_argnums=0, static_argnames="train")(
            result["graphdef"], host_state, batch_lib.device_part(batch), None,
            train=False)["pred"])
    one = {k: np.asarray(v)[:1] for k, v in batch.items()}
    pred = in_signal_units(pred[0, 0], one["patches"][0, 0], norm_pix)
    path = epath.Path(workdir) / "reconstruction.png"
    plot(one, pred, path, title=f"{paths[0]} (held back) after {result['last_step']} steps")
    return path
