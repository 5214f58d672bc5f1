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
workdir/cells/MODEL/COLUMN/PROTOCOL.npz (MODEL: benchmark_models.Model.filed_as, a digest of
its weights, never its name) with a digest of what they depend on; a rerun (after a kill, with
more models, in another order or under other names) reuses every cell whose digest matches and
computes the rest. The leaderboard (benchmark_leaderboard.py) is computed from the
saved predictions alone.
"""
from __future__ import annotations

import json
import os
import pathlib
import signal
import time

import numpy as np

from crema_jax.evaluate import (
    benchmark_datasets,
    benchmark_leaderboard,
    benchmark_models,
    benchmark_tasks,
    feature_store,
    finetune,
    frozen_features,
    leaderboard_tests,
    linear_probe,
    mlp_head,
    protocols,
    runs,
)
from crema_jax.models import families
from crema_jax.runtime import files
from crema_jax.runtime import mesh as mesh_lib
from crema_jax.runtime import workdir as workdir_lib

MARKERS = ("cells", "features", "leaderboard.json", workdir_lib.WorkdirLock.NAME)
OUTPUTS = ("leaderboard.json", "leaderboard.md", "leaderboard.png",   # in the workdir itself
           leaderboard_tests.CACHE_FILE)
# A fault drill for the resume test: the process kills itself (SIGKILL, no clean-up) once it has
# computed this many cells.
ENV_DRILL_KILL = "CREMA_JAX_DRILL_KILL_AFTER_CELLS"


def _cross_domain_cell(fit_predict, data, column, seed: int, groups=None):
    """Train on column.train_source's train split (its label fraction), select on its val
    split, test on column.test_source's records of other patients (cross_domain_rows), on the
    classes the head could learn (runs.cross_domain_head: the protocol of probe --cross_domain).
    A cell with no class to learn is an error (a table cell is never left out unsaid)."""
    train, val, test, left_out = benchmark_datasets.cross_domain_rows(
        data, column.train_source, column.test_source, groups)
    if not (len(train) and len(val) and len(test)):
        raise ValueError(f"task {column.task!r}: source {column.train_source!r} needs train and "
                         f"val records and {column.test_source!r} records of other patients "
                         f"({left_out} left out: their patients train or select the head; "
                         f"sources: {sorted(set(data.sources.tolist()))})")
    pool = len(train)
    train = train[protocols.label_fraction_subset(data.labels[train], column.label_fraction,
                                                  seed=seed)]
    head = runs.cross_domain_head(fit_predict, data, train, val, {"test": test})
    if head is None:
        raise ValueError(f"task {column.task!r}: no class has both positives and negatives in "
                         f"the {len(train)} training records of {column.train_source!r}: the "
                         "head has nothing to learn")
    pred = runs.learnt_only(head["out"], head["learnt"])["tests"]["test"]
    return {"n_train": len(train), "n_val": len(val), **protocols.labels_used(len(train), pool),
            **head["fields"], "out_of_domain_left_out": {column.test_source: left_out}}, \
        pred, head["learnt"]


def _fit_predict(model, protocol, rec, data, column, settings, store, mesh):
    if protocol == "finetune":
        data_cfg, ft = finetune.lead_setup(model.config, column.leads, settings, rec, mesh)
        return finetune.finetune_fit_predict(model.config, model.params, data, data_cfg, mesh,
                                             settings, ft, keep={})
    features = store.features(model, data, column.leads, settings, mesh)
    if protocol == "mlp":
        return frozen_features.head_fit_predict(features, data, {**rec, "seed": settings["seed"]},
                                                fit=mlp_head.fit_mlp_head,
                                                predict=mlp_head.predict_proba)
    return linear_probe.head_fit_predict(features, data, rec)


def compute_cell(model, column, protocol: str, suite: dict,
                 loaded: benchmark_datasets.Datasets, store, mesh):
    """(run fields, predictions with the records' patient keys) of one cell."""
    data, plan, groups = loaded.get(column.dataset)
    settings = {**benchmark_tasks.dataset_settings(suite, column.dataset),
                "label_fractions": [column.label_fraction], "checkpoint": model.checkpoint}
    fit_predict = _fit_predict(model, protocol, suite["recipes"][protocol], data, column,
                               settings, store, mesh)
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
    loaded, mesh = benchmark_datasets.Datasets(suite, tasks_path), mesh_lib.make_mesh()
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
    suite = benchmark_tasks.load_suite(tasks_path, roots)  # its recipes checked too
    benchmark_datasets.check_datasets(suite, tasks_path)  # layouts, options, roots: no record read
    cols = benchmark_tasks.columns(suite)
    workdir = files.check_output_dir(workdir, marker=MARKERS, flag="--workdir",  # the lock
                                     inputs=[d["root"] for d in suite["datasets"].values()],
                                     create=False)  # makes it, once the models are loaded
    models = benchmark_models.load_models(model_items, seed=suite["seed"], model_size=model_size)
    for note in benchmark_models.same_models(models, suite["seed"]).values():
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
        files.remove_stale_temporaries(workdir, OUTPUTS)
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
