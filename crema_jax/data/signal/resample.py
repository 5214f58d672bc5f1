"""Resampling along the last axis: polyphase (ours) or FFT (ST-MEM's scripts)."""
from __future__ import annotations

import fractions
import functools

import numpy as np
import scipy.signal


@functools.lru_cache(maxsize=32)
def _resample_filter(up: int, down: int) -> np.ndarray:
    """scipy.signal.resample_poly's own anti-aliasing FIR (Kaiser, beta 5), designed once per
    rate pair: designing it costs about as much as filtering a 10 s ECG."""
    max_rate = max(up, down)
    return scipy.signal.firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0))


def resample(x: np.ndarray, fs: float, target_fs: float, *, method: str = "polyphase"
             ) -> tuple[np.ndarray, float]:
    """Resampling along the last axis; returns (signal, exact output rate).

    "polyphase": scipy.signal.resample_poly with up/down = Fraction(target/fs) (ours);
    "fft": scipy.signal.resample to int(T * target / fs) samples (ST-MEM's scripts)."""
    if method == "fft":
        if target_fs == fs:
            return x, float(fs)
        n = int(x.shape[-1] * target_fs / fs)
        y = scipy.signal.resample(np.asarray(x, np.float64), n, axis=-1)
        return y.astype(x.dtype, copy=False), float(target_fs)
    if method != "polyphase":
        raise ValueError(f"data.resample={method!r}: expected 'polyphase' or 'fft'")
    ratio = fractions.Fraction(target_fs / fs).limit_denominator(1000)
    if ratio == 1:
        return x, float(fs)
    up, down = ratio.numerator, ratio.denominator
    window = _resample_filter(up, down).astype(x.dtype)
    y = scipy.signal.resample_poly(x, up, down, axis=-1, window=window)
    return y.astype(x.dtype, copy=False), float(fs * ratio)
