"""The "manifest" layout: records listed in a CSV with a `path` column (relative to the CSV's
folder, or absolute) and optional `labels`, `split`, `source`, `patient_id`, `record_id` columns.
"""
from __future__ import annotations

import csv
import pathlib

from crema_jax.data.index.dataset_index import (DatasetIndex, RecordInfo, infer_source,
                                                parse_labels, parse_split, vocabulary)
from crema_jax.data.reading import safe_files


def manifest(root, *, csv_name: str = "manifest.csv", val_fraction: float = 0.1,
             test_fraction: float = 0.1, label_names: list[str] | None = None) -> DatasetIndex:
    """Records listed in a CSV (`root` is the CSV itself or a folder holding `csv_name`).

    Columns: path (required; relative to the CSV's folder or absolute; with or without the
    .hea extension), labels (codes separated by ';', '|' or ',' -- a ',' list must be quoted),
    split (train/val/test; also training/valid/validation/dev/testing), source, patient_id,
    record_id (default: the file name without extension). A missing split is hashed from
    patient_id, else record_id.
    """
    csv_path = pathlib.Path(root)
    if csv_path.is_dir():
        csv_path = csv_path / csv_name
    if not csv_path.is_file():
        raise FileNotFoundError(f"manifest layout: expected a CSV file at {csv_path}")
    records = []
    with safe_files.open_text(csv_path, newline="") as f:
        reader = csv.DictReader(f, strict=True)
        if "path" not in (reader.fieldnames or []):
            raise ValueError(f"{csv_path}: expected a 'path' column (optional: labels, split, "
                             f"source, patient_id, record_id), got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            get = lambda key: (row.get(key) or "").strip()  # noqa: E731
            path = pathlib.Path(get("path"))
            if not str(path) or str(path) == ".":
                raise ValueError(f"{csv_path}:{line}: empty path")
            path = path if path.is_absolute() else csv_path.parent / path
            if path.suffix.lower() in (".hea", ".mat", ".dat"):
                path = path.with_suffix("")
            record_id = get("record_id") or path.name
            split = parse_split(get("split"), get("patient_id") or record_id,
                                where=f"{csv_path}:{line}", val_fraction=val_fraction,
                                test_fraction=test_fraction)
            labels = parse_labels(get("labels"))
            meta = {"patient_id": get("patient_id") or None}
            records.append(RecordInfo(record_id, str(path), labels, split,
                                      get("source") or infer_source(record_id, path.parent.name),
                                      meta))
    return DatasetIndex(records, vocabulary(records, label_names), "manifest", str(csv_path))
