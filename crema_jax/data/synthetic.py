"""Synthetic 12-lead ECGs with plausible P-QRS-T morphology, for tests, demos and benchmarks.

Model: each wave (P, Q, R, S, T) of every beat is a Gaussian in time carried by a 3-D cardiac
dipole direction. Leads I, II and V1-V6 are projections of that dipole on their lead vectors;
III, aVR, aVL and aVF are then derived from I and II with the Einthoven/Goldberger identities, so
the 12 leads are as consistent as a real recording (III = II - I holds exactly up to float32
rounding, noise and baseline wander included). Each seed draws its own heart rate (50-120 bpm),
electrical axis, wave amplitudes, RR jitter, noise and baseline wander. `af=True` gives an
AF-like rhythm: irregular RR intervals, no P waves, small 4-8 Hz fibrillatory waves.

These are test signals, not physiology: do not train a model meant for real ECGs on them.

`synthetic_records(data_cfg)` is what `data.synthetic_records > 0` reads (pipeline/sources.py):
that many of these ECGs, 10 s each at data.target_fs, preprocessed as data.preprocess says.
`write_synthetic_wfdb` and `write_synthetic_code15` write them as WFDB records or as CODE-15%'s
HDF5 files.
"""
from __future__ import annotations

import csv
import pathlib

import numpy as np
import wfdb

from crema_jax.data.reading import leads as leads_lib
from crema_jax.data.signal.preprocess import preprocess_record

# Lead vectors in (x: to the patient's left, y: inferior, z: anterior). Frontal leads at 0 and 60
# degrees; precordial leads sweep the horizontal plane from anterior-right (V1) to left (V6).
_FRONTAL = {"I": (1.0, 0.0, 0.0), "II": (0.5, 0.866, 0.0)}
# Angle in the horizontal plane from +x (left) towards +z (anterior): V1 115 deg (anterior,
# slightly right) ... V6 0 deg (left lateral).
_PRECORDIAL_DEG = (115.0, 95.0, 75.0, 50.0, 25.0, 0.0)

# Wave: (time of the peak relative to the R peak in s, width in s, amplitude in mV, dipole
# direction). Q and S are the early septal and late basal forces; T follows R's direction.
_WAVES = {
    "P": (-0.17, 0.022, 0.15, (0.5, 0.8, 0.2)),
    "Q": (-0.028, 0.009, 0.12, (-0.6, -0.2, 0.75)),
    "R": (0.0, 0.011, 1.3, (0.55, 0.65, -0.45)),
    "S": (0.03, 0.011, 0.45, (-0.3, -0.3, -0.9)),
    "T": (0.26, 0.05, 0.35, (0.6, 0.55, 0.3)),
}
SNOMED = {"sinus": "426783006", "af": "164889003", "tachy": "427084000", "brady": "426177001",
          "lad": "39732003", "rad": "47665007", "wide_qrs": "6374002"}
# write_synthetic_wfdb(factors=True): left/right axis deviation (frontal axis turned by -60/+90
# degrees) and a wide QRS (Q, R, S 2.2x wider, bundle-branch-like), each drawn per record.
FACTORS = {"lad": (0.2, -60.0), "rad": (0.15, 90.0), "wide_qrs": (0.25, 2.2)}


def _lead_vectors(rng: np.random.Generator) -> np.ndarray:
    """(8, 3) unit vectors for I, II, V1..V6, with a little per-patient electrode variation."""
    vectors = [_FRONTAL["I"], _FRONTAL["II"]]
    for deg in _PRECORDIAL_DEG + rng.normal(0.0, 5.0, 6):
        rad = np.deg2rad(deg)
        # Chest electrodes sit a little below the heart's centre: a small inferior component.
        vectors.append((np.cos(rad), 0.15, np.sin(rad)))
    vectors = np.asarray(vectors)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _rotation(rng: np.random.Generator, degrees: float) -> np.ndarray:
    """A random rotation of up to ~`degrees` (electrical-axis variation between people)."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(-degrees, degrees))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def _beat_times(rng, seconds: float, heart_rate: float, af: bool) -> np.ndarray:
    rr_mean = 60.0 / heart_rate
    # Sinus rhythm: a few per cent RR jitter; AF: irregularly irregular (~20 % spread).
    spread = 0.2 if af else 0.03
    times, t = [], rng.uniform(0.0, rr_mean)
    while t < seconds + 0.5:
        times.append(t)
        t += rr_mean * max(0.4, 1.0 + spread * rng.normal())
    return np.asarray(times)


def synthetic_ecg(seed: int, seconds: float = 10.0, fs: float = 500.0, *,
                  heart_rate: float | None = None, af: bool | None = None,
                  noise_mv: float = 0.015, wander_mv: float = 0.1, axis_shift_deg: float = 0.0,
                  qrs_width_scale: float = 1.0) -> np.ndarray:
    """A seeded synthetic 12-lead ECG, float32 (12, round(seconds * fs)) in mV, canonical order.

    heart_rate: beats per minute (default: drawn from 50-120). af: AF-like rhythm (default:
    drawn, 15 % of seeds). noise_mv: white-noise std; wander_mv: baseline-wander amplitude.
    axis_shift_deg: the heart's electrical axis turned by this angle in the frontal plane
    (positive = towards the right, i.e. right-axis deviation; negative = left). qrs_width_scale:
    Q, R and S waves this many times wider (> 1.5: a wide, bundle-branch-like QRS). Neither
    draws from the seed's generator: the rest of the record stays the same.
    """
    rng = np.random.default_rng(seed)
    # Both are always drawn, so the rest of the record does not depend on what was overridden.
    drawn_hr, drawn_af = float(rng.uniform(50.0, 120.0)), bool(rng.uniform() < 0.15)
    hr = drawn_hr if heart_rate is None else float(heart_rate)
    is_af = drawn_af if af is None else bool(af)
    n = int(round(seconds * fs))
    t = np.arange(n) / fs
    lead_vectors = _lead_vectors(rng)              # (8, 3)
    rotation = _rotation(rng, 15.0)  # Keeps the frontal QRS axis normal (R dominant in II).
    turn = np.deg2rad(axis_shift_deg)  # about the anterior (z) axis: x (left) towards y (down)
    rotation = np.array([[np.cos(turn), -np.sin(turn), 0.0], [np.sin(turn), np.cos(turn), 0.0],
                         [0.0, 0.0, 1.0]]) @ rotation
    beats = _beat_times(rng, seconds, hr, is_af)
    rr = 60.0 / hr
    dipole = np.zeros((3, n))
    for name, (offset, width, amplitude, direction) in _WAVES.items():
        if name == "P" and is_af:
            continue
        if name == "T":
            offset *= np.sqrt(rr)  # The QT interval shortens with heart rate (Bazett).
        amp = amplitude * rng.uniform(0.7, 1.3)
        if name in ("Q", "R", "S"):
            width *= qrs_width_scale
        direction = rotation @ (np.asarray(direction) / np.linalg.norm(direction))
        centres = beats + offset * rng.uniform(0.9, 1.1)
        # (beats, n) Gaussians summed over beats; beats are few, so the outer product is cheap.
        wave = np.exp(-0.5 * ((t[None, :] - centres[:, None]) / width) ** 2).sum(axis=0)
        dipole += amp * direction[:, None] * wave[None, :]
    if is_af:
        f_wave = rng.uniform(4.0, 8.0)
        dipole += 0.05 * np.sin(2 * np.pi * f_wave * t + rng.uniform(0, 2 * np.pi)) * \
            np.array([[0.3], [0.5], [0.8]])
    measured = lead_vectors @ dipole                # (8, n): I, II, V1..V6.
    # Baseline wander (respiration, 0.1-0.5 Hz) and white noise, independent per electrode pair.
    freqs = rng.uniform(0.1, 0.5, (8, 1))
    phases = rng.uniform(0, 2 * np.pi, (8, 1))
    measured += wander_mv * rng.uniform(0.3, 1.0, (8, 1)) * np.sin(2 * np.pi * freqs * t + phases)
    measured += noise_mv * rng.normal(size=measured.shape)
    signal = np.zeros((leads_lib.NUM_LEADS, n), np.float32)
    present = np.zeros(leads_lib.NUM_LEADS, bool)
    signal[[0, 1]] = measured[:2]
    signal[6:] = measured[2:]
    present[[0, 1]] = present[6:] = True
    signal, _, _ = leads_lib.derive_limb_leads(signal, present)
    return signal


SOURCE_SECONDS = 10.0  # ST-MEM's record length: 9 s crops then have room to move.


def synthetic_records(data_cfg) -> tuple[np.ndarray, str]:
    """(float32 (data.synthetic_records, 12, T), a name for them): record k uses seed
    data.seed * 1_000_000 + k, 10 s at data.target_fs, preprocessed by data.preprocess."""
    n, fs = int(data_cfg["synthetic_records"]), float(data_cfg["target_fs"])
    first = int(data_cfg["seed"]) * 1_000_000
    signals = np.stack([synthetic_ecg(first + k, SOURCE_SECONDS, fs) for k in range(n)])
    if data_cfg["preprocess"] is not None:
        signals = np.stack([preprocess_record(x, fs, data_cfg["preprocess"]) for x in signals])
    return signals, f"synthetic{n}_seed{first}_fs{fs:g}"


def synthetic_labels(seed: int) -> tuple[float, bool]:
    """(heart_rate, af) that `synthetic_ecg(seed)` draws when neither is given."""
    rng = np.random.default_rng(seed)
    return float(rng.uniform(50.0, 120.0)), bool(rng.uniform() < 0.15)


def record_factors(seed: int) -> dict:
    """The axis and QRS-width factors of record `seed` (write_synthetic_wfdb(factors=True)):
    {"axis_shift_deg", "qrs_width_scale", "labels": [names of FACTORS present]}."""
    rng = np.random.default_rng(seed + 2 * 10**6)
    u_axis, u_qrs = rng.uniform(), rng.uniform()
    p_lad, p_rad = FACTORS["lad"][0], FACTORS["rad"][0]
    axis = "lad" if u_axis < p_lad else "rad" if u_axis < p_lad + p_rad else None
    wide = u_qrs < FACTORS["wide_qrs"][0]
    return {"axis_shift_deg": FACTORS[axis][1] if axis else 0.0,
            "qrs_width_scale": FACTORS["wide_qrs"][1] if wide else 1.0,
            "labels": [name for name in (axis, "wide_qrs" if wide else None) if name]}


def write_synthetic_wfdb(folder, n: int, fs: float = 500.0, seconds: float = 10.0, seed: int = 0,
                         fmt: str = "16", factors: bool = False) -> list[str]:
    """Writes `n` synthetic records SYN00000.. (.hea + .dat) with `# Age:`, `# Sex:` and
    `# Dx:` comments (SNOMED-CT: sinus rhythm or AF, plus tachy-/bradycardia by rate; with
    `factors`, also left/right axis deviation and wide QRS drawn by `record_factors`).

    Returns the record paths without extension. Record k uses seed `seed + k`.
    """
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    gain = {"16": 1000.0, "212": 200.0, "24": 1000.0, "32": 1000.0, "80": 50.0}[fmt]
    paths = []
    for k in range(n):
        record_seed = seed + k
        hr, af = synthetic_labels(record_seed)
        drawn = record_factors(record_seed) if factors else {"labels": []}
        signal = synthetic_ecg(record_seed, seconds, fs,
                               axis_shift_deg=drawn.get("axis_shift_deg", 0.0),
                               qrs_width_scale=drawn.get("qrs_width_scale", 1.0))
        dx = [SNOMED["af"] if af else SNOMED["sinus"]] + [SNOMED[f] for f in drawn["labels"]]
        if hr > 100:
            dx.append(SNOMED["tachy"])
        elif hr < 60:
            dx.append(SNOMED["brady"])
        rng = np.random.default_rng(record_seed + 10**6)
        name = f"SYN{k:05d}"
        wfdb.wrsamp(name, fs=fs, units=["mV"] * 12, sig_name=list(leads_lib.LEADS),
                    p_signal=signal.T.astype(np.float64), fmt=[fmt] * 12, adc_gain=[gain] * 12,
                    baseline=[0] * 12, write_dir=str(folder),
                    comments=[f"Age: {int(rng.integers(20, 90))}",
                              f"Sex: {'Male' if rng.uniform() < 0.5 else 'Female'}",
                              f"Dx: {','.join(dx)}"])
        paths.append(str(folder / name))
    return paths


def write_synthetic_code15(folder, n: int, *, parts: int = 2, seed: int = 0) -> None:
    """CODE-15%'s files for `n` synthetic exams (the code15 layout's, for benchmarks and demos):
    exams.csv and exams_part{i}.hdf5 with `tracings` float32 (N, 4096, 12) in mV, 10 s at 400 Hz
    centred in zero padding, `exam_id` (N,), each part closed by a padding entry (exam_id 0).
    Exam k: exam_id 1000 + k, patient 1 + k // 2, seed `seed + k`, AF and SB from its rhythm."""
    import h5py  # optional heavy import (HDF5's C library, ~0.1 s): these files only

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    columns = ["exam_id", "age", "is_male", "nn_predicted_age", "1dAVb", "RBBB", "LBBB", "SB",
               "ST", "AF", "patient_id", "death", "timey", "normal_ecg", "trace_file"]
    rows = []
    for part in range(parts):
        exams = range(part * n // parts, (part + 1) * n // parts)
        tracings = np.zeros((len(exams) + 1, 4096, 12), np.float32)
        for i, k in enumerate(exams):
            tracings[i, 48:4048] = synthetic_ecg(seed + k, 10.0, 400.0).T
            hr, af = synthetic_labels(seed + k)
            rows.append([1000 + k, 60, k % 2 == 0, 60.0, False, False, False, hr < 60, hr > 100,
                         af, 1 + k // 2, "", "", not af, f"exams_part{part}.hdf5"])
        with h5py.File(folder / f"exams_part{part}.hdf5", "w") as f:
            f.create_dataset("tracings", data=tracings)
            f.create_dataset("exam_id", data=np.asarray([1000 + k for k in exams] + [0]))
    with open(folder / "exams.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(rows)
