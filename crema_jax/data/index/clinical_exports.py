"""The "clinical_exports" layout: a folder tree of hospital ECG exports in any mix of DICOM
waveform, HL7 aECG, GE MUSE XML, Philips XML, SCP-ECG and EDF+ files, each detected by content
(reading/clinical.py).

    crema-jax prepare --layout=clinical_exports --root=/data/exports --out=/data/exports-cache \
        [--layout_option=labels=labels.csv | --layout_option=label_map=default] \
        [--layout_option=index_workers=N]

Every file below `root` (sorted; hidden files and .csv/.json/.txt/.md/WFDB files excepted) is one
record; record id = its path relative to root. A file that is not an export, or does not parse,
stays in the index as a BadRecord, so reading it counts a skip with its reason.

meta: format, exam_id, statements (the machine's interpretation), age, sex and patient_id, the
salted hash of the file's patient identifier (clinical.patient_hash). Splits: hash_split of that
hash (a patient never straddles splits), or of the record id when the file names no patient.
An index holding patient ids hashed with the public default salt (CREMA_JAX_PATIENT_SALT unset)
warns once (clinical.warn_if_public_salt): this index is what puts them into a cache.

Indexing parses every file for its meta (clinical.read_meta: Philips XLI and SCP-ECG rhythm data
left coded, its damage found when the record is read): in `index_workers` spawned processes (0: one
per core, at most 8, from INDEX_POOL_MIN_FILES files on; 1: in this process), the same index
either way; the workers end when the indexing process is killed (processes.worker_pool).

Labels (optional): `labels=CSV` with a `file` column (the path relative to root) and `labels`
(codes separated by ';', '|' or ','; optional `split`); or `label_map=default|JSON`: the
MIMIC-IV-ECG keyword map over the statements (mimic_iv_ecg.ReportLabeller, the same rules).
"""
from __future__ import annotations

import csv
import os
import pathlib

from absl import logging

from crema_jax.data.index.dataset_index import (DatasetIndex, RecordInfo, csv_columns,
                                                parse_labels, parse_split, vocabulary)
from crema_jax.data.index.mimic_iv_ecg import ReportLabeller, label_map_rules
from crema_jax.data.reading import clinical, safe_files
from crema_jax.data.reading.ecg import RecordError
from crema_jax.data.reading.read import BadRecord
from crema_jax.runtime import processes


INDEX_POOL_MIN_FILES = 2048  # fewer files: in-process (spawning the pool costs a few seconds)


def _read_meta(path: str) -> tuple[dict, BadRecord | None]:
    """(meta, None), or ({}, the BadRecord of a file that does not parse)."""
    try:
        return clinical.read_meta(path), None
    except RecordError as e:
        return {}, BadRecord(e.reason, e.message)
    except OSError as e:
        return {}, BadRecord("unreadable", f"{path}: {e.strerror or e}")


def _quiet_worker() -> None:
    logging.set_verbosity(logging.ERROR)  # the parent warns, once, of what the index holds
    processes.interrupt_raises()


def _metas(paths: list[str], workers: int) -> list[tuple[dict, BadRecord | None]]:
    """_read_meta of each path, in order; over `workers` spawned processes when > 1."""
    if workers <= 1:
        return [_read_meta(p) for p in paths]
    with processes.worker_pool(workers, _quiet_worker) as pool:  # ends if this process is killed
        return list(pool.map(_read_meta, paths, chunksize=max(1, len(paths) // (8 * workers))))


def _label_rows(spec: str, root: pathlib.Path) -> tuple[dict[str, dict], pathlib.Path | None]:
    """(relative path -> its CSV row (labels, split), the CSV). Two rows for one file that
    disagree are an error naming both lines (the last one silently won)."""
    if not spec:
        return {}, None
    path = pathlib.Path(spec) if os.path.isabs(spec) else root / spec
    rows, lines = {}, {}
    with safe_files.open_text(path, newline="") as f:
        reader = csv.DictReader(f, strict=True)
        reader.fieldnames = csv_columns(reader.fieldnames, path, ("file", "labels", "split"),
                                        ("file", "labels"))
        for line, row in enumerate(reader, start=2):
            rel = pathlib.PurePath((row["file"] or "").strip()).as_posix()
            given = (parse_labels(row.get("labels") or ""), (row.get("split") or "").strip())
            if rel in rows and given != (parse_labels(rows[rel].get("labels") or ""),
                                         (rows[rel].get("split") or "").strip()):
                raise ValueError(f"{path}:{line}: {rel} has labels {given[0]} split "
                                 f"{given[1]!r}, but line {lines[rel]} gives it others; expected "
                                 "one row per file")
            rows.setdefault(rel, row)
            lines.setdefault(rel, line)
    return rows, path


def clinical_exports(root, *, labels: str = "", label_map: str = "",
                     val_fraction: float = 0.1, test_fraction: float = 0.1,
                     source: str = "", label_names: list[str] | None = None,
                     index_workers: int = 0) -> DatasetIndex:
    """Every export below `root`; see the module docstring."""
    root = pathlib.Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"clinical_exports layout: {root} is not a directory")
    if labels and label_map:
        raise ValueError("clinical_exports: give labels=CSV or label_map=..., not both")
    rows, labels_csv = _label_rows(labels, root)
    rules = label_map_rules(label_map, "clinical_exports")
    labeller = ReportLabeller(rules) if rules else None
    fractions = dict(val_fraction=val_fraction, test_fraction=test_fraction)
    records, paths = [], clinical.export_candidates(root)
    workers = int(index_workers) or (min(os.cpu_count() or 1, 8)
                                     if len(paths) >= INDEX_POOL_MIN_FILES else 1)
    metas = _metas(paths, workers)
    if any(meta.get("patient_id") for meta, _ in metas):
        clinical.warn_if_public_salt()
    for path, (meta, bad) in zip(paths, metas):
        rel = pathlib.Path(path).relative_to(root).as_posix()
        reader = bad or clinical.ClinicalFile()
        row = rows.get(rel, {})
        found = (parse_labels(row.get("labels", "")) if labels
                 else labeller(meta.get("statements", ())) if labeller else ())
        key = meta.get("patient_id") or rel
        split = parse_split(row.get("split", ""), key, where=f"{labels}: {rel}", **fractions)
        folder = os.path.dirname(rel)
        records.append(RecordInfo(record_id=rel, path=path, labels=found, split=split,
                                  source=source or folder or meta.get("format", "unknown"),
                                  meta=meta, reader=reader))
    if not records:
        raise FileNotFoundError(f"clinical_exports layout: no files below {root}")
    unmatched = sorted(set(rows) - {r.record_id for r in records})
    if unmatched:
        logging.warning("%s: %d row(s) name no file below %s (e.g. %s): their labels are not "
                        "used", labels_csv, len(unmatched), root, ", ".join(unmatched[:3]))
    return DatasetIndex(records, vocabulary(records, label_names), "clinical_exports", str(root))

