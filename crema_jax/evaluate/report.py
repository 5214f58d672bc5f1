"""Evaluation outputs: report.json (a plain dict built by probe, finetune and compare: one
schema), report.md (report_markdown.py renders it), ROC and PCA plots and predictions.npz,
written into a checked workdir. Missing values (classes that could not be scored, undefined
CIs) are None in JSON.
"""
from __future__ import annotations

import contextlib
import json
import pathlib

import numpy as np

from crema_jax.runtime import files, made_folders
from crema_jax.runtime import workdir as workdir_lib
from crema_jax.evaluate import plots, report_markdown, scoring


def json_safe(value):
    """`value` with every NaN or infinite float made None: JSON has no NaN or Infinity (Python
    wrote them as bare `NaN`/`Infinity`, which strict parsers refuse). Where a figure is
    undefined the entry beside it says why (`skipped`, `not_testable`, a "not tested" verdict)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)) and not np.isfinite(value):
        return None
    return value


def write_json(report: dict, path) -> None:
    """An evaluation's JSON output (report.json, the benchmark's leaderboard.json), written
    atomically: non-finite numbers as null (json_safe; a strict dump), keys in the order the
    dict was built (classes in the task's order), indent 2."""
    text = json.dumps(json_safe(report), indent=2, sort_keys=False, allow_nan=False)
    files.write_text_atomic(path, text + "\n")


def nothing_scored(report: dict) -> str | None:
    """A one-line account when no test set of any run or cross-domain entry could be scored
    (every class lacked a positive or a negative there), else None."""
    tests = [(run["name"], run["test"]) for run in report.get("runs", [])]
    tests += [(f"cross-domain {e['train_source']} -> {name}", t)
              for e in report.get("cross_domain", [])
              for name, t in [("in-domain", e["in_domain"]), *e["out_of_domain"].items()]]
    if not tests or any(t["macro_auroc"] is not None for _, t in tests):
        return None
    name, test = tests[0]
    why = ", ".join(f"{report_markdown.display(report, s['class'])}: "
                    f"{s['reason'].replace('_', ' ')}" for s in test["skipped"][:4])
    why += ", ..." if len(test["skipped"]) > 4 else ""
    return (f"no class could be scored on any test set ({name}: {why}): no figure was "
            "measured; re-split (--split_fractions) or use --folds so that each test set holds "
            "positives and negatives of a class")


def records(data, record_folds=None, head=None) -> dict:
    """report.json's `records`: what was evaluated and what loading left out. train/val/test
    count the records the headline protocol's heads train, select and test on, as the runs
    table does: the splits, or with K folds the mean per fold of training and validation
    records and every record tested (once). With `head` (the headline model's run on its
    lead set and all labels), they count the records its model could read and scored;
    `unreadable` counts the test records its data path skipped (a damaged or too short
    record: the log names each, with its reason). `patients_across_splits` is what loading
    found of the given splits (datasets._checked_patients: {"patients", "records", "examples"},
    or None where the splits were re-split or not read)."""
    counts = {"indexed": int(data.counts.get("indexed", len(data.infos))),
              "duplicates_merged": int(data.counts.get("duplicates_merged", 0)),
              "no_class_left": int(data.counts.get("no_class_left", 0)),
              "not_one_class": int(data.counts.get("not_one_class", 0)),
              "unlabelled": int(data.counts.get("unlabelled", 0)),
              "patients_across_splits": data.counts.get("patients_across_splits")}
    if record_folds:
        used = {"train": round(float(np.mean([len(p["train"]) for p in record_folds])), 1),
                "val": round(float(np.mean([len(p["val"]) for p in record_folds])), 1),
                "test": int(sum(len(p["test"]) for p in record_folds))}
        tested = [int(len(part["test"])) for part in record_folds]
    else:
        used = {s: int(np.sum(data.splits == s)) for s in ("train", "val", "test")}
        tested = []
    planned_test = used["test"]
    if head is not None:  # what the headline run's model read, not what the plan assigned
        used = {"train": head["n_train"], "val": head["n_val"], "test": head["test"]["n"]}
        if record_folds and head.get("folds"):
            tested = [int(fold["test"]["n"]) for fold in head["folds"]]
    return {"total": int(len(data.infos)), **counts, **used,
            "unreadable": int(planned_test - used["test"]), "folds": tested}


def _all_labels_run(runs: list) -> dict:
    """The headline model's run on its lead set with the most training labels (all of them,
    unless --label_fractions leaves 1 out): the run whose records `records` counts."""
    head = runs[0]
    same = [r for r in runs if r["model"] == head["model"]
            and r["protocol"]["leads"] == head["protocol"]["leads"]]
    return max(same, key=lambda r: r["protocol"]["label_fraction"])


def new_report(*, title: str, command: str, settings: dict, data, models: dict, runs: list,
               cross_domain: list, record_folds=None, comparisons=(),
               cross_domain_comparisons=(), seconds: float) -> dict:
    """report.json's one schema (README, "Report schema"), whatever the command and protocol:
    every key is present; what a protocol does not produce is an empty list or None."""
    comparisons = list(comparisons)
    head = runs[0]
    return {
        "title": title, "command": command, "settings": settings, "models": models,
        "label_type": data.label_type, "classes": list(data.classes),
        "class_display": data.display,
        "records": records(data, record_folds, _all_labels_run(runs)),
        "headline": {"run": head["name"], "model": head["model"],
                     "macro_auroc": head["test"]["macro_auroc"], "ci": head["test"]["ci"],
                     "verdict": comparisons[0]["verdict"] if comparisons else None},
        "runs": runs, "cross_domain": cross_domain, "comparisons": comparisons,
        "cross_domain_comparisons": list(cross_domain_comparisons),
        "seconds": round(float(seconds), 1),
    }


def headline_roc(pred: dict, names, title: str) -> tuple:
    """write_all's `roc` of a run's predictions: per record, as its figures are scored."""
    _, probs, labels = scoring.per_record(pred["rows"], pred["probs"], pred["labels"])
    return labels, probs, names, title


def prediction_arrays(pred: dict, classes, **more) -> dict:
    """predictions.npz's arrays: one row per test example (every record once with K folds)."""
    arrays = {"record_id": np.asarray(pred["ids"], dtype=str), "labels": pred["labels"],
              "probs": pred["probs"], "classes": np.asarray(classes, dtype=str),
              "row": pred["rows"]}
    if "fold" in pred:
        arrays["fold"] = pred["fold"]
    return {**arrays, **more}


# Every file an evaluation report may have (write_all); a new report removes an earlier
# report's before writing its own, so that no figure of an earlier report stays beside it.
REPORT_FILES = ("report.json", "report.md", "predictions.npz", "roc.png", "embeddings_pca.png",
                "paired_differences.png")


@contextlib.contextmanager
def claimed_workdir(workdir: str, *, inputs=(), checkpoints=(), log=print):
    """workdir_path's folder, held by this run (runtime/workdir.WorkdirLock) while it computes
    and writes: two evaluations into one workdir had both ended "wrote ...", one report lost
    and their files mixed. A folder this run made and left empty (it failed before writing) is
    removed, with the parents it made (runtime/made_folders)."""
    path = workdir_path(workdir, inputs=inputs, checkpoints=checkpoints, log=log)
    made = made_folders.to_make(path)
    lock = workdir_lib.WorkdirLock(path)
    note = lock.acquire()
    if note:
        log(note)
    try:
        yield path
    finally:
        lock.release()
        made_folders.remove_if_empty(made)


def workdir_path(workdir: str, *, inputs=(), checkpoints=(), log=print) -> pathlib.Path:
    """The output folder, checked (the writers create it): new, empty, or one an evaluation
    wrote before (it holds a report.json: its report is replaced, and `log` says so); never one
    of the inputs, nor inside a checkpoint folder read (crema_jax/files.py: a report written
    into CKPT/checkpoints/9 had been set aside by the next pretraining there)."""
    path = files.check_output_dir(workdir, marker=(*REPORT_FILES, workdir_lib.WorkdirLock.NAME),
                                  flag="--workdir",
                                  inputs=[*inputs, *checkpoints], outside=checkpoints,
                                  create=False)
    for name in REPORT_FILES:  # found only after the whole run, its other files replaced
        if (path / name).is_dir() and not (path / name).is_symlink():
            raise files.OutputError(f"--workdir={path}: {name} is a folder, where this command "
                                    "writes a file; move it away or choose a new --workdir")
    if (path / "report.json").is_file():
        log(f"{path}: replacing the report of an earlier evaluation there; use a new "
            "--workdir to keep it")
    return path


def write_all(report: dict, workdir, *, roc=None, embeddings=None, predictions=None,
              paired: bool = False) -> dict:
    """Writes report.md, predictions.npz, the PNGs and, last, report.json under workdir (an
    earlier report's files removed first); returns their paths.

    roc: (labels, scores, class_names, title) of the headline test run.
    embeddings: (features, {"label": [...], "source": [...]}, title).
    predictions: arrays saved to predictions.npz (record ids, labels, probabilities of the
        headline test run), so any figure of the report can be recomputed independently.
    paired: paired_differences.png of the report's comparisons.
    """
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    # An earlier report's files go first, and report.json is written last: a run stopped
    # part-way (Ctrl-C) leaves some of its own files and no report.json, never a report.json
    # beside another run's figures (a compare's paired_differences.png had stayed beside a
    # probe's report, and a probe stopped after its report.json beside the earlier figures).
    for name in REPORT_FILES:
        stale = workdir / name
        if stale.is_file() and not stale.is_symlink():
            stale.unlink()
    paths = {"markdown": workdir / "report.md"}
    files.write_text_atomic(paths["markdown"], report_markdown.markdown(report))
    if predictions is not None:
        paths["predictions"] = workdir / "predictions.npz"
        files.write_npz_atomic(paths["predictions"],
                               {k: np.asarray(v) for k, v in predictions.items()})
    if roc is not None:
        paths["roc"] = workdir / "roc.png"
        files.write_atomic(paths["roc"], lambda tmp: plots.plot_roc(*roc[:3], tmp, roc[3]))
    if embeddings is not None:
        paths["embeddings"] = workdir / "embeddings_pca.png"
        files.write_atomic(paths["embeddings"], lambda tmp: plots.plot_embeddings(
            embeddings[0], embeddings[1], tmp, embeddings[2]))
    if paired and report["comparisons"]:
        paths["paired"] = workdir / "paired_differences.png"
        files.write_atomic(paths["paired"], lambda tmp: plots.plot_paired_differences(
            report["comparisons"], report.get("class_display", {}), report["models"], tmp))
    paths["json"] = workdir / "report.json"
    write_json(report, paths["json"])
    return {k: str(v) for k, v in paths.items()}
