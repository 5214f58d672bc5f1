"""The benchmark task file's datasets: checked against what is there, each error one line naming
the task file, the task and the field: before any model loads, what needs no record read
(`check_datasets`: layouts, layout options, roots); once a dataset is indexed, before any cell,
its cross-domain sources (`check_sources`). `Datasets` loads each on first use, with its fold
plan, patient keys and a digest of what it holds."""
from __future__ import annotations

import difflib
import hashlib
import json
import os

import numpy as np

from crema_jax.data.index import registry
from crema_jax.data.index.dataset_index import CINC_SOURCES
from crema_jax.evaluate import benchmark_tasks, datasets, feature_store, folds, protocols
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


def splits_read(suite: dict, name: str, with_folds: bool) -> tuple[str, ...]:
    """The splits of dataset `name` its tasks read, with K folds or without (`with_folds`),
    those load_dataset checks (empty, a small test split, patients across them) and where it
    suggests folds: a cross-domain pair its train_source's train and val (it tests another
    source's records, of whatever split), with folds or without; an in-domain task all three
    without folds, none with them (the folds replace the splits)."""
    read = set()
    for task in (t for t in suite["tasks"] if t["dataset"] == name):
        if task["train_source"]:
            read |= {"train", "val"}
        elif not with_folds:
            read |= set(protocols.SPLITS)
    return tuple(s for s in protocols.SPLITS if s in read)


def sources_read(suite: dict, name: str) -> list[str] | None:
    """The sources of dataset `name` whose splits its tasks read: every source (None) where an
    in-domain task reads them (no folds), else the pairs' train_sources (a pair trains and
    selects on its train_source's train and val alone): a patient in the train and val splits
    of a pair's test source had stopped a benchmark that never reads them as splits."""
    tasks = [t for t in suite["tasks"] if t["dataset"] == name]
    if not int(suite["datasets"][name]["folds"] or 0) and any(
            not t["train_source"] for t in tasks):
        return None
    return sorted({t["train_source"] for t in tasks if t["train_source"]})


class Datasets:
    """Each dataset of the task file loaded on first use: (Dataset, fold plan, patient keys).
    `tasks_path` names the task file in errors."""

    def __init__(self, suite: dict, tasks_path: str = ""):
        self.suite, self.loaded, self.digests = suite, {}, {}
        self.tasks_path = str(tasks_path)

    def get(self, name: str):
        if name not in self.loaded:
            # Its fields named as the task file's, with the first task on it, in every line:
            # its `classes` define the task, min_positives applied to them (load_dataset); the
            # split checks over the splits and sources its tasks read (splits_read, with and
            # without folds: folds are suggested only where they would leave a split unread).
            settings = {**benchmark_tasks.dataset_settings(self.suite, name), "flag_prefix":
                        dataset_where(self.suite, name, self.tasks_path),
                        "splits_read": {k: splits_read(self.suite, name, k) for k in (False, True)},
                        "sources_read": sources_read(self.suite, name)}
            data = datasets.load_dataset(settings)
            check_sources(self.suite, name, data.sources, self.tasks_path)
            plan, groups = folds.dataset_plan(data, settings)
            for task in (t for t in self.suite["tasks"]
                         if t["dataset"] == name and t["train_source"]):
                _warn_small_cross_domain_test(task, data, groups)
            self.loaded[name] = (data, plan, groups)
        return self.loaded[name]

    def fingerprint(self, name: str) -> str:
        """A digest of what dataset `name` holds (feature_store.record_cache_key: ids, paths, file
        stats; splits, sources, classes, labels, the label type decided): a cell computed
        before its records, their files or labels changed, or before label_type auto decided
        otherwise over the same labels (a softmax head, not one sigmoid per class), is not
        reused."""
        if name in self.digests:
            return self.digests[name]
        data = self.get(name)[0]
        digest = hashlib.sha256(json.dumps(
            [[feature_store.record_cache_key(i) for i in data.infos], data.splits.tolist(),
             data.sources.tolist(), list(data.classes), data.label_type]).encode())
        digest.update(np.ascontiguousarray(data.labels, np.uint8).tobytes())
        self.digests[name] = digest.hexdigest()[:16]
        return self.digests[name]

    def records_like(self, settings: dict) -> list:
        """Every record of the task file's datasets over the same records as `settings`
        (feature_store.record_set_digest), in first-seen order: one extraction serves them
        all."""
        key, union = feature_store.record_set_digest(settings), {}
        for name in self.suite["datasets"]:
            other = benchmark_tasks.dataset_settings(self.suite, name)
            if feature_store.record_set_digest(other) == key:
                for info in self.get(name)[0].infos:
                    union.setdefault((info.record_id, str(info.path)), info)
        return list(union.values())


def cross_domain_rows(data, train_source: str, test_source: str, groups=None):
    """(train, val, test rows, test records left out) of a cross-domain pair
    (protocols.source_rows: train_source's train and val splits, test_source's records of other
    patients; `groups`: patient keys, None: each record its own)."""
    patients = np.arange(len(data.sources)) if groups is None else groups
    rows = protocols.source_rows(data.sources, data.splits, patients, train_source,
                                 [test_source])
    return (rows["train"], rows["val"], rows["out_of_domain"][test_source],
            rows["left_out"][test_source])


def _warn_small_cross_domain_test(task: dict, data, groups) -> None:
    """One line when a cross-domain task tests fewer than datasets.SMALL_TEST_SPLIT records:
    what does apply (more records of its test source), not the folds an in-domain split's
    warning suggests (they had been suggested, to a pair they cannot change)."""
    test = cross_domain_rows(data, task["train_source"], task["test_source"], groups)[2]
    source = task["test_source"]
    line = datasets.small_test_warning(
        len(test), f"the test set of task {task['name']!r} (its {source!r} records, less those "
        f"of patients in the train and val splits of {task['train_source']!r})",
        f"; a cross-domain pair tests every such record (folds do not apply): only more "
        f"{source!r} records narrow them")
    if line and len(test):   # none at all: the cell's error says so
        print(line)
