"""`crema-jax benchmark`: many models x many tasks under one protocol, resumable.

Every model sees the same records, splits (the layout's, K patient-grouped folds, or a seeded
re-split) and label fractions, each through its own data path (its crops). A cell is one model
on one column (task x lead set x label fraction, benchmark_tasks.py) by one protocol:
- probe: a linear head on frozen features (linear_probe.py);
- mlp: a one-hidden-layer head on the same frozen features (mlp_head.py);
- finetune: the encoder and a head trained together (finetune.py; SiT models only, other cells
  are marked not applicable).
Frozen features are extracted ONCE per model x records x lead set and cached under
workdir/features (feature_store.py). Each finished cell's predictions are written atomically to
workdir/cells/MODEL/COLUMN/PROTOCOL.npz (MODEL: benchmark_tasks.Model.filed_as, a digest of
its weights, never its name) with a digest of what they depend on; a rerun (after a kill, with
more models, in another order or under other names) reuses every cell whose digest matches and
computes the rest. The leaderboard (benchmark_leaderboard.py) is computed from the
saved predictions alone.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import signal
import time

import numpy as np

from crema_jax.data.signal import augment
from crema_jax.evaluate import (
    benchmark_datasets,
    benchmark_leaderboard,
    benchmark_tasks,
    datasets,
    feature_store,
    finetune,
    folds,
    leaderboard_tests,
    linear_probe,
    mlp_head,
    protocols,
    ranges,
    runs,
)
from crema_jax.models import families
from crema_jax.runtime import files
from crema_jax.runtime import mesh as mesh_lib
from crema_jax.runtime import workdir as workdir_lib

MARKERS = ("cells", "features", "leaderboard.json", workdir_lib.WorkdirLock.NAME)
# A fault drill for the resume test: the process kills itself (SIGKILL, no clean-up) once it has
# computed this many cells.
ENV_DRILL_KILL = "CREMA_JAX_DRILL_KILL_AFTER_CELLS"

PROTOCOL_DEFAULTS = {
    "probe": {"l2_grid": list(linear_probe.DEFAULT_L2_GRID), "optimizer": "lbfgs", "steps": 200},
    "mlp": {"l2_grid": list(mlp_head.DEFAULT_L2_GRID), "hidden": 128, "steps": 300,
            "learning_rate": 1e-3},
    # The finetune command's defaults (cli/evaluation_flags.py); None: the data path's.
    "finetune": {"epochs": 30, "base_lr": 1e-3, "weight_decay": 0.05, "layer_decay": None,
                 "drop_path": None, "label_smoothing": 0.0, "warmup_epochs": 1.0,
                 "patience": 10, "augment": ["config"], "steps_per_epoch": 0},
}


RANGES = {"probe": ranges.PROBE, "mlp": ranges.MLP, "finetune": ranges.FINETUNE}


def recipe(suite: dict, protocol: str) -> dict:
    given = dict(suite["protocols"][protocol] or {})
    unknown = sorted(set(given) - set(PROTOCOL_DEFAULTS[protocol]))
    if unknown:
        raise ValueError(f"task file: protocols[{protocol!r}]: unknown field(s) {unknown}; "
                         f"expected {sorted(PROTOCOL_DEFAULTS[protocol])}")
    out = {**PROTOCOL_DEFAULTS[protocol], **given}
    where = f"task file: protocols[{protocol!r}]"
    # Range.ok lets None through (a setting left to the data path's recipe): only the fields
    # whose default is None may be; a null epochs had been a TypeError traceback (int(None)).
    for name, valid in RANGES[protocol].items():
        if out.get(name, 0) is None and PROTOCOL_DEFAULTS[protocol][name] is not None:
            raise ValueError(f"{where}.{name}=None: {valid.text}")
    ranges.check(out, RANGES[protocol], f"{where}.")
    problem = (ranges.finetune_steps_problem(out, f"protocols[{protocol!r}].")
               if protocol == "finetune" else None)
    if problem:  # 3e9 steps: an OverflowError traceback in the first cell
        raise ValueError(f"task file: {problem}")
    if "l2_grid" in out:
        grid = list(out["l2_grid"] or [])
        if not grid or not all(ranges.L2.ok(v) for v in grid):
            raise ValueError(f"{where}.l2_grid={out['l2_grid']!r}: expected strengths, each "
                             f"{ranges.L2.expected}")
        out["l2_grid"] = tuple(float(v) for v in grid)
    # Checked here, before any model loads (a bad optimizer had surfaced after the feature
    # extraction as a flag the benchmark has not got; an augment string letter by letter).
    if "optimizer" in out and out["optimizer"] not in linear_probe.OPTIMIZERS:
        raise ValueError(f"{where}.optimizer={out['optimizer']!r}: expected one of "
                         f"{list(linear_probe.OPTIMIZERS)}")
    if "augment" in out:
        known = sorted({"config", "none", *augment.AUGMENTS})
        names = out["augment"]
        if not isinstance(names, (list, tuple)) or not all(n in known for n in names):
            raise ValueError(f"{where}.augment={names!r}: expected a list of names from "
                             f"{known}")
        out["augment"] = list(names)
    return out


class Datasets:
    """Each dataset of the task file loaded on first use: (Dataset, fold plan, patient keys).
    `tasks_path` names the task file in errors."""

    def __init__(self, suite: dict, tasks_path: str = ""):
        self.suite, self.loaded, self.digests = suite, {}, {}
        self.tasks_path = str(tasks_path)

    def get(self, name: str):
        if name not in self.loaded:
            # Its fields named as the task file's, with the first task on it, in every line:
            # its `classes` define the task, min_positives applied to them (load_dataset).
            # Its test split is tested by its in-domain tasks alone (a cross-domain pair tests
            # another source's records: the split's size, and folds, say nothing of it).
            tasks = [t for t in self.suite["tasks"] if t["dataset"] == name]
            settings = {**benchmark_tasks.dataset_settings(self.suite, name), "flag_prefix":
                        benchmark_datasets.dataset_where(self.suite, name, self.tasks_path),
                        "test_split_read": any(not t["train_source"] for t in tasks)}
            data = datasets.load_dataset(settings)
            benchmark_datasets.check_sources(self.suite, name, data.sources, self.tasks_path)
            plan, groups = folds.dataset_plan(data, settings)
            for task in (t for t in tasks if t["train_source"]):
                _warn_small_cross_domain_test(task, data, groups)
            self.loaded[name] = (data, plan, groups)
        return self.loaded[name]

    def fingerprint(self, name: str) -> str:
        """A digest of what dataset `name` holds (feature_store.record_key: ids, paths and file
        stats; splits, sources, classes, labels): a cell computed before its records, their
        files or labels changed is not reused."""
        if name in self.digests:
            return self.digests[name]
        data = self.get(name)[0]
        digest = hashlib.sha256(json.dumps(
            [[feature_store.record_key(i) for i in data.infos], data.splits.tolist(),
             data.sources.tolist(), list(data.classes)]).encode())
        digest.update(np.ascontiguousarray(data.labels, np.uint8).tobytes())
        self.digests[name] = digest.hexdigest()[:16]
        return self.digests[name]

    def records_like(self, settings: dict) -> list:
        """Every record of the task file's datasets over the same records as `settings`
        (feature_store.records_key), in first-seen order: one extraction serves them all."""
        key, union = feature_store.records_key(settings), {}
        for name in self.suite["datasets"]:
            if feature_store.records_key(benchmark_tasks.dataset_settings(self.suite, name)) == key:
                for info in self.get(name)[0].infos:
                    union.setdefault((info.record_id, str(info.path)), info)
        return list(union.values())


def cross_domain_rows(data, train_source: str, test_source: str, groups=None):
    """(train, val, test rows, test records left out) of a cross-domain pair: train_source's
    train and val splits, test_source's records of other patients (`groups`: patient keys;
    None: each record its own; runs.py: the same rule)."""
    own, other = data.sources == train_source, data.sources == test_source
    train, val = (np.flatnonzero(own & (data.splits == s)) for s in ("train", "val"))
    patients = np.arange(len(data.sources)) if groups is None else groups
    test, left_out = protocols.unseen_patients(np.flatnonzero(other), np.r_[train, val],
                                               patients)
    return train, val, test, left_out


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


def _cross_domain_cell(fit_predict, data, column, seed: int, groups=None):
    """Train on column.train_source's train split (its label fraction), select on its val
    split, test on column.test_source's records of other patients (cross_domain_rows)."""
    train, val, test, left_out = cross_domain_rows(data, column.train_source,
                                                   column.test_source, groups)
    if not (len(train) and len(val) and len(test)):
        raise ValueError(f"task {column.task!r}: source {column.train_source!r} needs train and "
                         f"val records and {column.test_source!r} records of other patients "
                         f"({left_out} left out: their patients train or select the head; "
                         f"sources: {sorted(set(data.sources.tolist()))})")
    pool = len(train)
    train = train[protocols.label_fraction_subset(data.labels[train], column.label_fraction,
                                                  seed=seed)]
    out = fit_predict(train, val, {"test": test})
    # A class without positives (or without negatives) in the training source was never
    # learnt: its test AUROC is noise (or a constant's 0.5) and is not scored (it was, and
    # ranked).
    learnt = runs.learnt_classes(data.labels[train])
    if not learnt.any():
        raise ValueError(f"task {column.task!r}: no class has both positives and negatives in "
                         f"the training records of {column.train_source!r}")
    pred = runs.learnt_only(out, learnt)["tests"]["test"]
    return {"n_train": len(train), "n_val": len(val),
            **protocols.labels_used(len(train), pool), **out["info"],
            **runs.unlearnt(data.classes, data.labels[train]),
            "out_of_domain_left_out": {column.test_source: left_out}}, pred, learnt


def _fit_predict(model, protocol, rec, data, column, settings, store, mesh):
    if protocol == "finetune":
        data_cfg, ft = finetune.lead_setup(model.config, column.leads, settings, rec, mesh)
        return finetune.finetune_fit_predict(model.config, model.params, data, data_cfg, mesh,
                                             settings, ft, keep={})
    features = store.features(model, data, column.leads, settings, mesh)
    if protocol == "mlp":
        return linear_probe.head_fit_predict(features, data, {**rec, "seed": settings["seed"]},
                                             fit=mlp_head.fit_mlp_head,
                                             predict=mlp_head.predict_proba)
    return linear_probe.head_fit_predict(features, data, rec)


def compute_cell(model, column, protocol: str, suite: dict, loaded: Datasets, store, mesh):
    """(run fields, predictions with the records' patient keys) of one cell."""
    data, plan, groups = loaded.get(column.dataset)
    settings = {**benchmark_tasks.dataset_settings(suite, column.dataset),
                "label_fractions": [column.label_fraction], "checkpoint": model.checkpoint}
    fit_predict = _fit_predict(model, protocol, recipe(suite, protocol), data, column, settings,
                               store, mesh)
    learnt = np.ones(len(data.classes), bool)
    if column.train_source:
        fields, pred, learnt = _cross_domain_cell(runs.finite_outputs(fit_predict, model.name),
                                                  data, column, suite["seed"], groups)
    else:
        found, _, preds = runs.model_runs(fit_predict, data, column.leads, settings,
                                          method=protocol, model=model.name, plan=plan,
                                          groups=groups)
        # Not its "model": a cell is filed under the weights, shown under today's name.
        fields = {k: v for k, v in found[0].items() if k not in ("test", "folds", "model")}
        pred = preds["runs"][found[0]["name"]]
    rows = np.asarray(pred["rows"], np.int64)
    return fields, {"probs": np.asarray(pred["probs"], np.float64),
                    "labels": np.asarray(pred["labels"], np.float32), "rows": rows,
                    "ids": np.asarray(pred["ids"], dtype=str), "group": groups[rows],
                    "record_id": np.asarray([data.infos[r].record_id for r in rows], dtype=str),
                    "classes": np.asarray(data.classes, dtype=str)[learnt],
                    **({"fold": np.asarray(pred["fold"])} if "fold" in pred else {})}


def cell_path(workdir: pathlib.Path, model: str, column: str, protocol: str) -> pathlib.Path:
    return (workdir / "cells" / files.folder_name(model) / files.folder_name(column)
            / f"{protocol}.npz")


def save_cell(path, key: tuple, spec: str, fields: dict, arrays: dict) -> None:
    """The cell's predictions and, in `meta`, which cell it is (`key`: the model's filed_as,
    the column, the protocol), its digest and its run fields."""
    meta = json.dumps({"model": key[0], "column": key[1], "protocol": key[2], "spec": spec,
                       "fields": fields}, default=float)
    files.write_npz_atomic(path, {"meta": np.asarray(meta), **arrays})


def load_cell(path, spec: str) -> dict | None:
    """A finished cell's saved predictions, or None when it is missing, damaged (computed
    again) or its digest differs."""
    arrays = feature_store.load_saved(path)
    if arrays is None:
        return None
    try:
        meta = json.loads(str(arrays.pop("meta")))
        fields = meta["fields"] if meta["spec"] == spec else None
    except (KeyError, TypeError, json.JSONDecodeError):
        print(f"{path}: its metadata does not read; computing the cell again")
        return None
    return None if fields is None else {**arrays, "fields": fields}


def _drill(counts: dict) -> None:
    limit = int(os.environ.get(ENV_DRILL_KILL, "0") or 0)
    if limit and counts["cells_computed"] >= limit:
        os.kill(os.getpid(), signal.SIGKILL)


def run_cells(models, cols, suite: dict, workdir: pathlib.Path, log=print,
              tasks_path: str = "") -> tuple[dict, dict]:
    """Every cell, computed or reused: ({(model, column, protocol): cell}, counts)."""
    counts = {"cells_computed": 0, "cells_reused": 0, "cells_not_applicable": 0,
              "feature_extractions": 0, "features_reused": 0}
    loaded, mesh = Datasets(suite, tasks_path), mesh_lib.make_mesh()
    store = feature_store.FeatureStore(workdir / "features", counts, log=log,
                                       records_of=loaded.records_like)
    # Every task's dataset indexed (and its classes, folds, sources checked) before any cell
    # runs: a later task's class typo or too few positives had failed after the earlier cells.
    # Each is loaded once per run in any case (a cell's digest holds its dataset's).
    for name in dict.fromkeys(c.dataset for c in cols):
        loaded.get(name)
    cells = {}
    for column in cols:
        for protocol in suite["protocols"]:
            for model in models:
                key = (model.name, column.name, protocol)
                if protocol == "finetune" and not families.family_of(
                        model.config.model).fine_tunable:
                    counts["cells_not_applicable"] += 1
                    continue
                path = cell_path(workdir, model.filed_as, column.name, protocol)
                spec = benchmark_tasks.cell_spec(model, column, protocol, suite,
                                                 loaded.fingerprint(column.dataset))
                cell = load_cell(path, spec)
                if cell is not None:
                    counts["cells_reused"] += 1
                    cells[key] = cell
                    continue
                t0 = time.time()
                fields, arrays = compute_cell(model, column, protocol, suite, loaded, store,
                                              mesh)
                fields["seconds"] = round(time.time() - t0, 1)
                save_cell(path, (model.filed_as, column.name, protocol), spec, fields, arrays)
                cells[key] = {**arrays, "fields": fields}
                counts["cells_computed"] += 1
                log(f"cell {model.name} | {column.name} | {protocol}: {fields['seconds']} s")
                _drill(counts)
    return cells, counts


def run_benchmark(model_items, tasks_path, workdir, *, roots=None, model_size: str = "tiny",
                  log=print) -> dict:
    """Every cell of the task file for every model (and the random rows), then
    leaderboard.json, leaderboard.md and leaderboard.png in workdir."""
    start = time.time()
    suite = benchmark_tasks.load_suite(tasks_path, roots)
    benchmark_datasets.check_datasets(suite, tasks_path)  # layouts, options, roots: no record read
    cols = benchmark_tasks.columns(suite)
    for protocol in suite["protocols"]:
        recipe(suite, protocol)  # a bad field fails before any model loads
    workdir = files.check_output_dir(workdir, marker=MARKERS, flag="--workdir",  # the lock
                                     inputs=[d["root"] for d in suite["datasets"].values()],
                                     create=False)  # makes it, once the models are loaded
    models = benchmark_tasks.load_models(model_items, seed=suite["seed"], model_size=model_size)
    for note in benchmark_tasks.same_models(models, suite["seed"]).values():
        log(f"note: {note}")
    # One run per workdir: a second would compute the same features and cells alongside the
    # first, each overwriting the other's (a killed run's lock, its pid gone, is taken over).
    lock = workdir_lib.WorkdirLock(workdir)
    note = lock.acquire()
    if note:
        log(note)
    try:
        (workdir / "cells").mkdir(exist_ok=True)
        for folder in (workdir / "cells").rglob("*"):
            if folder.is_dir():  # a killed run's half-written temporaries
                files.remove_stale_temporaries(folder)
        cells, counts = run_cells(models, cols, suite, workdir, log=log, tasks_path=tasks_path)
        # The leaderboard's statistics of unchanged cells are reused (leaderboard_tests.py).
        cache = leaderboard_tests.Cache(workdir / leaderboard_tests.CACHE_FILE, log=log)
        board = benchmark_leaderboard.build(models, cols, suite, cells, cache=cache, log=log)
        board.update(counts={**counts, **board["counts"]},
                     seconds=round(time.time() - start, 1), task_file=str(tasks_path))
        benchmark_leaderboard.write_all(board, workdir)
        cache.save()
    finally:
        lock.release()
    return board
