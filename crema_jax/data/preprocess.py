"""ECG preprocessing: pure functions on (..., leads, T) arrays, set by a ConfigDict. The designs
come from scipy.signal; the zero-phase filters and the running median run as compiled loops
(kernels.py) that give scipy's results bit for bit.

Order of operations in `preprocess` (the order ECGFounder's authors use; ST-MEM uses the subset
filter -> normalise): notch -> Butterworth filter(s) -> running-median baseline removal ->
normalisation -> clipping. Every step works along the last axis and is vectorised over leads.

Presets (`PRESETS[name]()` returns a fresh ConfigDict; the data paths that use them, with every
other step, are in presets.py):
- "crema" (= `default_preprocess_config()`): order-5 Butterworth high-pass 0.67 Hz then order-5
  low-pass 40 Hz, each zero-phase `sosfiltfilt`, then one z-score of the whole record over its
  recorded leads.
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

import functools

import ml_collections
import numpy as np
import scipy.signal


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


def _crema() -> ml_collections.ConfigDict:
    return default_preprocess_config()


def _stmem() -> ml_collections.ConfigDict:
    cfg = default_preprocess_config()
    cfg.stage, cfg.stats = "crop", "all"
    return cfg


def _ecgfounder() -> ml_collections.ConfigDict:
    cfg = default_preprocess_config()
    cfg.filter_type, cfg.filter_order, cfg.filter_form = "bandpass", 4, "ba"
    cfg.notch_hz = 50.0
    cfg.baseline, cfg.baseline_edges = "median", "zero"
    cfg.norm_eps = 1e-8
    cfg.stats = "all"
    return cfg


def _none() -> ml_collections.ConfigDict:
    cfg = default_preprocess_config()
    cfg.filter_type, cfg.normalise = "none", "none"
    return cfg


PRESETS = {"crema": _crema, "stmem": _stmem, "ecgfounder": _ecgfounder, "none": _none}


@functools.lru_cache(maxsize=64)
def _butter_sos(order: int, cutoff, btype: str, fs: float) -> tuple[np.ndarray, np.ndarray]:
    """Second-order sections and their steady-state initial conditions (cached: solving for
    `sosfilt_zi` costs more than filtering a whole 10 s ECG)."""
    sos = scipy.signal.butter(order, cutoff, btype=btype, fs=fs, output="sos")
    return sos, scipy.signal.sosfilt_zi(sos)


def _check_cutoffs(cutoffs, fs: float) -> None:
    for hz in cutoffs:
        if not 0 < hz < fs / 2:
            raise ValueError(f"filter corner {hz} Hz must lie between 0 and the Nyquist "
                             f"frequency {fs / 2} Hz (fs = {fs} Hz)")


def _sosfiltfilt(sos_zi: tuple[np.ndarray, np.ndarray], x: np.ndarray) -> np.ndarray:
    """scipy.signal.sosfiltfilt along the last axis (its default padlen), compiled, with cached
    initial conditions."""
    from crema_jax.data import kernels  # numba: imported (and compiled) on first use
    sos, zi = sos_zi
    padlen = 3 * (2 * len(sos) + 1 - min((sos[:, 2] == 0).sum(), (sos[:, 5] == 0).sum()))
    return kernels.sosfiltfilt(sos, zi, x, padlen)


@functools.lru_cache(maxsize=64)
def _butter_ba(order: int, cutoff, btype: str, fs: float) -> tuple[np.ndarray, ...]:
    """(b, a) of a Butterworth design and `lfilter_zi` (cached: the design alone costs a
    quarter of filtering a 10 s 12-lead ECG at 500 Hz)."""
    b, a = scipy.signal.butter(order, cutoff, btype=btype, fs=fs)
    return b, a, scipy.signal.lfilter_zi(b, a)


@functools.lru_cache(maxsize=16)
def _notch_ba(freq_hz: float, q: float, fs: float) -> tuple[np.ndarray, ...]:
    b, a = scipy.signal.iirnotch(freq_hz, q, fs=fs)
    return b, a, scipy.signal.lfilter_zi(b, a)


def _filtfilt_ba(ba_zi: tuple[np.ndarray, ...], x: np.ndarray) -> np.ndarray:
    """scipy.signal.filtfilt(b, a, x, axis=-1) (padlen 3 * max(len(a), len(b))), compiled, with
    the design and its initial conditions cached."""
    from crema_jax.data import kernels
    b, a, zi = ba_zi
    return kernels.filtfilt(b, a, zi, x, 3 * max(len(a), len(b)))


def butterworth(x: np.ndarray, fs: float, *, low_hz: float | None, high_hz: float | None,
                order: int, kind: str = "cascade", form: str = "sos") -> np.ndarray:
    """Zero-phase Butterworth filtering along the last axis.

    kind "cascade": high-pass(low_hz) then low-pass(high_hz), each of `order` (ST-MEM);
    kind "bandpass": a single band-pass design of `order` (ECGFounder). A None corner skips that
    side (a band-pass with one corner degenerates to the single high/low-pass).
    form "sos": second-order sections, sosfiltfilt; "ba": transfer function, filtfilt.
    """
    corners = [hz for hz in (low_hz, high_hz) if hz is not None]
    _check_cutoffs(corners, fs)
    if kind not in ("cascade", "bandpass"):
        raise ValueError(f"filter kind must be 'cascade' or 'bandpass', got {kind!r}")
    if form not in ("sos", "ba"):
        raise ValueError(f"filter form must be 'sos' or 'ba', got {form!r}")

    def run(cutoff, btype):
        if form == "ba":
            return _filtfilt_ba(_butter_ba(order, cutoff, btype, fs), x)
        return _sosfiltfilt(_butter_sos(order, cutoff, btype, fs), x)

    if kind == "bandpass" and low_hz is not None and high_hz is not None:
        return run((low_hz, high_hz), "bandpass")
    if low_hz is not None:
        x = run(low_hz, "highpass")
    if high_hz is not None:
        x = run(high_hz, "lowpass")
    return x


def notch(x: np.ndarray, fs: float, *, freq_hz: float, q: float = 30.0) -> np.ndarray:
    """Zero-phase IIR notch (scipy.signal.iirnotch + filtfilt) at `freq_hz`."""
    _check_cutoffs([freq_hz], fs)
    return _filtfilt_ba(_notch_ba(float(freq_hz), float(q), float(fs)), x)


def median_baseline(x: np.ndarray, fs: float, *, window_s: float = 0.4,
                    edges: str = "nearest") -> np.ndarray:
    """Subtracts a running median of int(window_s * fs) + 1 samples (made odd) per lead.

    edges "nearest" holds the edge sample, so the first and last 0.2 s are not pulled towards
    zero (our choice); "zero" pads zeros, exactly `scipy.signal.medfilt` (ECGFounder's code).
    """
    if edges not in ("nearest", "zero"):
        raise ValueError(f"baseline_edges must be 'nearest' or 'zero', got {edges!r}")
    width = int(window_s * fs) + 1
    width += 1 - width % 2
    half = width // 2
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(half, half)],
                    mode="edge" if edges == "nearest" else "constant")
    # The window starting at padded[i] is the one centred on x[i]. A compiled sort-based running
    # median (kernels.py), exact, without the GIL so read threads overlap.
    from crema_jax.data import kernels
    return x - kernels.running_median(padded, width)


# A standard deviation below 10 nV counts as zero: a flat input that went through the filters
# carries ~1e-17 of rounding noise, which a plain z-score would blow up to unit variance.
_FLAT_STD = 1e-8


def _zscore(x: np.ndarray, axis, eps: float) -> np.ndarray:
    """(x - mean) / (std + eps) over `axis`, numpy's std (population, ddof 0) computed from the
    same centred values; where std <= _FLAT_STD the output is all zeros (ST-MEM: std 0 -> 0)."""
    centred = x - x.mean(axis=axis, keepdims=True)
    std = np.sqrt(np.mean(np.square(centred), axis=axis, keepdims=True))
    flat = std <= _FLAT_STD
    centred /= np.where(flat, 1.0, std + eps)
    if flat.any():
        centred *= ~flat
    return centred


def normalise(x: np.ndarray, mode: str, *, lead_present: np.ndarray | None = None,
              eps: float = 0.0, stats: str = "present") -> np.ndarray:
    """"global": one mean/std over the leads and all time; "per_lead"; "none".

    x: (..., leads, T), every leading index (e.g. the crops of one record) its own statistics.
    stats "present": absent leads (lead_present False) are excluded from the statistics; "all":
    every row counts (the peers' code). Absent leads are returned as zeros.
    """
    if mode == "none":
        return x
    if mode not in ("global", "per_lead"):
        raise ValueError(f"normalise must be 'global', 'per_lead' or 'none', got {mode!r}")
    if stats not in ("present", "all"):
        raise ValueError(f"stats must be 'present' or 'all', got {stats!r}")
    present = (np.ones(x.shape[-2], bool) if lead_present is None
               else np.asarray(lead_present, bool))
    axis = (-2, -1) if mode == "global" else -1
    if not present.any():
        return np.zeros_like(x)
    if present.all() or stats == "all":
        out = _zscore(x, axis, eps)
        out[..., ~present, :] = 0.0
        return out
    out = np.zeros_like(x)
    out[..., present, :] = _zscore(x[..., present, :], axis, eps)
    return out


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
