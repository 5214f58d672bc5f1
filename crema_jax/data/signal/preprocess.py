"""ECG preprocessing: the steps of filters.py on (..., leads, T) arrays, set by a ConfigDict.

Order of operations in `preprocess` (the order ECGFounder's authors use; ST-MEM uses the subset
filter -> normalise): notch -> Butterworth filter(s) -> running-median baseline removal ->
normalisation -> clipping. Every step works along the last axis and is vectorised over leads.

`default_preprocess_config()` documents every field; its values are crema_jax's own ("crema":
order-5 Butterworth high-pass 0.67 Hz then order-5 low-pass 40 Hz, each zero-phase
`sosfiltfilt`, then one z-score of the whole record over its recorded leads). The named presets
(crema, stmem, ecgfounder, none) are in data/presets.py, with the data paths that use them:
- "stmem": the same two filters and a z-score over every fed lead, applied to each CROP
  (stage "crop"), as ST-MEM's transforms do.
- "ecgfounder": 50 Hz notch (Q 30) and an order-4 band-pass 0.67-40 Hz, both in (b, a) form
  with `filtfilt`; `medfilt` baseline of int(0.4*fs)+1 samples (made odd) with zero-padded edges
  subtracted; (x - mean) / (std + 1e-8) over the whole array.
- "none": nothing at all.

`stats="present"` leaves absent (zero-filled) leads out of the normalisation statistics (our
choice); `stats="all"` takes every row, as the peers' code does (identical for complete records).
Absent leads stay zero either way. A signal whose std is below 1e-8 (mV) normalises to zeros
(ST-MEM: std 0 -> zeros).
"""
from __future__ import annotations

import ml_collections
import numpy as np

from crema_jax.data.signal.filters import butterworth, median_baseline, normalise, notch


def default_preprocess_config() -> ml_collections.ConfigDict:
    """crema_jax's own preprocessing (the default for our models)."""
    return ml_collections.ConfigDict(dict(
        # "record": on the whole record when it is read; "crop": on each crop (ST-MEM).
        stage="record",
        # "cascade": separate high-pass and low-pass filters of `filter_order` (ST-MEM);
        # "bandpass": one band-pass design of `filter_order` (ECGFounder); "none".
        filter_type="cascade",
        # "sos": second-order sections with sosfiltfilt; "ba": transfer function with filtfilt
        # (ECGFounder's form; default odd padding of 3 * max(len(a), len(b)) samples).
        filter_form="sos",
        low_hz=0.67,        # High-pass corner in Hz (None: no high-pass); removes baseline drift.
        high_hz=40.0,       # Low-pass corner in Hz (None: no low-pass); removes EMG and mains.
        filter_order=5,
        notch_hz=ml_collections.config_dict.placeholder(float),  # e.g. 50.0 or 60.0 (mains).
        notch_q=30.0,
        baseline="none",    # "median": subtract a running median (ECGFounder); "none".
        baseline_window_s=0.4,
        baseline_edges="nearest",  # running-median edges: "nearest" | "zero" (medfilt's).
        normalise="global",  # "global" | "per_lead" | "none".
        stats="present",     # normalisation statistics over "present" leads or "all" rows.
        norm_eps=0.0,        # Added to the std; 0 means ST-MEM's "std 0 -> zeros" rule only.
        clip=ml_collections.config_dict.placeholder(float),  # |x| limit after normalisation.
    ))


def preprocess(signal: np.ndarray, fs: float, cfg: ml_collections.ConfigDict | dict,
               lead_present: np.ndarray | None = None) -> np.ndarray:
    """Applies the configured steps to a (..., leads, T) signal (each leading index, e.g. a crop,
    filtered and normalised on its own); returns float32 of the same shape."""
    if not isinstance(cfg, ml_collections.ConfigDict):  # e.g. the plain dict stored in a cache.
        full = default_preprocess_config()  # a dict of an older version lacks the newer keys
        full.update(dict(cfg))
        cfg = full
    x = np.asarray(signal, np.float64)
    if cfg.notch_hz is not None:
        x = notch(x, fs, freq_hz=cfg.notch_hz, q=cfg.notch_q)
    if cfg.filter_type != "none":
        x = butterworth(x, fs, low_hz=cfg.low_hz, high_hz=cfg.high_hz, order=cfg.filter_order,
                        kind=cfg.filter_type, form=cfg.filter_form)
    if cfg.baseline == "median":
        x = median_baseline(x, fs, window_s=cfg.baseline_window_s, edges=cfg.baseline_edges)
    elif cfg.baseline != "none":
        raise ValueError(f"baseline must be 'median' or 'none', got {cfg.baseline!r}")
    x = normalise(x, cfg.normalise, lead_present=lead_present, eps=cfg.norm_eps,
                  stats=cfg.stats)
    if lead_present is not None:
        x = x.copy() if x is signal else x  # never write into the caller's array
        x[..., ~np.asarray(lead_present, bool), :] = 0.0  # Filters keep zero rows zero; exact.
    if cfg.clip is not None:
        x = np.clip(x, -cfg.clip, cfg.clip)
    return x.astype(np.float32)


# ---------------------------------------------------------------- the two stages
# The one home of "where preprocessing runs": on the whole record as it is read (the sources,
# the cache writer, synthetic ECGs, the preview) or on each crop after it is cut (ST-MEM's).

def stage_config(cfg, stage: str):
    """`cfg` (a data.preprocess section; None = no preprocessing) when it runs at `stage`
    ("record" | "crop"), else None."""
    return cfg if cfg is not None and cfg["stage"] == stage else None


def preprocess_record(signal: np.ndarray, fs: float, cfg, lead_present: np.ndarray | None = None,
                      fed: np.ndarray | None = None) -> np.ndarray:
    """The record stage: `cfg` (None = nothing) on a whole (12, T) record; float32 out. With
    `fed` (the rows the model is fed) only those rows are preprocessed and the others stay
    zero, so statistics over "all" rows mean all FED rows (a 1-lead model's z-score is lead
    I's own)."""
    signal = np.asarray(signal, np.float32)
    if cfg is None:
        return signal
    if fed is None:
        return preprocess(signal, fs, cfg, lead_present=lead_present)
    out = np.zeros_like(signal)
    out[fed] = preprocess(signal[fed], fs, cfg, lead_present=lead_present[fed])
    return out


def preprocess_crops(crops: np.ndarray, real: np.ndarray, fs: float, cfg,
                     lead_present: np.ndarray) -> None:
    """The crop stage, in place: `cfg` on the `real[c]` recorded samples of each crop
    crops[c] (C, L, crop_samples), the zero padding after them left alone; crops of one length
    go through in one vectorised call."""
    groups = [slice(None)] if (real == real[0]).all() else [[c] for c in range(len(real))]
    for sel in groups:
        n = int(real[sel][0])
        if n >= 2:
            crops[sel, :, :n] = preprocess(crops[sel, :, :n], fs, cfg, lead_present=lead_present)
