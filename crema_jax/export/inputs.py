"""ECG inputs for the embed/predict CLIs: WFDB records or arrays -> model-ready arrays.

- Record lists: comma-separated paths, globs, or folders (every .hea inside, sorted).
- Lengths: a record longer than the model's window is centre-cropped, a shorter one zero-padded on
  the right (SiT: the padded patches are marked invalid and left out of the mean).
- SiT evaluation crops: `crop_offsets` as the evaluation protocol (ST-MEM: 3 crops of 2250 at
  0/125/250 of a 10 s record at 250 Hz); records of another length get the same number of crops
  spread evenly from start to end.
"""
from __future__ import annotations

import glob
import os

import numpy as np


def expand_records(spec: str) -> list[str]:
    """'a,b', 'dir/*.hea', or 'dir' -> record paths (without extension), in a stable order."""
    out = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        if os.path.isdir(item):
            out += sorted(p[:-4] for p in glob.glob(os.path.join(item, "**", "*.hea"),
                                                    recursive=True))
        elif any(ch in item for ch in "*?["):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise FileNotFoundError(f"{item}: the pattern matches no file")
            out += [os.path.splitext(p)[0] for p in matches
                    if p.endswith(".hea") or not os.path.exists(os.path.splitext(p)[0] + ".hea")]
        else:
            out.append(item[:-4] if item.endswith((".hea", ".mat", ".dat")) else item)
    if not out:
        raise FileNotFoundError(f"no records in {spec!r}")
    return list(dict.fromkeys(out))  # de-duplicated, order kept


def read_records(paths: list[str], fs: float):
    """(signals (N, 12, T_i) list float32 mV, lead_present (N, 12), record ids) at `fs` Hz."""
    from crema_jax.data import records

    signals, present, ids = [], [], []
    for path in paths:
        ecg = records.read_record(path, target_fs=fs)
        # ECGFounder's rule NaN -> 0 (read_record already repairs short NaN runs).
        signals.append(np.nan_to_num(ecg.signal.astype(np.float32)))
        present.append(ecg.lead_present)
        ids.append(ecg.record_id)
    return signals, np.stack(present), ids


def fit_length(x: np.ndarray, n: int) -> np.ndarray:
    """(..., T) -> (..., n): centre crop if longer, zero-pad on the right if shorter."""
    t = x.shape[-1]
    if t >= n:
        start = (t - n) // 2
        return x[..., start:start + n]
    return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, n - t)])


def crop_offsets(length: int, crop: int, offsets: tuple[int, ...]) -> list[int]:
    """The protocol's offsets when they span the record exactly (10 s records), else as many
    spread evenly from start to end; always len(offsets) crops, so batches keep one shape."""
    if length - crop == max(offsets):
        return list(offsets)
    return [int(round(o)) for o in np.linspace(0, max(length - crop, 0), len(offsets))]


def sit_crops(x: np.ndarray, *, crop: int, patch: int, offsets: tuple[int, ...]):
    """(L, T) -> patches (C, L, N, P) and patch_valid (C, L, N) (False for padding)."""
    num_patches = crop // patch
    valid_t = np.ones(x.shape[-1], bool)
    if x.shape[-1] < crop:
        valid_t = np.pad(valid_t, (0, crop - x.shape[-1]))
        x = np.pad(x, ((0, 0), (0, crop - x.shape[-1])))
    patches, valid = [], []
    for o in crop_offsets(x.shape[-1], crop, offsets):
        patches.append(x[:, o:o + crop].reshape(x.shape[0], num_patches, patch))
        ok = valid_t[o:o + crop].reshape(num_patches, patch).all(-1)
        valid.append(np.broadcast_to(ok, (x.shape[0], num_patches)))
    return np.stack(patches).astype(np.float32), np.stack(valid)
