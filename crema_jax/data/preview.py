"""What the model sees (`crema-jax preview`): a bundled ECG, its patches and its mask.

Reads a record of the bundled sample (dataset_index.sample_data_dir(); a synthetic ECG when the
sample is missing), preprocesses it and runs the pretraining transform (random crop, lead-wise
patchify, mask) exactly as the pipeline does, then writes a PNG: one row per lead, thin lines at
patch boundaries, hidden (masked) patches shaded.
"""
from __future__ import annotations

import numpy as np

from crema_jax.data import config as config_lib
from crema_jax.data import presets
from crema_jax.data import synthetic
from crema_jax.data.index import dataset_index
from crema_jax.data.index.wfdb_folder import wfdb_folder
from crema_jax.data.pipeline.transforms import PretrainViews
from crema_jax.data.reading.leads import LEADS
from crema_jax.data.reading.wfdb_records import read_record
from crema_jax.data.signal.preprocess import preprocess_record
from crema_jax.runtime import storage


def load_ecg(record_id: str = "") -> tuple[dict, str]:
    """A preprocessed bundled ECG as a pipeline element, and a title for it."""
    folder = dataset_index.sample_data_dir()
    infos = wfdb_folder(folder).records if folder.is_dir() else []
    if not infos:
        if record_id:
            raise FileNotFoundError(f"no bundled sample at {folder}; cannot show {record_id!r}")
        signal = synthetic.synthetic_ecg(0, seconds=10.0, fs=250.0)
        present, fs, title = np.ones(12, bool), 250.0, "synthetic ECG (no bundled sample found)"
    else:
        matches = [i for i in infos if i.record_id == record_id] if record_id else infos[:1]
        if not matches:
            raise ValueError(f"--record={record_id!r} is not in {folder}; "
                             f"available: {', '.join(i.record_id for i in infos[:10])} ...")
        ecg = read_record(matches[0].path, target_fs=250.0)
        signal, present, fs = ecg.signal, ecg.lead_present, ecg.fs
        title = f"{matches[0].record_id} ({matches[0].source}; Dx {', '.join(matches[0].labels)})"
    signal = preprocess_record(signal, fs, presets.preprocessing("crema"), present)
    return {"signal": signal, "lead_present": present, "index": 0, "labels": None}, title


def render(element: dict, title: str, out: str, *, mask_name: str, ratio: float,
           seed: int) -> dict:
    """Run the pretraining transform on one element and draw it; return the transformed views."""
    import matplotlib  # optional heavy import (~0.3 s): only this command draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = config_lib.default_data_config()
    cfg.num_views, cfg.mask.name, cfg.mask.ratio = 1, mask_name, ratio
    views = PretrainViews(cfg).random_map([element], np.random.default_rng(seed))
    patches, mask = views["patches"][0, 0], views["mask"][0, 0]  # (L, N, P), (L, N)
    valid = views["patch_valid"][0, 0]
    num_leads, num_patches, patch = patches.shape
    t = np.arange(num_patches * patch) / cfg.target_fs
    fig, axes = plt.subplots(num_leads, 1, figsize=(14, 1.1 * num_leads + 1), sharex=True)
    for lead, ax in enumerate(np.atleast_1d(axes)):
        for n in range(num_patches):
            t0, t1 = n * patch / cfg.target_fs, (n + 1) * patch / cfg.target_fs
            if mask[lead, n]:
                ax.axvspan(t0, t1, color="tab:orange", alpha=0.25, lw=0)
            if not valid[lead, n]:
                ax.axvspan(t0, t1, color="0.6", alpha=0.4, lw=0, hatch="//")
            ax.axvline(t0, color="0.85", lw=0.5)
        ax.plot(t, patches[lead].reshape(-1), color="k", lw=0.6)
        ax.set_ylabel(LEADS[views["lead_indices"][0, lead]], rotation=0, ha="right", va="center")
        ax.set_yticks([])
        ax.margins(x=0)
    visible = int((~mask).sum())
    fig.suptitle(f"{title}\n{mask_name} mask, ratio {ratio}: {visible} of {mask.size} patches "
                 f"visible (shaded = hidden from the encoder; {patch}-sample patches at "
                 f"{cfg.target_fs:g} Hz)", fontsize=10)
    np.atleast_1d(axes)[-1].set_xlabel("seconds into the crop")
    fig.tight_layout()
    # Atomic, into a folder made if missing (or uploaded, to a URL): never half-written.
    storage.write_atomic(out, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    plt.close(fig)
    return views
