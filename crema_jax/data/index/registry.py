"""Dataset layouts: how a folder of ECG records becomes an index of (record, labels, split, source).

`LAYOUTS[name](root, **opts) -> DatasetIndex` (dataset_index.py); one file per layout, each
importing only the shared index helpers. Indexing never loads a signal.

- "wfdb_folder" (wfdb_folder.py): every `*.hea` below `root`, labels from `# Dx:` comments.
- "ptbxl" (ptbxl.py): PTB-XL's ptbxl_database.csv + scp_statements.csv.
- "manifest" (manifest.py): a CSV with a `path` column and optional labels, split, source,
  patient_id, record_id.
- "code15" (code15.py): CODE-15%'s exams.csv + exams_part*.hdf5.
- "mimic_iv_ecg" (mimic_iv_ecg.py): MIMIC-IV-ECG's record_list.csv, WFDB files and reports.
- "numpy" (numpy_arrays.py): one .npy/.npz array of records, or a folder of per-record .npy.
- "clinical_exports" (clinical_exports.py): hospital exports (DICOM, HL7 aECG, GE MUSE, EDF+).
"""
from __future__ import annotations

import importlib
import inspect
import math
from collections.abc import Mapping

from crema_jax.data.index.dataset_index import DatasetIndex

# name -> (its module in this package, the function that builds its index).
_BUILDERS = {"wfdb_folder": ("wfdb_folder", "wfdb_folder"), "ptbxl": ("ptbxl", "ptbxl"),
             "manifest": ("manifest", "manifest"), "code15": ("code15", "code15"),
             "mimic_iv_ecg": ("mimic_iv_ecg", "mimic_iv_ecg"),
             "numpy": ("numpy_arrays", "numpy_arrays"),
             "clinical_exports": ("clinical_exports", "clinical_exports")}


class _Layouts(Mapping):
    """name -> index builder, its module imported when first looked up: the commands' --help
    lists the layouts (NAMES) without loading every reader (SciPy, wfdb, pandas: 1.7 s)."""

    def __getitem__(self, name: str):
        module, function = _BUILDERS[name]
        return getattr(importlib.import_module(f"{__package__}.{module}"), function)

    def __iter__(self):
        return iter(_BUILDERS)

    def __len__(self) -> int:
        return len(_BUILDERS)


LAYOUTS = _Layouts()
NAMES = tuple(_BUILDERS)


# Layout options that change how an index is built, never what it holds: a cache's settings
# leave them out, so a rerun with another value resumes the same cache.
EXECUTION_OPTIONS = ("index_workers",)


def build_index(layout: str, root, **opts) -> DatasetIndex:
    """LAYOUTS[layout](root, **opts) with a clear error for an unknown layout name."""
    if layout not in LAYOUTS:
        raise ValueError(f"--layout={layout!r}: unknown dataset layout; expected one of "
                         f"{sorted(LAYOUTS)}")
    return LAYOUTS[layout](root, **check_options(layout, opts))


def check_options(layout: str, opts: Mapping) -> dict:
    """`opts` as the keywords of `layout` (a known one) take them, each of its annotated type; an
    unknown option or a value of the wrong kind is one line naming it. Reads no record."""
    parameters = inspect.signature(LAYOUTS[layout]).parameters
    accepted = [name for name, p in parameters.items() if p.kind == p.KEYWORD_ONLY]
    unknown = sorted(set(opts) - set(accepted))
    if unknown:
        raise ValueError(f"layout {layout}: unknown option {unknown[0]!r}; it takes "
                         f"{', '.join(accepted)}")
    return {name: _typed(layout, name, parameters[name].annotation, value)
            for name, value in opts.items()}


def _typed(layout: str, name: str, annotation, value):
    """An option's value as its keyword's annotated type. Options come as JSON-read text
    (`--layout_option=KEY=VALUE`, a config, a task file): val_fraction=abc or label_names=5 is
    one line naming the option, never a TypeError inside the layout, and label_names=AF,LBBB
    a list of two names, not of the letters of a string."""
    def refuse(expected: str):
        return ValueError(f"layout {layout}: option {name}={value!r}, expected {expected}")
    if annotation == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
                value):
            raise refuse("a finite number")
        return float(value)
    if annotation == "int":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(
                value) or value != int(value):
            raise refuse("an integer")
        return int(value)
    if annotation == "bool":
        if not isinstance(value, bool):
            raise refuse("true or false")
        return value
    if annotation in ("str", "str | None"):
        if value is None and annotation == "str | None":
            return value
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise refuse("a text")
        return str(value)
    if annotation == "list[str] | None":
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if value is not None and (not isinstance(value, (list, tuple)) or not all(
                isinstance(v, str) and v for v in value)):
            raise refuse('a list of names, e.g. AF,LBBB or ["AF","LBBB"]')
        return None if value is None else list(value)
    return value
