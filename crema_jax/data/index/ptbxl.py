"""The "ptbxl" layout: PTB-XL (https://physionet.org/content/ptb-xl/) from its own folder layout,
ptbxl_database.csv + scp_statements.csv, label sets as in the PTB-XL benchmark (Strodthoff et al.
2021), splits from strat_fold (1-8 train, 9 val, 10 test).
"""
from __future__ import annotations

import ast
import csv
import os
import pathlib

from crema_jax.data.index.dataset_index import DatasetIndex, RecordInfo, number, vocabulary
from crema_jax.data.reading import safe_files
from crema_jax.data.reading.demographics import patient_id_of
from crema_jax.runtime import files

PTBXL_LABEL_SETS = ("superclass", "subclass", "diagnostic", "form", "rhythm", "all")


def _read_scp_statements(path: pathlib.Path) -> dict[str, dict]:
    with safe_files.open_text(path, newline="") as f:
        reader = csv.reader(f, strict=True)
        header = next(reader, None)
        if not header:
            raise ValueError(f"{path}: empty; expected PTB-XL's scp_statements.csv (a header "
                             "row, then one row per statement code)")
        rows = {}
        for row in reader:
            if row:
                # The first column (unnamed in PTB-XL's file) is the statement code.
                rows[row[0].strip()] = dict(zip(header[1:], (v.strip() for v in row[1:])))
    return rows


def _is_one(value: str) -> bool:
    try:
        return float(value) == 1.0
    except ValueError:
        return False


def _ptbxl_labels(scp_codes: dict, statements: dict, label_set: str) -> tuple[str, ...]:
    """The PTB-XL benchmark's aggregation: every listed statement counts, whatever its
    likelihood (0-100); super/subclass use diagnostic statements only."""
    labels = set()
    for code in scp_codes:
        info = statements.get(code)
        if label_set == "all":
            labels.add(code)
        elif info is None:
            continue
        elif label_set in ("superclass", "subclass", "diagnostic"):
            if not _is_one(info.get("diagnostic", "")):
                continue
            value = {"superclass": info.get("diagnostic_class", ""),
                     "subclass": info.get("diagnostic_subclass", ""),
                     "diagnostic": code}[label_set]
            if value and value.lower() != "nan":
                labels.add(value)
        elif _is_one(info.get(label_set, "")):  # "form" / "rhythm".
            labels.add(code)
    return tuple(sorted(labels))


def _row_problem(scp_codes, fold: float, filename: str, inside_root) -> str | None:
    """What is wrong with a ptbxl_database.csv row's fields (None: nothing); `inside_root` tests
    that the record's path lies inside the folder (files.inside)."""
    if not isinstance(scp_codes, dict) or not all(isinstance(k, str) for k in scp_codes):
        return f"scp_codes is a {type(scp_codes).__name__}, not a dict of statement codes"
    if fold not in range(1, 11):   # NaN and inf too
        return f"strat_fold {fold:g}"
    if not filename.strip() or not inside_root(filename):
        return f"{filename!r}"
    return None


def ptbxl(root, *, label_set: str = "superclass", sampling_rate: int = 500,
          drop_unlabelled: bool = True, source: str = "ptbxl") -> DatasetIndex:
    """PTB-XL (https://physionet.org/content/ptb-xl/) from its own folder layout.

    label_set: superclass (diagnostic_class) | subclass (diagnostic_subclass) | diagnostic (the
      diagnostic statements themselves) | form | rhythm | all (every statement).
    sampling_rate: 500 reads records500/ (filename_hr), 100 reads records100/ (filename_lr).
    drop_unlabelled: leave out records with no label in the set (as the benchmark does).
    source: "ptbxl", or "site" for one source per recording site ("ptbxl_site<k>").
    """
    root = pathlib.Path(root)
    if label_set not in PTBXL_LABEL_SETS:
        raise ValueError(f"ptbxl label_set must be one of {PTBXL_LABEL_SETS}, got {label_set!r}")
    if sampling_rate not in (100, 500):
        raise ValueError(f"ptbxl sampling_rate must be 100 or 500, got {sampling_rate}")
    if source not in ("ptbxl", "site"):
        raise ValueError(f"ptbxl source must be 'ptbxl' or 'site', got {source!r}")
    database, scp = root / "ptbxl_database.csv", root / "scp_statements.csv"
    for path in (database, scp):
        if not path.is_file():
            raise FileNotFoundError(f"ptbxl layout: expected {path} (PTB-XL's folder layout)")
    statements = _read_scp_statements(scp)
    column = "filename_hr" if sampling_rate == 500 else "filename_lr"
    records, inside_root = [], files.inside(root)
    with safe_files.open_text(database, newline="") as f:
        for line, row in enumerate(csv.DictReader(f, strict=True), start=2):
            try:  # literal_eval: Python literals only, never code
                scp_codes = ast.literal_eval(row["scp_codes"] or "")
                fold = float(row["strat_fold"] or "")
                filename = row[column] or ""
                problem = _row_problem(scp_codes, fold, filename, inside_root)
            except (KeyError, ValueError, TypeError, SyntaxError, MemoryError,
                    RecursionError) as err:
                problem = repr(err)
            if problem:
                raise ValueError(f"{database}:{line}: expected scp_codes (a dict literal of "
                                 f"statement codes), strat_fold (1-10) and {column} (a path "
                                 f"inside the folder): {problem}")
            fold = int(fold)
            labels = _ptbxl_labels(scp_codes, statements, label_set)
            if drop_unlabelled and not labels:
                continue
            meta = {"ecg_id": row.get("ecg_id"), "patient_id": patient_id_of(row.get("patient_id")),
                    "strat_fold": fold, "scp_codes": scp_codes,
                    "age": number(row.get("age")),
                    # PTB-XL codes sex as 0 = male, 1 = female.
                    "sex": {"0": "Male", "1": "Female"}.get(str(row.get("sex", "")).split(".")[0])}
            site = str(row.get("site", "")).split(".")[0]
            records.append(RecordInfo(
                record_id=os.path.basename(filename), path=str(root / filename), labels=labels,
                split="train" if fold <= 8 else ("val" if fold == 9 else "test"),
                source=f"ptbxl_site{site}" if source == "site" and site else "ptbxl", meta=meta))
    return DatasetIndex(records, vocabulary(records, None), "ptbxl", str(root))
