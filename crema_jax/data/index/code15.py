"""The "code15" layout: CODE-15% (Ribeiro et al., Nat Commun 2020/2021; 345,779 exams of 233,770
patients, https://zenodo.org/records/4916206) in the files its authors distribute.

    ROOT/exams.csv           one row per exam: exam_id, age, is_male, nn_predicted_age, 1dAVb,
                             RBBB, LBBB, SB, ST, AF, patient_id, death, timey, normal_ecg,
                             trace_file
    ROOT/exams_part{i}.hdf5  datasets `tracings` float32 (N, 4096, 12) and `exam_id` (N,), in
                             the same order; the last entry of a part may be padding (exam_id 0)

    crema-jax prepare --layout=code15 --root=/data/code15 --out=/data/code15-cache

Facts the reader relies on (the Zenodo page and the authors' README,
https://github.com/antonior92/automatic-ecg-diagnosis):
- 400 Hz. Exams last 10 s (4000 samples) or 7 s (2800), zero-padded, centred, to 4096 samples:
  the reader drops the padding (leading and trailing samples that are 0 in all 12 leads).
- Channels in the order DI, DII, DIII, AVR, AVL, AVF, V1-V6 (reading/leads.py maps DI/DII/DIII
  to I-III).
- Unit. The README: "All signal are represented as 32 bits floating point numbers at the scale
  1e-4V: so if the signal is in V it should be multiplied by 1000 before feeding it to the neural
  network model." Its two halves disagree (a 1e-4 V scale would mean x 10,000); the instruction,
  V x 1000, makes the stored values millivolts. The authors say so when asked ("just make sure
  your ECG is scaled as millivolts", antonior92/automatic-ecg-diagnosis#3; the 1e-4 V wording was
  questioned in #10), and the PhysioNet/CinC Challenge 2025 converter of CODE-15% to WFDB writes
  the values with units mV (gain 1000). So the values are taken as mV, unchanged (`units`
  overrides it; users have reported amplitudes about twice other databases', without a
  documented correction: antonior92/ecg-age-prediction#1, #5).

Labels: the six abnormalities of exams.csv's boolean columns, in the README's order
(CODE15_LABELS). Splits: hash_split of patient_id, so all exams of a patient share a split.

Indexing reads each part's `exam_id` and the shape of `tracings`, never a signal;
reading/arrays.py reads one exam's row when it is needed. Skipped and counted (a BadRecord, read
as a RecordError like a broken WFDB file): an exam exams.csv does not list (not_in_exams_csv);
an exam id seen twice (duplicate_exam_id, the first is kept), in the parts or in exams.csv (a
later row listing it again is a record of its own, skipped and naming both lines: its labels,
age and patient had silently replaced the first row's); every exam of a part that does not
open (truncated_signal, unreadable: the exams exams.csv's trace_file places there) or whose
datasets have other shapes (bad_shape). Exams of parts absent from ROOT (a partial download) are
left out and their number logged. Input files are opened read-only.
"""
from __future__ import annotations

import csv
import os
import pathlib
import re

from absl import logging

from crema_jax.data.index.dataset_index import DatasetIndex, RecordInfo, hash_split, number
from crema_jax.data.reading import safe_files
from crema_jax.data.reading.demographics import patient_id_of
from crema_jax.data.reading.arrays import (ArrayFormat, hdf5_elsewhere, hdf5_storage_problem,
                                          locator)
from crema_jax.data.reading.read import BadRecord
from crema_jax.runtime import files

CODE15_LABELS = ("1dAVb", "RBBB", "LBBB", "SB", "AF", "ST")
CODE15_LEADS = ("DI", "DII", "DIII", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6")
CODE15_FS = 400.0
CODE15_UNITS = "mV"   # see the module docstring for why
_PART = re.compile(r"^exams_part(\d+)\.hdf5$")
_REQUIRED = ("exam_id", "patient_id") + CODE15_LABELS


def _flag(value: str) -> bool | None:
    value = (value or "").strip().casefold()
    if value in ("true", "1", "1.0", "yes"):
        return True
    if value in ("false", "0", "0.0", "no"):
        return False
    return None


def _integer_text(value: str) -> str:
    """"10596", "10596.0" -> "10596" (pandas writes integer columns with gaps as floats)."""
    value = (value or "").strip()
    return value[:-2] if value.endswith(".0") and value[:-2].isdigit() else value


def _read_exams(path: pathlib.Path) -> tuple[dict[int, dict], dict[int, list[tuple[str, dict]]]]:
    """(exam_id -> its first row, exam_id -> [(message, row)] of each later row listing it
    again: a duplicate_exam_id skip naming both lines, as mimic_iv_ecg's duplicate study ids)."""
    if not path.is_file():
        raise FileNotFoundError(f"code15 layout: expected {path} (CODE-15%'s exam table)")
    exams, lines, repeats = {}, {}, {}
    with safe_files.open_text(path, newline="") as f:
        reader = csv.DictReader(f, strict=True)
        missing = [c for c in _REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing columns {missing}; expected CODE-15%'s exams.csv "
                             f"({', '.join(_REQUIRED)}, ...), got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            exam = _integer_text(row["exam_id"])
            if not exam.isdigit():
                raise ValueError(f"{path}:{line}: exam_id {row['exam_id']!r}, expected an integer")
            exam = int(exam)
            if exam in exams:  # its labels, age and patient would silently replace the first's
                repeats.setdefault(exam, []).append((
                    f"{path}:{line}: exam_id {exam} appears again (line {lines[exam]} is used)",
                    row))
                continue
            exams[exam], lines[exam] = row, line
    return exams, repeats


def _parts(root: pathlib.Path) -> list[pathlib.Path]:
    parts = [(int(m.group(1)), root / name) for name in os.listdir(root)
             if (m := _PART.match(name))]
    return [path for _, path in sorted(parts)]


def _probe(part: pathlib.Path):
    """(exam ids of the part, None) or (None, BadRecord for all its exams)."""
    import h5py  # optional heavy import (HDF5's C library, ~0.1 s): this layout only

    kind = files.special_kind(part, follow_links=True)
    if kind is not None:   # never opened: a FIFO would block, a device never end
        return None, BadRecord("not_a_regular_file", f"{part} is {kind}, not a regular file")
    try:
        with h5py.File(part, "r") as f:
            if any(isinstance(f.get(name, getlink=True), h5py.ExternalLink)
                   for name in ("exam_id", "tracings")):
                return None, BadRecord("unreadable", f"{part}: 'tracings' or 'exam_id' links "
                                       "to another file; only data inside the file is read")
            if not all(isinstance(f.get(name), h5py.Dataset) for name in ("exam_id",
                                                                          "tracings")):
                return None, BadRecord("unreadable", f"{part}: expected HDF5 datasets "
                                       f"'tracings' and 'exam_id', found {sorted(f)}")
            # Shapes and sizes from the metadata before any data is read.
            elsewhere = hdf5_elsewhere(f["exam_id"]) or hdf5_elsewhere(f["tracings"])
            if elsewhere:
                return None, BadRecord("unreadable", f"{part}: {elsewhere}")
            problem = hdf5_storage_problem(f["exam_id"])
            if problem or f["exam_id"].ndim != 1:
                return None, BadRecord("truncated_signal" if problem else "bad_shape",
                                       f"{part}: {problem or 'exam_id is not one-dimensional'}")
            if f["exam_id"].dtype.kind not in "iu":  # 1.4 had become exam 1, with its labels
                return None, BadRecord("bad_dtype", f"{part}: exam_id holds "
                                       f"{f['exam_id'].dtype}, expected integers")
            exam_ids = [int(e) for e in f["exam_id"][:]]
            shape = tuple(f["tracings"].shape)
    except (OSError, RuntimeError, KeyError, ValueError) as err:  # links that loop or dangle
        reason = "truncated_signal" if "truncated" in str(err) else "unreadable"
        return None, BadRecord(reason, f"{part}: HDF5 file does not open: {err}")
    if len(shape) != 3 or shape[0] != len(exam_ids) or shape[2] != len(CODE15_LEADS):
        return exam_ids, BadRecord("bad_shape", f"{part}: tracings of shape {shape}, "
                                   f"expected ({len(exam_ids)}, samples, 12): one "
                                   "exam per exam_id entry, 12 leads")
    return exam_ids, None


def _record(exam_id: int, path: str, row: dict | None, reader, fractions):
    if row is None:
        return RecordInfo(str(exam_id), path, (),
                          hash_split(str(exam_id), **fractions), "code15",
                          {"exam_id": exam_id}, reader)
    patient = patient_id_of(_integer_text(row["patient_id"]))
    labels = tuple(name for name in CODE15_LABELS if _flag(row.get(name)))
    is_male = _flag(row.get("is_male"))
    meta = {"exam_id": exam_id, "patient_id": patient,
            "age": number(row.get("age")),
            "sex": None if is_male is None else ("Male" if is_male else "Female"),
            "nn_predicted_age": number(row.get("nn_predicted_age")),
            "normal_ecg": _flag(row.get("normal_ecg")), "death": _flag(row.get("death")),
            "timey": number(row.get("timey")), "trace_file": row.get("trace_file")}
    split = hash_split(patient or str(exam_id), **fractions)
    return RecordInfo(str(exam_id), path, labels, split, "code15", meta, reader)


def code15(root, *, val_fraction: float = 0.1, test_fraction: float = 0.1,
           units: str = CODE15_UNITS, csv_name: str = "exams.csv"):
    """CODE-15% below `root` (see the module docstring). units: the unit of `tracings` (mV)."""
    root = pathlib.Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"code15 layout: {root} is not a folder (expected exams.csv and "
                                "exams_part*.hdf5)")
    csv_path = root / csv_name
    exams, repeats = _read_exams(csv_path)
    parts = _parts(root)
    if not parts:
        raise FileNotFoundError(f"code15 layout: no exams_part*.hdf5 in {root}")
    fmt = ArrayFormat(fs=CODE15_FS, leads=CODE15_LEADS, units=units, time_axis=0,
                      key="tracings", trim_zero_padding=True)
    fractions = dict(val_fraction=val_fraction, test_fraction=test_fraction)
    records, seen = [], set()
    for part in parts:
        exam_ids, bad = _probe(part)
        if exam_ids is None:   # the part does not open: the exams the table places in it
            exam_ids = [e for e, row in exams.items() if row.get("trace_file") == part.name]
            rows = [None] * len(exam_ids)
        else:
            rows = list(range(len(exam_ids)))
        for exam_id, row in zip(exam_ids, rows):
            if exam_id == 0:
                continue       # a part's padding entry, not an exam
            path = locator(part, row)
            reader = bad or fmt
            if exam_id in seen:
                reader = BadRecord("duplicate_exam_id", f"{path}: exam_id {exam_id} "
                                   "appears again (its first entry is used)")
            elif exam_id not in exams and bad is None:
                reader = BadRecord("not_in_exams_csv", f"{path}: exam_id {exam_id} is "
                                   f"not listed in {csv_path}; expected a row for "
                                   "every exam of a part")
            first = exam_id not in seen
            seen.add(exam_id)
            records.append(_record(exam_id, path, exams.get(exam_id), reader,
                                   fractions))
            if first:  # the rows of exams.csv listing it again
                records.extend(_record(exam_id, path, again, BadRecord("duplicate_exam_id",
                                                                       message), fractions)
                               for message, again in repeats.get(exam_id, ()))
    absent = len(set(exams) - seen)
    if absent:
        logging.info("code15: %d exams of %s are in no exams_part*.hdf5 below %s", absent,
                     csv_path, root)
    return DatasetIndex(records, list(CODE15_LABELS), "code15", str(root))
