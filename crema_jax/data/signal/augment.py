"""ECG augmentations for contrastive views: pure numpy functions selected by name in the config.

Every augmentation has the same signature so the pipeline can chain any subset:

    fn(signal float32 (L, T), lead_valid bool (L,), rng np.random.Generator, params Mapping,
       fs float) -> (signal float32 (L, T), lead_valid bool (L,))

`lead_valid` is threaded through (an extension of "fn(signal, rng, params)") because lead drop must
tell the pipeline which rows it blanked: those rows get patch_valid False, exactly like absent leads,
so no loss is computed on (and no pooled feature includes) a lead that was zeroed on purpose.
Inputs are never modified in place. Each fn applies with probability params["prob"].

All augmentations are OFF by default (`data.augment.names = ()`): the CREMA default view pair is two
independent masks of the same crop. Magnitudes are in the units of the preprocessed signal (after
global normalisation roughly unit variance), so the defaults read as fractions of a typical ECG.
"""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

AugmentFn = Callable[[np.ndarray, np.ndarray, np.random.Generator, Mapping, float],
                     tuple[np.ndarray, np.ndarray]]


def _applies(rng: np.random.Generator, params: Mapping) -> bool:
    return bool(rng.random() < float(params.get("prob", 1.0)))


def amplitude_scale(signal, lead_valid, rng, params, fs):
    """Multiply the whole ECG by one factor in [low, high] (gain differences between devices)."""
    del fs
    if not _applies(rng, params):
        return signal, lead_valid
    factor = rng.uniform(params["low"], params["high"])
    return (signal * np.float32(factor)).astype(np.float32), lead_valid


def baseline_wander(signal, lead_valid, rng, params, fs):
    """Add low-frequency sinusoids (breathing/electrode drift), independent per lead.

    `num_components` sinusoids per lead with frequency uniform in [0.05, max_freq_hz], random
    phase and amplitude uniform in [0, max_amplitude]. Absent leads stay zero.
    """
    if not _applies(rng, params):
        return signal, lead_valid
    num_leads, length = signal.shape
    count = int(params["num_components"])
    freqs = rng.uniform(0.05, params["max_freq_hz"], size=(num_leads, count, 1))
    phases = rng.uniform(0.0, 2.0 * np.pi, size=(num_leads, count, 1))
    amps = rng.uniform(0.0, params["max_amplitude"], size=(num_leads, count, 1))
    t = np.arange(length, dtype=np.float64) / fs
    wander = (amps * np.sin(2.0 * np.pi * freqs * t + phases)).sum(axis=1)
    return (signal + wander.astype(np.float32) * lead_valid[:, None]).astype(np.float32), lead_valid


def gaussian_noise(signal, lead_valid, rng, params, fs):
    """Add white Gaussian noise of standard deviation `std` (EMG / amplifier noise)."""
    del fs
    if not _applies(rng, params):
        return signal, lead_valid
    noise = rng.standard_normal(signal.shape, dtype=np.float32) * np.float32(params["std"])
    return (signal + noise * lead_valid[:, None]).astype(np.float32), lead_valid


def time_shift(signal, lead_valid, rng, params, fs):
    """Circularly shift all leads by the same random offset of up to max_shift_s seconds.

    A roll (not shift-with-zero-pad) keeps every sample real: zero padding would create flat
    stretches inside patches that patch_valid (one flag per whole patch) cannot describe. The wrap
    point is one discontinuity, mild for a quasi-periodic ECG. For shifts without wrap-around use
    `data.independent_view_crops`, which draws a separate crop offset per view.
    """
    if not _applies(rng, params):
        return signal, lead_valid
    max_shift = int(round(float(params["max_shift_s"]) * fs))
    shift = int(rng.integers(-max_shift, max_shift + 1))
    return np.roll(signal, shift, axis=1), lead_valid


def lead_drop(signal, lead_valid, rng, params, fs):
    """Zero each valid lead with probability `drop_prob`, keeping at least one valid lead.

    Dropped leads are marked invalid (returned lead_valid False): the pipeline then sets their
    patch_valid False, so the encoder and the losses treat them like leads the recording lacks.
    """
    del fs
    if not _applies(rng, params):
        return signal, lead_valid
    drop = (rng.random(lead_valid.shape) < float(params["drop_prob"])) & lead_valid
    if not (lead_valid & ~drop).any():
        candidates = np.flatnonzero(lead_valid)
        if candidates.size:
            drop[candidates[int(rng.integers(candidates.size))]] = False
    out = signal.copy()
    out[drop] = 0.0
    return out, lead_valid & ~drop


AUGMENTS: dict[str, AugmentFn] = {
    "amplitude_scale": amplitude_scale,
    "baseline_wander": baseline_wander,
    "gaussian_noise": gaussian_noise,
    "time_shift": time_shift,
    "lead_drop": lead_drop,
}


def apply_augmentations(signal: np.ndarray, lead_valid: np.ndarray, rng: np.random.Generator,
                        augment_cfg: Mapping, fs: float) -> tuple[np.ndarray, np.ndarray]:
    """Apply `augment_cfg.names` in order, each with its params `augment_cfg[name]`."""
    for name in augment_cfg["names"]:
        if name not in AUGMENTS:
            raise ValueError(f"data.augment.names: unknown augmentation {name!r}; "
                             f"expected some of {sorted(AUGMENTS)}")
        signal, lead_valid = AUGMENTS[name](signal, lead_valid, rng, augment_cfg[name], fs)
    return signal, lead_valid
