"""Builds broken and unusual WFDB records on the fly (a helper module, not a test file).

    from tests.data.broken_records import make_broken_records, EXPECTED_REASONS
    paths = make_broken_records(tmp_path)   # name -> record path without extension

Every record is written fresh with `wfdb.wrsamp` (or copied from the package sample data and
then damaged), so the tests depend on no downloaded files. `EXPECTED_REASONS[name]` is the
RecordError reason that `read_record(path)` with default arguments raises, or None when the
record is read after documented repairs.
"""
from __future__ import annotations

import pathlib
import shutil

import numpy as np
import wfdb

from crema_jax.data import synthetic
from crema_jax.data.index import dataset_index

FRANK_NAMES = ["vx", "ii", "i", "iii", "avr", "avl", "avf", "v6", "v5", "v4", "v3", "v2", "v1",
               "vy", "vz"]
NAN_LEAD = 8        # V3: entirely NaN in "nan_lead".
NAN_SAMPLES = (6, slice(1000, 1010))  # V1 samples 1000..1009 NaN in "nan_samples".
ZERO_LEAD = 7       # V2: all zero in "zero_lead".

EXPECTED_REASONS = {
    "truncated_mat": "truncated_signal",
    "truncated_dat": "truncated_signal",
    "empty_dat": "truncated_signal",
    "corrupt_header": "header_syntax",
    "corrupt_record_line": "header_syntax",
    "missing_signal_file": "missing_signal_file",
    "missing_header": "missing_header",
    "bad_fs": "bad_sampling_rate",
    "no_fs": "bad_sampling_rate",
    "all_nan": "no_signal",
    "short_1s": "too_short",
    "nan_lead": None,
    "nan_samples": None,
    "short_3s": None,
    "frank_15lead_1khz": None,
    "limb_i_ii_only": None,
    "zero_lead": None,
    "microvolt_212": None,
}


def _write(folder: pathlib.Path, name: str, signal: np.ndarray, fs: float, names, *,
           fmt: str = "16", gain: float = 1000.0, units: str = "mV") -> str:
    """signal (leads, T) in `units` -> <folder>/<name>.hea/.dat."""
    n = signal.shape[0]
    wfdb.wrsamp(name, fs=fs, units=[units] * n, sig_name=list(names),
                p_signal=np.asarray(signal, np.float64).T, fmt=[fmt] * n, adc_gain=[gain] * n,
                baseline=[0] * n, write_dir=str(folder), comments=["Dx: 426783006"])
    return str(folder / name)


def _copy_sample(folder: pathlib.Path, record: str, name: str) -> pathlib.Path:
    src = dataset_index.sample_data_dir() / record
    hea = (src.with_suffix(".hea")).read_text().replace(record, name)
    (folder / f"{name}.hea").write_text(hea)
    shutil.copyfile(src.with_suffix(".mat"), folder / f"{name}.mat")
    return folder / name


def make_broken_records(tmp_dir) -> dict[str, str]:
    """Writes every record of EXPECTED_REASONS below `tmp_dir`; returns name -> record path."""
    folder = pathlib.Path(tmp_dir)
    folder.mkdir(parents=True, exist_ok=True)
    ecg = synthetic.synthetic_ecg(7, seconds=10.0, fs=500.0)
    names12 = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    paths = {}

    base = _copy_sample(folder, "E07500", "truncated_mat")
    data = base.with_suffix(".mat").read_bytes()
    base.with_suffix(".mat").write_bytes(data[: len(data) // 2 + 1])
    paths["truncated_mat"] = str(base)

    for name, keep in (("truncated_dat", 0.6), ("empty_dat", 0.0)):
        paths[name] = _write(folder, name, ecg, 500.0, names12)
        dat = folder / f"{name}.dat"
        dat.write_bytes(dat.read_bytes()[: int(dat.stat().st_size * keep)])

    base = _copy_sample(folder, "E07501", "corrupt_header")
    hea = base.with_suffix(".hea")
    hea.write_text(hea.read_text().replace("1000.0(0)/mV", "1OOO.0(0)/mV", 1))  # letter O.
    paths["corrupt_header"] = str(base)

    base = _copy_sample(folder, "E07502", "corrupt_record_line")
    hea = base.with_suffix(".hea")
    lines = hea.read_text().splitlines()
    lines[0] = "corrupt_record_line twelve 500 5000"
    hea.write_text("\n".join(lines) + "\n")
    paths["corrupt_record_line"] = str(base)

    base = _copy_sample(folder, "E07503", "missing_signal_file")
    base.with_suffix(".mat").unlink()
    paths["missing_signal_file"] = str(base)
    paths["missing_header"] = str(folder / "missing_header")
    (folder / "missing_header.dat").write_bytes(b"\0" * 240)

    paths["bad_fs"] = _write(folder, "bad_fs", ecg[:, :1000], 20.0, names12)
    paths["no_fs"] = _write(folder, "no_fs", ecg, 500.0, names12)
    hea = folder / "no_fs.hea"
    lines = hea.read_text().splitlines()
    lines[0] = "no_fs 12"  # Record line with neither sampling frequency nor length.
    hea.write_text("\n".join(lines) + "\n")

    paths["all_nan"] = _write(folder, "all_nan", np.full_like(ecg, np.nan), 500.0, names12)
    paths["short_1s"] = _write(folder, "short_1s", ecg[:, :500], 500.0, names12)
    paths["short_3s"] = _write(folder, "short_3s", ecg[:, :1500], 500.0, names12)

    nan_lead = ecg.copy()
    nan_lead[NAN_LEAD] = np.nan
    paths["nan_lead"] = _write(folder, "nan_lead", nan_lead, 500.0, names12)
    nan_samples = ecg.copy()
    nan_samples[NAN_SAMPLES] = np.nan
    paths["nan_samples"] = _write(folder, "nan_samples", nan_samples, 500.0, names12)
    zero = ecg.copy()
    zero[ZERO_LEAD] = 0.0
    paths["zero_lead"] = _write(folder, "zero_lead", zero, 500.0, names12)

    ecg_1k = synthetic.synthetic_ecg(8, seconds=10.0, fs=1000.0)
    frank = np.random.default_rng(0).normal(0.0, 0.3, (3, ecg_1k.shape[1]))
    canonical = {n.lower(): ecg_1k[i] for i, n in enumerate(names12)}
    rows = [frank[0]] + [canonical[n] for n in FRANK_NAMES[1:13]] + [frank[1], frank[2]]
    paths["frank_15lead_1khz"] = _write(folder, "frank_15lead_1khz", np.stack(rows), 1000.0,
                                        FRANK_NAMES)

    paths["limb_i_ii_only"] = _write(folder, "limb_i_ii_only", ecg[:2], 500.0, ["I", "II"])
    # Microvolts in the 12-bit packed format 212 (as in many older PhysioNet databases).
    paths["microvolt_212"] = _write(folder, "microvolt_212", ecg * 1000.0, 500.0, names12,
                                    fmt="212", gain=0.2, units="uV")
    return paths


def write_damaged(folder, name: str = "DAMAGED") -> str:
    """A 10 s, 500 Hz 12-lead record (5000 samples a lead) damaged three ways at once, each
    kept by reading: lead III entirely invalid (NaN), the 10 samples 1000..1009 of lead II NaN,
    lead V2 constant at 0.3 mV. Returns the record's path."""
    ecg = synthetic.synthetic_ecg(7, seconds=10.0, fs=500.0)
    ecg[2] = np.nan
    ecg[1, 1000:1010] = np.nan
    ecg[7] = 0.3
    names12 = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    return _write(pathlib.Path(folder), name, ecg, 500.0, names12)
