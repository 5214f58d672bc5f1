"""The preprocessing steps, each a pure function along the last axis of (..., leads, T):
zero-phase Butterworth filters, a notch, running-median baseline removal and z-score
normalisation. The designs come from scipy.signal; the zero-phase filters and the running
median run as compiled loops (kernels.py) that give scipy's results bit for bit.
"""
from __future__ import annotations

import functools

import numpy as np
import scipy.signal

from crema_jax.data.signal import kernels


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
