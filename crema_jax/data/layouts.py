"""Dataset layouts: how a folder of ECG records becomes an index of (record, labels, split, source).

`LAYOUTS[name](root, **opts) -> DatasetIndex`. Indexing never loads a signal: WFDB headers are
read as text, so a million records index in minutes, not hours.

- "wfdb_folder": every `*.hea` below `root` (recursive, sorted). Labels are the SNOMED-CT codes of
  the `# Dx:` comment; age/sex from `# Age:` / `# Sex:`. Source from the PhysioNet/CinC 2021
  record-id prefix (`CINC_SOURCES`), else the record's parent folder name.
- "ptbxl": PTB-XL's ptbxl_database.csv + scp_statements.csv, label sets as in the PTB-XL
  benchmark (Strodthoff et al. 2021), splits from strat_fold (1-8 train, 9 val, 10 test).
- "manifest": a CSV with a `path` column (relative to the CSV's folder, or absolute) and optional
  `labels`, `split`, `source`, `patient_id`, `record_id` columns.
- "code15" (code15.py): CODE-15%'s exams.csv + exams_part*.hdf5.
- "mimic_iv_ecg" (mimic_iv_ecg.py): MIMIC-IV-ECG's record_list.csv, WFDB files and reports.
- "numpy" (numpy_layout.py): one .npy/.npz array of records, or a folder of per-record .npy.

A RecordInfo's `reader` says how its record is read (readers.py): None for WFDB files, an
ArrayFormat for arrays (sampling rate, leads, unit), a BadRecord for a record the index knows
is unusable (read as a skip, counted with every other bad record).

Splits not given by the layout come from `hash_split`: a SHA-1 of the patient id (the record id
when there is none), so a patient never straddles splits and the assignment is identical in
every process and Python version (no dependence on `hash()` randomisation).
"""
from __future__ import annotations

import ast
import csv
import dataclasses
import hashlib
import os
import pathlib
import re

from crema_jax.data import code15, mimic_iv_ecg, numpy_layout, wfdb_header

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
    reader: object = None      # None = WFDB; readers.ArrayFormat or readers.BadRecord.


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


def sample_data_dir() -> pathlib.Path:
    """The real CinC 2021 records shipped with the package (see sample_data/README.md)."""
    return pathlib.Path(__file__).resolve().parent / "sample_data"


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


# ---------------------------------------------------------------------------- wfdb_folder
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


def wfdb_folder(root, *, val_fraction: float = 0.1, test_fraction: float = 0.1,
                label_names: list[str] | None = None, source: str | None = None) -> DatasetIndex:
    """Every WFDB record below `root`; see the module docstring.

    label_names: a fixed class vocabulary (default: every code seen, sorted).
    source: force one source for all records (default: CinC prefix, else parent folder name).
    """
    root = pathlib.Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"wfdb_folder layout: {root} is not a directory of WFDB records")
    headers = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        headers.extend(os.path.join(folder, f) for f in sorted(files) if f.endswith(".hea"))
    records = []
    for hea in headers:
        with open(hea, encoding="latin-1") as f:
            meta = _header_fields(f.read())
        base = hea[:-4]
        record_id = os.path.basename(base)
        folder_name = os.path.basename(os.path.dirname(hea)) if os.path.dirname(hea) != str(
            root) else ""
        labels = meta.pop("labels")
        records.append(RecordInfo(
            record_id=record_id, path=base, labels=labels,
            split=hash_split(record_id, val_fraction=val_fraction, test_fraction=test_fraction),
            source=source or infer_source(record_id, folder_name), meta=meta))
    return DatasetIndex(records, vocabulary(records, label_names), "wfdb_folder", str(root))


# ---------------------------------------------------------------------------- ptbxl
PTBXL_LABEL_SETS = ("superclass", "subclass", "diagnostic", "form", "rhythm", "all")


def _read_scp_statements(path: pathlib.Path) -> dict[str, dict]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
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
    records = []
    with open(database, newline="", encoding="utf-8") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            try:
                scp_codes = ast.literal_eval(row["scp_codes"])
                fold = int(float(row["strat_fold"]))
                filename = row[column]
            except (KeyError, ValueError, SyntaxError) as err:
                raise ValueError(f"{database}:{line}: expected scp_codes (a dict literal), "
                                 f"strat_fold (1-10) and {column}: {err!r}") from None
            labels = _ptbxl_labels(scp_codes, statements, label_set)
            if drop_unlabelled and not labels:
                continue
            meta = {"ecg_id": row.get("ecg_id"), "patient_id": row.get("patient_id"),
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


def number(value):
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if number != number else number  # NaN -> None.


# ---------------------------------------------------------------------------- manifest
_LABEL_SEPARATORS = re.compile(r"[;|,]")


def parse_labels(value: str) -> tuple[str, ...]:
    """A CSV labels cell: codes separated by ';', '|' or ',' -> sorted unique codes."""
    return tuple(sorted({s.strip() for s in _LABEL_SEPARATORS.split(value or "") if s.strip()}))


def parse_split(value: str, key: str, *, where: str, val_fraction: float = 0.1,
                test_fraction: float = 0.1) -> str:
    """A CSV split cell (train/val/test and their aliases), or hash_split(key) when empty."""
    split = (value or "").strip().lower()
    if not split:
        return hash_split(key, val_fraction=val_fraction, test_fraction=test_fraction)
    if split not in _SPLIT_ALIASES:
        raise ValueError(f"{where}: split {split!r}, expected one of {sorted(_SPLIT_ALIASES)}")
    return _SPLIT_ALIASES[split]


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
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
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


LAYOUTS = {"wfdb_folder": wfdb_folder, "ptbxl": ptbxl, "manifest": manifest,
           "code15": code15.code15, "mimic_iv_ecg": mimic_iv_ecg.mimic_iv_ecg,
           "numpy": numpy_layout.numpy_arrays}


def build_index(layout: str, root, **opts) -> DatasetIndex:
    """LAYOUTS[layout](root, **opts) with a clear error for an unknown layout name."""
    if layout not in LAYOUTS:
        raise ValueError(f"--layout={layout!r}: unknown dataset layout; expected one of "
                         f"{sorted(LAYOUTS)}")
    return LAYOUTS[layout](root, **opts)


def record_id_of(path: str) -> str:
    """A record's id: its file name without extension."""
    return os.path.basename(str(path))


def expand_records(spec: str) -> list[str]:
    """Records named on a command line, in a stable order, without extension: comma-separated
    paths ('a,b', with or without .hea/.mat/.dat), globs ('dir/*.hea') or folders (every .hea
    below them, sorted). Duplicates are dropped; a pattern matching nothing is an error."""
    import glob

    out = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        if os.path.isdir(item):
            out += sorted(p[:-4] for p in glob.glob(os.path.join(item, "**", "*.hea"),
                                                    recursive=True))
        elif any(ch in item for ch in "*?["):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise FileNotFoundError(f"{item}: the pattern matches no file")
            out += [os.path.splitext(p)[0] for p in matches
                    if p.endswith(".hea") or not os.path.exists(os.path.splitext(p)[0] + ".hea")]
        else:
            out.append(item[:-4] if item.endswith((".hea", ".mat", ".dat")) else item)
    if not out:
        raise FileNotFoundError(f"no records in {spec!r}")
    return list(dict.fromkeys(out))
