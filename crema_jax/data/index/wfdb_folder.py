"""The "wfdb_folder" layout: every WFDB record (`*.hea`) below a folder (recursive, sorted).

Labels are the SNOMED-CT codes of the `# Dx:` comment; age/sex from `# Age:` / `# Sex:`. Source
from the PhysioNet/CinC 2021 record-id prefix (`CINC_SOURCES`), else the record's parent folder
name. Headers are read as text, never a signal, so a million records index in minutes.
"""
from __future__ import annotations

import os
import pathlib

from crema_jax.data.index.dataset_index import (DatasetIndex, RecordInfo, hash_split,
                                                infer_source, vocabulary)
from crema_jax.data.reading import safe_files, wfdb_header
from crema_jax.data.reading.read import BadRecord
from crema_jax.runtime import storage


def _header_fields(text: str) -> dict:
    """Comments and the record line of a header, without validating the signal lines (the reader
    does that when it loads the record and reports a broken one as RecordError)."""
    comments, record_line = [], None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comments.append(stripped[1:].strip())
        elif stripped and record_line is None:
            record_line = stripped.split()
    meta = wfdb_header.parse_comments(comments)
    try:
        meta["num_signals"] = int(record_line[1])
        meta["fs"] = float(record_line[2].split("/")[0])
        meta["num_samples"] = int(record_line[3])
    except (TypeError, IndexError, ValueError):
        pass  # Optional fields, or a broken record line the reader will report.
    return meta


def _read_fields(hea: str):
    """(header fields, None), or (empty fields, a BadRecord) for a header that is not a
    readable regular file of a header's size: skipped and counted when the record is read,
    never opened here if it could block (a FIFO) or never end (a device)."""
    try:
        text = safe_files.read_text(hea, limit=wfdb_header.MAX_HEADER_BYTES)
    except (OSError, ValueError) as err:
        reason = ("not_a_regular_file" if isinstance(err, safe_files.NotRegularFileError)
                  else "missing_header" if isinstance(err, OSError) else "header_syntax")
        return wfdb_header.parse_comments(()), BadRecord(reason, f"cannot read header {hea}: "
                                                         f"{err}")
    return _header_fields(text), None


def wfdb_folder(root, *, val_fraction: float = 0.1, test_fraction: float = 0.1,
                label_names: list[str] | None = None, source: str | None = None) -> DatasetIndex:
    """Every WFDB record below `root`; see the module docstring.

    label_names: a fixed class vocabulary (default: every code seen, sorted).
    source: force one source for all records (default: CinC prefix, else parent folder name).
    """
    # A URL (gs://...) is listed and read through runtime/storage.py; pathlib would mangle it.
    root = os.fspath(root).rstrip("/") if storage.is_remote(root) else pathlib.Path(root)
    if not storage.isdir(root):
        raise FileNotFoundError(f"wfdb_folder layout: {root} is not a directory of WFDB records")
    records = []
    for hea in safe_files.walk(root, (".hea",)):
        base = hea[:-4]
        meta, reader = _read_fields(hea)
        record_id = os.path.basename(base)
        folder_name = os.path.basename(os.path.dirname(hea)) if os.path.dirname(hea) != str(
            root) else ""
        labels = meta.pop("labels")
        records.append(RecordInfo(
            record_id=record_id, path=base, labels=labels,
            split=hash_split(record_id, val_fraction=val_fraction, test_fraction=test_fraction),
            source=source or infer_source(record_id, folder_name), meta=meta, reader=reader))
    return DatasetIndex(records, vocabulary(records, label_names), "wfdb_folder", str(root))
