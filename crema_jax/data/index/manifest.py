"""The "manifest" layout: records listed in a CSV with a `path` column (relative to the CSV's
folder, absolute, or a URL such as gs://bucket/x/E1) and optional `labels`, `split`, `source`,
`patient_id`, `record_id` columns.
"""
from __future__ import annotations

import csv
import pathlib
import posixpath

from crema_jax.data.index.dataset_index import (DatasetIndex, RecordInfo, csv_columns,
                                                infer_source, parse_labels, parse_split,
                                                vocabulary)
from crema_jax.data.reading import safe_files, wfdb_header
from crema_jax.data.reading.demographics import patient_id_of
from crema_jax.runtime import storage

COLUMNS = ("path", "labels", "split", "source", "patient_id", "record_id")


def manifest(root, *, csv_name: str = "manifest.csv", val_fraction: float = 0.1,
             test_fraction: float = 0.1, label_names: list[str] | None = None) -> DatasetIndex:
    """Records listed in a CSV (`root` is the CSV itself or a folder holding `csv_name`).

    Columns: path (required; relative to the CSV's folder, absolute or a URL; with or without the
    .hea extension), labels (codes separated by ';', '|' or ',' -- a ',' list must be quoted),
    split (train/val/test; also training/valid/validation/dev/testing), source, patient_id,
    record_id (default: the file name without extension). A missing split is hashed from
    patient_id, else record_id; a patient_id of NaN, NA, None, ... is none (patient_id_of).
    """
    csv_path = pathlib.Path(root)
    if csv_path.is_dir():
        csv_path = csv_path / csv_name
    if not csv_path.is_file():
        raise FileNotFoundError(f"manifest layout: expected a CSV file at {csv_path}")
    records = []
    with safe_files.open_text(csv_path, newline="") as f:
        reader = csv.DictReader(f, strict=True)
        reader.fieldnames = csv_columns(reader.fieldnames, csv_path, COLUMNS, ("path",))
        for line, row in enumerate(reader, start=2):
            get = lambda key: (row.get(key) or "").strip()  # noqa: E731
            path, name, folder = _record_path(get("path"), csv_path, line)
            record_id = get("record_id") or name
            patient = patient_id_of(get("patient_id"))
            split = parse_split(get("split"), patient or record_id,
                                where=f"{csv_path}:{line}", val_fraction=val_fraction,
                                test_fraction=test_fraction)
            labels = parse_labels(get("labels"))
            meta = {"patient_id": patient}
            records.append(RecordInfo(record_id, path, labels, split,
                                      get("source") or infer_source(record_id, folder), meta))
    return DatasetIndex(records, vocabulary(records, label_names), "manifest", str(csv_path))


def _record_path(text: str, csv_path: pathlib.Path, line: int) -> tuple[str, str, str]:
    """(record path without .hea/.mat/.dat, its name, its folder's name) of a `path` cell. A URL
    (gs://...) stays a URL, read through runtime/storage.py (as wfdb_folder's are): pathlib had
    made gs://bucket/x/E1 the local path <cwd>/gs:/bucket/x/E1."""
    if storage.is_remote(text):
        base = text[:-4] if text.lower().endswith(wfdb_header.FILE_EXTENSIONS) else text
        if not posixpath.basename(base):
            raise ValueError(f"{csv_path}:{line}: path {text!r} names a folder, expected a record")
        return base, posixpath.basename(base), posixpath.basename(posixpath.dirname(base))
    path = pathlib.Path(text)
    if not str(path) or str(path) == ".":
        raise ValueError(f"{csv_path}:{line}: empty path")
    path = path if path.is_absolute() else csv_path.parent / path
    if path.suffix.lower() in wfdb_header.FILE_EXTENSIONS:
        path = path.with_suffix("")
    return str(path), path.name, path.parent.name
