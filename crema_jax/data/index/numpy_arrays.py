"""The "numpy" layout: ECGs already in NumPy files, read as they are (no conversion step).

    ROOT = data.npy | data.npz   one array of records, (records, leads, samples) (or
                                 (records, samples, leads) with order=samples_leads)
    ROOT = a folder              one .npy file per record, (leads, samples), found recursively
    + an optional CSV            one line per record: labels, split, patient_id, source,
                                 record_id, and `row` (an array of records) or `file` (a folder)

    crema-jax prepare --layout=numpy --root=/data/ecgs.npy --out=/data/ecgs-cache \
        --layout_option=fs=500 --layout_option=leads=I,II,V1,V2,V3,V4,V5,V6

Options the files cannot state: fs (Hz, required), leads (the lead name of each channel, in
order, comma-separated; default I, II, III, aVR, aVL, aVF, V1-V6), units (mV by default; uV,
V, ...), order (leads_samples | samples_leads), key (the .npz member; default its only one).

The CSV (`csv`, default ROOT's name with .csv beside an array, or labels.csv in a folder; a
relative path is taken from ROOT's folder) follows the manifest layout: labels separated by
';', '|' or ','; split train/val/test (else hash_split of patient_id, else record_id). For an
array, `row` selects its row (without a `row` column, line k describes row k and the CSV must
have one line per row); for a folder, `file` names the .npy (relative to the folder, the
extension optional). Without a CSV every row / file is a record without labels.

Arrays are opened with allow_pickle=False (reading/arrays.py): a file of Python objects is
refused. A .npy array is memory-mapped and read one record at a time; a .npz member is read
whole once per process. An array of records of the wrong shape is an error here (nothing in it
is usable); a per-record file of the wrong shape, a missing file or NaN-only row is skipped when
read, and counted.
"""
from __future__ import annotations

import csv
import pathlib

from crema_jax.data.index.dataset_index import (DatasetIndex, RecordInfo, csv_columns,
                                                parse_labels, parse_split, vocabulary)
from crema_jax.data.reading import arrays
from crema_jax.data.reading import leads as leads_lib
from crema_jax.data.reading import safe_files
from crema_jax.data.reading.demographics import patient_id_of
from crema_jax.data.reading.ecg import UNIT_TO_MV, RecordError
from crema_jax.runtime import files

ORDERS = {"leads_samples": 1, "samples_leads": 0}   # -> arrays.ArrayFormat.time_axis


def _lead_names(leads) -> tuple[str, ...]:
    names = tuple(s.strip() for s in leads.split(",")) if isinstance(leads, str) else tuple(
        str(s).strip() for s in leads)
    names = tuple(n for n in names if n) or leads_lib.LEADS
    unknown = [n for n in names if leads_lib.lead_index(n) is None]
    rows = [leads_lib.lead_index(n) for n in names]
    if unknown or len(set(rows)) != len(rows):
        raise ValueError(f"numpy layout: leads={','.join(names)}: expected distinct names of the "
                         f"12 standard leads ({', '.join(leads_lib.LEADS)}; aliases as in "
                         f"leads.py){'; unknown: ' + ', '.join(unknown) if unknown else ''}")
    return names


def _format(fs, leads, units, order, key) -> arrays.ArrayFormat:
    if not fs or float(fs) <= 0:
        raise ValueError("numpy layout: state the arrays' sampling rate, e.g. "
                         "--layout_option=fs=500")
    if str(units).strip().casefold() not in UNIT_TO_MV:
        raise ValueError(f"numpy layout: units={units!r}, expected a voltage unit (mV, uV, V)")
    if order not in ORDERS:
        raise ValueError(f"numpy layout: order={order!r}, expected one of {sorted(ORDERS)}")
    return arrays.ArrayFormat(fs=float(fs), leads=_lead_names(leads), units=str(units),
                              time_axis=ORDERS[order], key=str(key))


COLUMNS = ("row", "file", "labels", "split", "source", "patient_id", "record_id")


def _csv_rows(path: pathlib.Path | None) -> list[tuple[int, dict]] | None:
    if path is None:
        return None
    with safe_files.open_text(path, newline="") as f:
        reader = csv.DictReader(f, strict=True)
        reader.fieldnames = csv_columns(reader.fieldnames, path, COLUMNS, ())
        rows = [(line, {k: (v or "").strip() for k, v in row.items() if k})
                for line, row in enumerate(reader, start=2)]
    return rows


def _array_records(file: pathlib.Path, fmt, table, csv_path):
    """(row, record_id, cells, where) of each record of an array of records."""
    try:
        shape = arrays.array_shape(file, fmt.key)
    except RecordError as err:
        raise ValueError(f"numpy layout: {err.message}") from None
    leads_axis = 2 - fmt.time_axis
    if len(shape) != 3 or shape[leads_axis] != len(fmt.leads):
        axes = ["samples", "samples"]
        axes[1 - fmt.time_axis] = f"{len(fmt.leads)} leads"
        raise ValueError(f"{file}: array of shape {shape}, expected (records, {', '.join(axes)})"
                         " (options leads= and order= say what the array holds)")
    n = shape[0]
    if table is None:
        return [(r, f"{file.stem}_{r}", {}, f"{file}#{r}") for r in range(n)]
    with_rows = bool(table) and "row" in table[0][1]
    if not with_rows and len(table) != n:
        raise ValueError(f"{csv_path}: {len(table)} lines for an array of {n} records; expected "
                         "one line per row, or a `row` column")
    out = []
    for k, (line, cells) in enumerate(table):
        row = cells.get("row", "") if with_rows else str(k)
        if not row.isdigit() or int(row) >= n:
            raise ValueError(f"{csv_path}:{line}: row {row!r}, expected 0..{n - 1}")
        out.append((int(row), cells.get("record_id") or f"{file.stem}_{row}", cells,
                    f"{csv_path}:{line}"))
    return out


def _folder_records(folder: pathlib.Path, table, csv_path):
    """(file, record_id, cells, where) of each per-record .npy file."""
    if table is None:
        found = sorted(pathlib.Path(f) for f in safe_files.walk(folder, (".npy",)))
        return [(f, f.stem, {}, str(f)) for f in found]
    out, inside_folder = [], files.inside(folder)
    for line, cells in table:
        name = cells.get("file") or cells.get("record_id")
        if not name:
            raise ValueError(f"{csv_path}:{line}: expected a `file` (or `record_id`) naming a "
                             f".npy file below {folder}")
        relative = name if name.endswith(".npy") else name + ".npy"
        if not inside_folder(relative):
            raise ValueError(f"{csv_path}:{line}: file {name!r} is not a path inside {folder}")
        file = folder / relative
        out.append((file, cells.get("record_id") or file.stem, cells, f"{csv_path}:{line}"))
    return out


def numpy_arrays(root, *, fs: float = 0.0, leads="", units: str = "mV",
                 order: str = "leads_samples", key: str = "", csv: str = "",
                 val_fraction: float = 0.1, test_fraction: float = 0.1,
                 label_names: list[str] | None = None, source: str = "numpy"):
    """ECGs in NumPy files (see the module docstring)."""
    root = pathlib.Path(root)
    fmt = _format(fs, leads, units, order, key)
    if root.is_dir():
        default_csv = root / "labels.csv"
    elif root.suffix.lower() in (".npy", ".npz") and root.is_file():
        default_csv = root.with_suffix(".csv")
    else:
        raise FileNotFoundError(f"numpy layout: {root} is neither a .npy/.npz file nor a folder "
                                "of .npy files")
    if csv:
        csv_path = pathlib.Path(csv)
        csv_path = csv_path if csv_path.is_absolute() else (
            root if root.is_dir() else root.parent) / csv_path
        if not csv_path.is_file():
            raise FileNotFoundError(f"numpy layout: csv={csv}: no such file ({csv_path})")
    else:
        csv_path = default_csv if default_csv.is_file() else None
    table = _csv_rows(csv_path)
    if root.is_dir():
        entries = [(arrays.locator(f), rid, cells, where)
                   for f, rid, cells, where in _folder_records(root, table, csv_path)]
    else:
        entries = [(arrays.locator(root, row), rid, cells, where)
                   for row, rid, cells, where in _array_records(root, fmt, table, csv_path)]
    records_ = []
    for path, record_id, cells, where in entries:
        patient = patient_id_of(cells.get("patient_id"))
        split = parse_split(cells.get("split", ""), patient or record_id, where=where,
                            val_fraction=val_fraction, test_fraction=test_fraction)
        records_.append(RecordInfo(
            record_id, path, parse_labels(cells.get("labels", "")), split,
            cells.get("source") or source, {"patient_id": patient}, fmt))
    if not records_:
        raise FileNotFoundError(f"numpy layout: no records in {root}")
    return DatasetIndex(records_, vocabulary(records_, label_names), "numpy",
                        str(root))
