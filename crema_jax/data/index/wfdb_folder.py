"""The "wfdb_folder" layout: every WFDB record (`*.hea`) below a folder (recursive, sorted).
A signal file (`.dat`, `.mat`) that no header there names and that has no `NAME.hea` beside
it is a record too, after the others, skipped as missing_header when read: counted, not
invisible.

Labels are the SNOMED-CT codes of the `# Dx:` comment; age/sex from `# Age:` / `# Sex:`. Source
from the PhysioNet/CinC 2021 record-id prefix (`CINC_SOURCES`), else the record's parent folder
name. Headers are read as text, never a signal, so a million records index in minutes.
"""
from __future__ import annotations

import os
import pathlib

from crema_jax.data.index.dataset_index import (DatasetIndex, RecordInfo, hash_split,
                                                headerless_signals, infer_source, vocabulary)
from crema_jax.data.reading import safe_files, wfdb_header
from crema_jax.data.reading.read import BadRecord
from crema_jax.runtime import storage


def _header_fields(text: str) -> tuple[dict, list[str]]:
    """(comments and the record line of a header, the signal files it names:
    wfdb_header.signal_file_names), without validating the signal lines (the reader does that
    when it loads the record and reports a broken one as RecordError)."""
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
    return meta, wfdb_header.signal_file_names(text)


def _read_fields(hea: str):
    """(header fields, signal files named, None), or (empty fields, [], a BadRecord) for a
    header that is not a readable regular file of a header's size: skipped and counted when the
    record is read, never opened here if it could block (a FIFO) or never end (a device)."""
    try:
        text = safe_files.read_text(hea, limit=wfdb_header.MAX_HEADER_BYTES)
    except (OSError, ValueError) as err:
        reason = ("not_a_regular_file" if isinstance(err, safe_files.NotRegularFileError)
                  else "missing_header" if isinstance(err, OSError) else "header_syntax")
        return wfdb_header.parse_comments(()), [], BadRecord(reason, f"cannot read header {hea}: "
                                                             f"{err}")
    return (*_header_fields(text), None)


def _record(base: str, root, meta: dict, reader, *, val_fraction, test_fraction,
            source) -> RecordInfo:
    record_id = os.path.basename(base)
    folder = os.path.dirname(base)
    folder_name = os.path.basename(folder) if folder != str(root) else ""
    labels = meta.pop("labels")
    return RecordInfo(
        record_id=record_id, path=base, labels=labels,
        split=hash_split(record_id, val_fraction=val_fraction, test_fraction=test_fraction),
        source=source or infer_source(record_id, folder_name), meta=meta, reader=reader)


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
    fields = dict(val_fraction=val_fraction, test_fraction=test_fraction, source=source)
    found = safe_files.walk(root, wfdb_header.FILE_EXTENSIONS)
    records, named = [], set()
    for hea in (path for path in found if path.endswith(".hea")):
        meta, names, reader = _read_fields(hea)
        named.update(storage.join(os.path.dirname(hea), name) for name in names)
        records.append(_record(hea[:-4], root, meta, reader, **fields))
    # A signal file without its header: counted among the skipped, after every record.
    for base, signal_file in headerless_signals(found, named).items():
        bad = BadRecord("missing_header", f"cannot read header {base}.hea: no such file beside "
                                          f"the signal file {signal_file}")
        records.append(_record(base, root, wfdb_header.parse_comments(()), bad, **fields))
    return DatasetIndex(records, vocabulary(records, label_names), "wfdb_folder", str(root))
