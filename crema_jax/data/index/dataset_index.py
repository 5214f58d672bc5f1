"""A dataset's index: one RecordInfo (record, labels, split, source) per record, and the helpers
every layout shares (splits, labels, sources). The layouts that build an index are in
registry.py.

A RecordInfo's `reader` says how its record is read (reading/read.py): None for WFDB files, an
ArrayFormat for arrays (sampling rate, leads, unit), a BadRecord for a record the index knows
is unusable (read as a skip, counted with every other bad record).

Splits not given by the layout come from `hash_split`: a SHA-1 of the patient id (the record id
when there is none), so a patient never straddles splits and the assignment is identical in
every process and Python version (no dependence on `hash()` randomisation).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import re
from typing import Sequence

import numpy as np

from crema_jax.data.index import duplicates
from crema_jax.data.reading import safe_files, wfdb_header

SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                  "validation": "val", "dev": "val", "test": "test", "testing": "test"}
# PhysioNet/CinC Challenge 2021 record-id prefixes -> source database. (JS covers both
# Chapman-Shaoxing and Ningbo, which share one numbering; "ningbo" names the pair.)
CINC_SOURCES = {"A": "cpsc2018", "Q": "cpsc2018_extra", "I": "incart", "S": "ptb",
                "HR": "ptbxl", "E": "georgia", "JS": "ningbo"}
_PREFIX_RE = re.compile(r"^([A-Za-z]+)\d")


@dataclasses.dataclass(frozen=True)
class RecordInfo:
    record_id: str
    path: str                  # WFDB record path without extension, or an array locator.
    labels: tuple[str, ...]
    split: str                 # "train" | "val" | "test"
    source: str                # institution / dataset / site.
    meta: dict = dataclasses.field(default_factory=dict, compare=False)
    reader: object = None      # None = WFDB; arrays.ArrayFormat or read.BadRecord.


@dataclasses.dataclass
class DatasetIndex:
    records: list[RecordInfo]
    label_names: list[str]     # the class vocabulary, in the order of multi-hot label vectors.
    layout: str = ""
    root: str = ""

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self):
        return iter(self.records)

    def __getitem__(self, i) -> RecordInfo:
        return self.records[i]

    def split(self, name: str) -> list[RecordInfo]:
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        return [r for r in self.records if r.split == name]


def multi_hot(labels: Sequence[Sequence[str]], label_names: Sequence[str]) -> np.ndarray:
    """float32 (num_records, num_classes); labels outside the vocabulary are ignored."""
    column = {name: i for i, name in enumerate(label_names)}
    out = np.zeros((len(labels), len(label_names)), dtype=np.float32)
    for row, names in enumerate(labels):
        for name in names:
            if name in column:
                out[row, column[name]] = 1.0
    return out


def sample_data_dir() -> pathlib.Path:
    """The real CinC 2021 records shipped with the package (see sample_data/README.md)."""
    return pathlib.Path(__file__).resolve().parent.parent / "sample_data"


def hash_split(key: str, *, val_fraction: float = 0.1, test_fraction: float = 0.1) -> str:
    """Deterministic split of `key`: u = first 8 bytes of SHA-1(utf-8 key), big-endian, / 2**64;
    train if u < 1 - val - test, val if u < 1 - test, else test."""
    if not (0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction <= 1):
        raise ValueError(f"split fractions val={val_fraction}, test={test_fraction} must be "
                         "non-negative and sum to at most 1")
    u = int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") / 2.0**64
    if u < 1.0 - val_fraction - test_fraction:
        return "train"
    return "val" if u < 1.0 - test_fraction else "test"


def infer_source(record_id: str, folder_name: str = "") -> str:
    """CinC 2021 prefix source ("E07500" -> "georgia"), else the folder name, else "unknown"."""
    match = _PREFIX_RE.match(record_id)
    if match and match.group(1).upper() in CINC_SOURCES:
        return CINC_SOURCES[match.group(1).upper()]
    return folder_name or "unknown"


def vocabulary(records, label_names) -> list[str]:
    return list(label_names) if label_names is not None else sorted(
        {label for r in records for label in r.labels})


def number(value):
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if number != number else number  # NaN -> None.


_LABEL_SEPARATORS = re.compile(r"[;|,]")


def parse_labels(value: str) -> tuple[str, ...]:
    """A CSV labels cell: codes separated by ';', '|' or ',' -> sorted unique codes."""
    return tuple(sorted({s.strip() for s in _LABEL_SEPARATORS.split(value or "") if s.strip()}))


def csv_columns(header, csv_path, known: Sequence[str], required: Sequence[str]) -> list[str]:
    """A CSV header's column names, spaces around each dropped ("path, split, labels", as
    spreadsheets and hand-written files have it, had read as columns " split" and " labels":
    ignored, the test rows trained on, exit 0). ValueError naming the CSV for a name that is one
    of `known` but for its case, a known column named twice, or a `required` one missing; other
    columns (a user's own notes) are the caller's to ignore."""
    names = [str(name).strip() for name in header or []]
    for name in names:
        if name not in known and name.lower() in known:
            raise ValueError(f"{csv_path}: column {name!r}: expected {name.lower()!r} (column "
                             "names are lower-case)")
    twice = sorted({name for name in names if names.count(name) > 1 and name in known})
    if twice:
        raise ValueError(f"{csv_path}: column {twice[0]!r} appears twice in the header")
    missing = [name for name in required if name not in names]
    if missing:
        optional = [name for name in known if name not in required]
        raise ValueError(f"{csv_path}: expected the column{'s' * (len(required) > 1)} "
                         f"{', '.join(map(repr, required))} (optional: {', '.join(optional)}), "
                         f"got {header}")
    return names


def parse_split(value: str, key: str, *, where: str, val_fraction: float = 0.1,
                test_fraction: float = 0.1) -> str:
    """A CSV split cell (train/val/test and their aliases), or hash_split(key) when empty."""
    split = (value or "").strip().lower()
    if not split:
        return hash_split(key, val_fraction=val_fraction, test_fraction=test_fraction)
    if split not in _SPLIT_ALIASES:
        raise ValueError(f"{where}: split {split!r}, expected one of {sorted(_SPLIT_ALIASES)}")
    return _SPLIT_ALIASES[split]


def record_id_of(path: str) -> str:
    """A record's id: its file name without extension."""
    return os.path.basename(str(path))


def files_read(records: Sequence[str]) -> list[str]:
    """Every file the records `expand_records` named are read from: a WFDB record's header and
    signal files, an export file itself (so a command's output is never one of them)."""
    out = []
    for record in records:
        out += [record + ".hea"] if os.path.isfile(record + ".hea") else []
        out += duplicates.record_files(record)
    return out


def expand_records(spec: str) -> list[str]:
    """Records named on a command line, in a stable order, without extension: comma-separated
    paths ('a,b', with or without .hea/.mat/.dat), globs ('dir/*.hea', 'exports/*.xml') or
    folders (every WFDB record, signal file without its header and hospital export file below
    them, sorted: _folder_records); a glob's matches are records as _glob_records says (a
    signal file a header beside it names is that header's record, as in a folder; so is one
    named as is: _signal_file_records).
    A file of another kind (a hospital export) keeps its extension, also when a WFDB record of
    its stem is beside it (E07501.dcm and E07501.hea are two records); any other file beside
    a header of its stem (r.atr, r.xws beside r.hea) is the record's side file, no record. A
    spec that names an existing path as a whole is that one path, commas and all. Folders are
    walked once by safe_files.walk, globs expanded by safe_files.glob_paths: neither enters a
    symlinked folder (no link loops); a folder that cannot be listed is itself in the list, so
    that reading it is a skip that names it. Duplicates (unique_records) are dropped; a pattern
    matching nothing is an error, and so is a file beside a WFDB header of its name that the
    header does not name (clinical.is_clinical_path: which one is meant cannot be told), and
    so is a glob whose matches hold no record (side files, signal files without their header,
    label CSVs only): the error says how many files it matched and why none is one."""
    from crema_jax.data.reading import clinical
    out = []
    # A path that exists as written is one item, commas and all ("ECG, 2021/").
    # Items of a comma-separated list lose the spaces around them, a whole path keeps its own.
    items = ([spec] if os.path.exists(spec) or os.path.exists(spec + ".hea")
             else [s.strip() for s in spec.split(",")])
    owners: dict = {}   # _signal_owners' headers read, per folder
    for item in items:
        unreadable: list[str] = []
        if not item:
            continue
        if os.path.isdir(item):  # its WFDB records and hospital export files
            out += _folder_records(item, unreadable)
        elif any(ch in item for ch in "*?["):
            matches = safe_files.glob_paths(item, unreadable=unreadable)
            if not matches and not unreadable:
                raise FileNotFoundError(f"{item}: the pattern matches no file")
            found = _glob_records(matches, owners)
            if not unreadable and not any(map(_may_be_record, found)):
                raise FileNotFoundError(_none_is_a_record(item, matches))
            out += found
        elif item.endswith(wfdb_header.SIGNAL_SUFFIXES):
            out += _signal_file_records(item, owners) or [item[:-4]]
        else:
            out.append(item[:-4] if item.endswith(wfdb_header.FILE_EXTENSIONS) else item)
        out += sorted(unreadable)
    if not out:
        raise FileNotFoundError(f"no records in {spec!r}")
    for path in out:
        clinical.is_clinical_path(path)  # a file and a WFDB record of one name: refused here
    return unique_records(out)


def headerless_signals(found, named: set[str]) -> dict[str, str]:
    """{record path: its first signal file} of the WFDB signal files (wfdb_header's
    SIGNAL_SUFFIXES) in `found` that have no header beside them (NAME.hea) and that no header
    names (`named`): records skipped as missing_header when read, never left out unseen."""
    headers = {path[:-4] for path in found if path.endswith(".hea")}
    orphans = {}
    for path in found:
        base = path[:-4]
        if path.endswith(wfdb_header.SIGNAL_SUFFIXES) and base not in headers and \
                path not in named:
            orphans.setdefault(base, path)
    return orphans


def _folder_records(folder: str, unreadable: list) -> list[str]:
    """The records below `folder`, sorted: each WFDB header's, each signal file's without one
    (headerless_signals; the headers are read for the files they name only when there is such
    a file) and each export file (clinical.exports_among; hidden files are passed over)."""
    from crema_jax.data.reading import clinical, wfdb_records
    found = safe_files.walk(folder, ("",), unreadable=unreadable)
    headers = [path for path in found if path.endswith(".hea")]
    orphans = headerless_signals(found, set())   # none in hidden or system folders: walk
    if orphans:
        named = {name for hea in headers for name in wfdb_records.signal_files_named(hea)}
        orphans = {base: path for base, path in orphans.items() if path not in named}
    return sorted([path[:-4] for path in headers] + list(orphans) + clinical.exports_among(
        path for path in found if clinical.is_export_candidate(path, folder)))


def _signal_owners(folder: str, known: dict) -> dict[str, list[str]]:
    """{signal file path (normalised): the records whose headers in `folder` name it}, read
    once per folder into `known`."""
    from crema_jax.data.reading import wfdb_records
    if folder not in known:
        try:
            names = sorted(n for n in os.listdir(folder or ".") if n.endswith(".hea"))
        except OSError:
            names = []
        known[folder] = {}
        for name in names:
            hea = os.path.join(folder, name)
            for signal in wfdb_records.signal_files_named(hea):
                known[folder].setdefault(os.path.normpath(signal), []).append(hea[:-4])
    return known[folder]


def _signal_file_records(path: str, owners: dict) -> list[str] | None:
    """The records of a WFDB signal file without a header of its stem (a glob's match or a
    path as given): those whose headers beside it name it (shared.mat named by E1.hea; it had
    been a record of its own, skipped as missing_header), else its stem's; None for any other
    path. `owners`: _signal_owners' headers read so far."""
    stem, ext = os.path.splitext(path)
    if ext.lower() not in wfdb_header.SIGNAL_SUFFIXES or os.path.isfile(stem + ".hea"):
        return None
    return _signal_owners(os.path.dirname(path), owners).get(os.path.normpath(path)) or [stem]


def _glob_records(matches: list[str], owners: dict) -> list[str]:
    """The records of a glob's matches, in their order: a WFDB file's record; a signal file
    without a header of its stem, _signal_file_records'; a file beside a header of its stem
    (r.atr beside r.hea) its record's signal file when the header names it, an export file
    when its bytes say so (E07501.dcm), else a side file left out; any other file as is."""
    from crema_jax.data.reading import clinical, wfdb_records
    out = []
    for path in matches:
        stem = os.path.splitext(path)[0]
        signal_records = _signal_file_records(path, owners)
        if signal_records is not None:
            out += signal_records
        elif wfdb_header.record_name(path) != path or not os.path.isfile(stem + ".hea"):
            out.append(wfdb_header.record_name(path))
        elif wfdb_records.names_file(stem + ".hea", path):
            out.append(stem)
        elif clinical.exports_among([path]):
            out.append(path)
    return out


def _may_be_record(path: str) -> bool:
    """Whether a listed path can be read as an ECG: a WFDB record with its header, or a file
    that may be an export (clinical.is_clinical_path); anything else is a certain skip."""
    from crema_jax.data.reading import clinical
    return os.path.isfile(path + ".hea") or (os.path.isfile(path) and
                                             clinical.is_clinical_path(path))


def _none_is_a_record(pattern: str, matches: list[str]) -> str:
    """The error of a glob whose matches hold no record: how many files it matched, and why
    each kind is none ("3 files matched, none is a record: WFDB needs the .hea header ...")."""
    kinds: dict[str, list[str]] = {}
    for path in matches:
        stem, ext = os.path.splitext(path)
        why = ("side files of a WFDB record (beside its .hea, which does not name them)"
               if os.path.isfile(stem + ".hea") else
               "WFDB needs the .hea header beside a signal file"
               if ext.lower() in wfdb_header.SIGNAL_SUFFIXES else
               "no ECG files (neither a WFDB record with its .hea nor a hospital export)")
        kinds.setdefault(why, []).append(os.path.basename(path))
    said = "; ".join(f"{why}: {', '.join(names[:3])}"
                     + (f" and {len(names) - 3} more" if len(names) > 3 else "")
                     for why, names in kinds.items())
    count = f"{len(matches)} file{'s' if len(matches) != 1 else ''}"
    return (f"{pattern}: {count} matched, none is a record: {said}; name the records' .hea "
            "files, their folder or the export files")


def unique_records(paths) -> list[str]:
    """`paths` in order, each record once: two spellings of one file (rec, ./rec, a link to
    it) are one record, named as first given (they had been read twice, both rows named ".")."""
    seen, out = set(), []
    for path in paths:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            out.append(path)
    return out
