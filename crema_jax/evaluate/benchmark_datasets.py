"""The benchmark task file's datasets checked against what is there, each error one line naming
the task file, the task and the field: before any model loads, what needs no record read
(`check_datasets`: layouts, layout options, roots); once a dataset is indexed, before any cell,
its cross-domain sources (`check_sources`)."""
from __future__ import annotations

import difflib
import os

import numpy as np

from crema_jax.data.index import registry
from crema_jax.data.index.dataset_index import CINC_SOURCES
from crema_jax.runtime import storage


def dataset_where(suite: dict, name: str, path) -> str:
    """How errors name dataset `name`'s fields: the task file, the first task on it, the entry."""
    users = [t["name"] for t in suite["tasks"] if t["dataset"] == name]
    return (f"task file {path}: " + (f"task {users[0]!r}: " if users else "")
            + f"datasets[{name!r}].")


def check_datasets(suite: dict, path) -> None:
    """Every dataset's layout, layout_options and root (or cache_dir), checked without reading a
    record, before any model loads or cell runs: a layout or option typo, or a missing root, in
    a later task's dataset had failed only once every earlier task's cells had run, and named
    flags the benchmark has not got (--layout). Each error names the task file, the first task
    on the dataset and the field."""
    used = {task["dataset"] for task in suite["tasks"]}
    for name, entry in suite["datasets"].items():
        if name not in used:   # an entry no task reads is never loaded
            continue
        where = dataset_where(suite, name, path)
        layout, options = entry["layout"], entry["layout_options"]
        if layout not in registry.NAMES:
            close = difflib.get_close_matches(layout, registry.NAMES, n=1)
            raise ValueError(f"{where}layout={layout!r}: unknown dataset layout"
                             + (f" (did you mean {close[0]!r}?)" if close else "")
                             + f"; expected one of {sorted(registry.NAMES)}")
        try:
            registry.check_options(layout, options)
        except ValueError as err:
            raise ValueError(f"{where}layout_options: {err}") from None
        field = "cache_dir" if entry["cache_dir"] else "root"
        folder = os.fspath(entry[field])
        if not storage.exists(folder):
            raise ValueError(f"{where}{field}={folder!r}: no such file or folder"
                             + (f" (give --roots={name}=FOLDER where the data lives)"
                                if field == "root" else ""))
        if not storage.is_remote(folder) and not os.access(
                folder, os.R_OK | (os.X_OK if os.path.isdir(folder) else 0)):
            raise ValueError(f"{where}{field}={folder!r}: not readable (permissions)")


def check_sources(suite: dict, name: str, sources, path: str = "") -> None:
    """Every cross-domain task on dataset `name` names sources its records have (`sources`, as
    the layout named them), checked once it is indexed and before any feature is extracted: a
    source no record has (the CinC 2021 prefix "JS", where the layout names that source
    "ningbo") had failed only after every model's features were extracted. `path`: the task
    file, named in the error."""
    have = sorted(set(np.asarray(sources).tolist()))
    shown = ", ".join(have[:20]) + (f", ... ({len(have)} in all)" if len(have) > 20 else "")
    for task in (t for t in suite["tasks"] if t["dataset"] == name):
        for field in ("train_source", "test_source"):
            given = task[field]
            if not given or given in have:
                continue
            hint = ""
            if given in CINC_SOURCES:
                known = ", ".join(f"{prefix} {source}" for prefix, source in CINC_SOURCES.items())
                hint = (f"; {given!r} is a CinC 2021 record prefix: the source of its records "
                        f"is {CINC_SOURCES[given]!r} (prefix and source: {known})")
            raise ValueError(f"task file {path}: task {task['name']!r}: {field}={given!r} is "
                             f"not a source of dataset {name!r} (its sources: {shown}){hint}")
