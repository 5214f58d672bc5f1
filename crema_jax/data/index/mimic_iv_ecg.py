"""The "mimic_iv_ecg" layout: MIMIC-IV-ECG (Gow et al., PhysioNet 2023, ~800,000 10 s 12-lead
ECGs at 500 Hz of ~160,000 patients, https://physionet.org/content/mimic-iv-ecg/1.0/).

    ROOT/record_list.csv           subject_id, study_id, file_name, ecg_time, path (a record path
                                   relative to ROOT: files/p1000/p10000032/s40689238/40689238)
    ROOT/files/.../<study>.hea|.dat  the WFDB records (read by wfdb_records.read_record; their lead
                                   order I, II, III, aVR, aVF, aVL, V1-V6 is mapped by name)
    ROOT/machine_measurements.csv  optional: subject_id, study_id, ..., report_0 .. report_17
                                   (the machine's statements, one per column), measurements

    crema-jax prepare --layout=mimic_iv_ecg --root=/data/mimic-iv-ecg/1.0 --out=/data/mimic-cache \
        [--layout_option=label_map=default]

Record id = study_id; splits = hash_split(subject_id) (a patient never straddles splits);
meta: patient_id (= subject_id), ecg_time and `report`, the non-empty report lines in column
order. A `path` that leaves ROOT is refused. A study_id listed again is a duplicate_study_id
skip (its report and labels would be the first's; the first row is used).

Labels are optional (`label_map`): "" (default) none; "default" the map below; or a JSON file
{"LABEL": ["keyword", ...]} or {"LABEL": {"include": [...], "exclude": [...]}}. A record has a
label when one of its report lines contains one of the label's keywords as whole words
(case-insensitive, runs of spaces as one) and none of its `exclude` phrases, and the line holds
no negation (NEGATIONS: "no longer", "not present", ...). Keyword matching of machine statements
is an approximation of a diagnosis: check it on your reports before you rely on it.
"""
from __future__ import annotations

import csv
import json
import os
import pathlib
import re

from crema_jax.data.index.dataset_index import DatasetIndex, RecordInfo, hash_split
from crema_jax.data.reading import safe_files
from crema_jax.data.reading.demographics import patient_id_of
from crema_jax.data.reading.read import BadRecord
from crema_jax.runtime import files

REPORT_COLUMNS = tuple(f"report_{k}" for k in range(18))
# label -> (include, exclude). Names follow CODE-15%'s six where they overlap (code15.py).
REPORT_KEYWORDS = {
    "1dAVb": (("1st degree a-v block", "first degree a-v block", "1st degree av block",
               "first degree av block"), ()),
    "RBBB": (("right bundle branch block", "rbbb"),
             ("incomplete right bundle branch block", "incomplete rbbb")),
    "LBBB": (("left bundle branch block", "lbbb"),
             ("incomplete left bundle branch block", "incomplete lbbb")),
    "SB": (("sinus bradycardia",), ()),
    "AF": (("atrial fibrillation",), ()),
    "ST": (("sinus tachycardia",), ()),
    "AFL": (("atrial flutter",), ()),
    "LVH": (("left ventricular hypertrophy",), ()),
    "PACED": (("paced rhythm", "pacemaker rhythm", "ventricular pacing", "atrial pacing"), ()),
    "NORMAL": (("normal ecg",), ()),   # whole words: "abnormal ecg" does not match
}
NEGATIONS = ("no longer", "not present", "now absent", "resolved", "no evidence of")


def _words(text: str) -> str:
    return " ".join(text.casefold().split())


class ReportLabeller:
    """Report lines -> labels, by the rule of the module docstring."""

    def __init__(self, keywords: dict):
        self.rules = {label: ([self._pattern(k) for k in include],
                              [_words(e) for e in exclude])
                      for label, (include, exclude) in keywords.items()}

    @staticmethod
    def _pattern(keyword: str):
        return re.compile(r"(?<!\w)" + re.escape(_words(keyword)) + r"(?!\w)")

    def __call__(self, lines) -> tuple[str, ...]:
        labels = set()
        for line in map(_words, lines):
            if any(n in line for n in NEGATIONS):
                continue
            for label, (include, exclude) in self.rules.items():
                if any(p.search(line) for p in include) and not any(e in line for e in exclude):
                    labels.add(label)
        return tuple(sorted(labels))


def label_map_rules(spec: str, layout: str = "mimic_iv_ecg") -> dict | None:
    """label_map "" / "default" / a JSON file -> {label: (include, exclude)} or None."""
    if not spec:
        return None
    if spec == "default":
        return REPORT_KEYWORDS
    path = pathlib.Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"{layout} label_map={spec!r}: expected '', 'default' or a "
                                "JSON file {label: [keywords]}")
    try:
        with safe_files.open_text(path) as f:
            raw = json.load(f)
    except (json.JSONDecodeError, RecursionError) as err:
        raise ValueError(f"{path}: not a JSON object {{label: [keywords]}} "
                         f"({type(err).__name__}: {err})") from None
    out = {}
    for label, rule in (raw.items() if isinstance(raw, dict) else ()):
        if isinstance(rule, list):
            include, exclude = rule, []
        elif isinstance(rule, dict):
            include, exclude = rule.get("include", []), rule.get("exclude", [])
        else:
            include = exclude = None
        if not (isinstance(include, list) and isinstance(exclude, list)
                and all(isinstance(k, str) for k in include + exclude)):
            raise ValueError(f"{path}: label {label!r}: expected a list of keywords or "
                             "{\"include\": [...], \"exclude\": [...]}")
        out[str(label)] = (tuple(include), tuple(exclude))
    if not out:
        raise ValueError(f"{path}: expected a JSON object {{label: [keywords], ...}}")
    return out


def _reports(path: pathlib.Path) -> dict[str, tuple[str, ...]]:
    """study_id -> its non-empty report lines, from machine_measurements.csv."""
    if not path.is_file():
        return {}
    with safe_files.open_text(path, newline="") as f:
        reader = csv.DictReader(f, strict=True)
        if "study_id" not in (reader.fieldnames or []):
            raise ValueError(f"{path}: expected a study_id column and report_0..report_17, got "
                             f"{reader.fieldnames}")
        columns = [c for c in REPORT_COLUMNS if c in reader.fieldnames]
        # A short row's missing cells are None (csv.DictReader).
        return {(row["study_id"] or "").strip(): tuple((row[c] or "").strip() for c in columns
                                                       if (row[c] or "").strip())
                for row in reader}


def mimic_iv_ecg(root, *, label_map: str = "", drop_unlabelled: bool = False,
                 present_only: bool = False, val_fraction: float = 0.1,
                 test_fraction: float = 0.1, source: str = "mimic_iv_ecg"):
    """MIMIC-IV-ECG below `root` (see the module docstring).

    drop_unlabelled: leave out records without a label (with a label_map).
    present_only: leave out records whose header file is absent (a partial download); by default
      they stay in the index and are skipped as missing_header when read, and counted.
    """
    root = pathlib.Path(root)
    record_list = root / "record_list.csv"
    if not record_list.is_file():
        raise FileNotFoundError(f"mimic_iv_ecg layout: expected {record_list} (MIMIC-IV-ECG's "
                                "record list)")
    keywords = label_map_rules(label_map)
    labeller = ReportLabeller(keywords) if keywords else None
    reports = _reports(root / "machine_measurements.csv")
    inside_root = files.inside(root)
    records, seen = [], {}
    with safe_files.open_text(record_list, newline="") as f:
        reader = csv.DictReader(f, strict=True)
        missing = [c for c in ("subject_id", "study_id", "path") if c not in
                   (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{record_list}: missing columns {missing}; expected subject_id, "
                             f"study_id, path (and file_name, ecg_time), got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            subject, study, relative = ((row[k] or "").strip()
                                        for k in ("subject_id", "study_id", "path"))
            if not relative or not inside_root(relative):
                raise ValueError(f"{record_list}:{line}: path {relative!r} is not a record path "
                                 f"inside {root}")
            path = str(root / relative)
            if present_only and not os.path.isfile(path + ".hea"):
                continue
            lines = reports.get(study, ())
            labels = labeller(lines) if labeller else ()
            if drop_unlabelled and labeller and not labels:
                continue
            meta = {"patient_id": patient_id_of(subject), "study_id": study,
                    "ecg_time": row.get("ecg_time"), "report": lines}
            reader = None
            if study in seen:  # its report (and labels) would be another record's
                reader = BadRecord("duplicate_study_id", f"{record_list}:{line}: study_id "
                                   f"{study} appears again (line {seen[study]} is used)")
            seen.setdefault(study, line)
            records.append(RecordInfo(
                study, path, labels, hash_split(patient_id_of(subject) or study,
                                                val_fraction=val_fraction,
                                                test_fraction=test_fraction),
                source, meta, reader))
    names = sorted(keywords) if keywords else []
    return DatasetIndex(records, names, "mimic_iv_ecg", str(root))
