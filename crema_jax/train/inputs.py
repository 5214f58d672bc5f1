"""The trainer's view of the input pipeline: the per-process Grain iterator and batch shapes.

config.train.synthetic_records > 0 swaps the dataset for in-memory synthetic ECGs (smoke tests,
benchmarks, dry runs on a machine without data); everything after the source is the real
pipeline, so masks, views and iterator checkpoints behave exactly as with real records.
"""
from __future__ import annotations

import numpy as np

SYNTHETIC_SECONDS = 10.0  # ST-MEM's records are 10 s; crops of 9 s then have room to move.


def synthetic_signals(num_records: int, *, fs: float = 250.0, seed: int = 0) -> np.ndarray:
    """float32 (n, 12, T) ECG-like signals: a beat train (narrow Gaussian QRS + broad T wave) at
    a random rate per record, lead-specific gains, baseline wander and noise; unit-ish scale."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(SYNTHETIC_SECONDS * fs)) / fs
    out = np.empty((num_records, 12, t.size), np.float32)
    for i in range(num_records):
        period = 60.0 / rng.uniform(55, 100)
        phase = (t + rng.uniform(0, period)) % period
        beat = 2.5 * np.exp(-0.5 * ((phase - 0.2) / 0.012) ** 2) \
            + 0.6 * np.exp(-0.5 * ((phase - 0.45) / 0.05) ** 2)
        gains = rng.uniform(-1.0, 1.0, (12, 1))
        wander = 0.2 * np.sin(2 * np.pi * rng.uniform(0.1, 0.4) * t + rng.uniform(0, 6.3))
        out[i] = gains * beat + wander + 0.05 * rng.standard_normal((12, t.size))
    return out


def make_source(config):
    """The configured record source (synthetic when config.train.synthetic_records > 0)."""
    from crema_jax.data import pipeline, sources

    n = int(config.train.get("synthetic_records", 0))
    if n > 0:
        signals = synthetic_signals(n, fs=float(config.data.target_fs),
                                    seed=int(config.data.seed))
        return sources.ArraySource(signals, name=f"synthetic{n}")
    return pipeline.make_source(config.data)


def make_train_iterator(config):
    """This process's iterator of pretraining batches (B = config.data.batch_size)."""
    from crema_jax.data import pipeline

    return iter(pipeline.make_pretrain_dataset(config.data, source=make_source(config)))


def batch_spec(data_cfg) -> dict:
    """{key: (per-process shape, dtype)} of a pretraining batch (CONTRACTS.md format); K and M come
    from one draw of the configured mask strategy (they never depend on the draw)."""
    from crema_jax.data import masking

    b, v = int(data_cfg.batch_size), int(data_cfg.num_views)
    num_leads, patch = len(data_cfg.leads), int(data_cfg.patch_size)
    n = int(data_cfg.crop_samples) // patch
    _, visible, masked = masking.get_mask_fn(data_cfg.mask.name)(
        np.random.default_rng(0), num_leads, n, float(data_cfg.mask.ratio))
    return {"patches": ((b, v, num_leads, n, patch), np.float32),
            "mask": ((b, v, num_leads, n), np.bool_),
            "visible_idx": ((b, v, visible.size), np.int32),
            "masked_idx": ((b, v, masked.size), np.int32),
            "patch_valid": ((b, v, num_leads, n), np.bool_),
            "lead_indices": ((b, num_leads), np.int32)}
