"""Evaluation outputs: report.json, a Markdown table (report.md), ROC and PCA plots.

The report is a plain dict built by probe/finetune; this module only renders it. Missing values
(classes that could not be scored, undefined CIs) are None in JSON and an em dash in Markdown.
"""
from __future__ import annotations

import contextlib
import json
import pathlib

import numpy as np

from crema_jax.runtime import files
from crema_jax.runtime import workdir as workdir_lib
from crema_jax.evaluate import paired, plots, scoring

DASH = "\u2014"


def fmt(value, digits: int = 3) -> str:
    """`value` to `digits` decimals; one that would print as zero but is not, to two significant
    digits ("-0.00016", where "-0.000" had said a difference was there and was nothing)."""
    if value is None:
        return DASH
    if value == 0:
        return f"{0.0:.{digits}f}"  # not "-0.000" for -0.0
    if abs(value) < 0.5 * 10.0 ** -digits:
        return np.format_float_positional(value, precision=2, unique=False, fractional=False)
    return f"{value:.{digits}f}"


def _ci(ci: dict | None) -> str:
    if not ci or ci.get("low") is None:
        return DASH
    return f"[{fmt(ci['low'])}, {fmt(ci['high'])}]"


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
    text = json.dumps(json_safe(report), indent=2, sort_keys=False, allow_nan=False)
    pathlib.Path(path).write_text(text + "\n")


def display(report: dict, name: str) -> str:
    """'PAC (284470004)' when the report has a readable name for a class code."""
    readable = report.get("class_display", {}).get(name)
    return f"{readable} ({name})" if readable else name


def _fold_spread(run: dict) -> str:
    spread = run.get("fold_summary", {}).get("macro_auroc")
    if not spread or spread["mean"] is None:
        return DASH
    return f"{spread['mean']:.3f} ± {fmt(spread['std'])}"


def level(alpha: float) -> str:
    return f"{100 * (1 - alpha):g}%"


def p_text(entry: dict) -> str:
    text = paired.p_text(entry)
    return DASH if text is None else text


def labels_used_text(fraction: float, entry: dict) -> str:
    """A label fraction asked for and what it used (protocols.labels_used's fields of `entry`):
    "0.1 (used 0.178: 4.8 of 27)", the records drawn of the training records (with folds the
    means per fold); the fraction alone where `entry` does not say."""
    used = entry.get("label_fraction_used")
    if used is None:
        return f"{fraction:g}"
    return f"{fraction:g} (used {used:.3g}: {entry['n_labelled']:g} of {entry['n_train_pool']:g})"


def _labels_note(report: dict, run_name: str) -> str:
    """"; label fraction 0.1 (used ...)" of the run named `run_name` ("" where it has none)."""
    run = next((r for r in report.get("runs", []) if r["name"] == run_name), None)
    if run is None or "label_fraction" not in run.get("protocol", {}):
        return ""
    return f"; label fraction {labels_used_text(run['protocol']['label_fraction'], run)}"


def _runs_markdown(report: dict) -> list[str]:
    runs = report["runs"]
    lines = ["## Test results", "",
             "| run | model | leads | label fraction (used) | train records | test records "
             "| macro AUROC | 95% CI | folds: mean ± std | macro AUPRC | macro F1 "
             "| skipped classes |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        test = run["test"]
        skipped = ", ".join(f"{display(report, s['class'])}: {s['reason'].replace('_', ' ')}"
                            for s in test["skipped"]) or DASH
        lines.append(
            f"| {run['name']} | {run['model']} | {run['protocol']['leads']} | "
            f"{labels_used_text(run['protocol']['label_fraction'], run)} | "
            f"{run['n_train']:g} | {test['n']} | "
            f"{fmt(test['macro_auroc'])} | {_ci(test.get('ci'))} | {_fold_spread(run)} | "
            f"{fmt(test['macro_auprc'])} | {fmt(test['macro_f1'])} | {skipped} |")
    lines.append("")
    for run in runs:
        if run.get("folds") and run["protocol"] == runs[0]["protocol"]:
            lines += [f"### Folds of {run['name']} (model {run['model']})", "",
                      "| fold | labels used | train | val | test | macro AUROC | macro AUPRC "
                      "| macro F1 |", "|---|---|---|---|---|---|---|---|"]
            lines += [f"| {f['fold']} | "
                      f"{labels_used_text(run['protocol']['label_fraction'], f)} | "
                      f"{f['n_train']} | {f['n_val']} | {f['test']['n']} | "
                      f"{fmt(f['test']['macro_auroc'])} | {fmt(f['test']['macro_auprc'])} | "
                      f"{fmt(f['test']['macro_f1'])} |" for f in run["folds"]]
            lines.append("")
    head = runs[0]
    lines += [f"## Per class ({head['name']}, model {head['model']}"
              f"{_labels_note(report, head['name'])})", "",
              "| class | test positives | AUROC | AUPRC | F1 | threshold (val) |",
              "|---|---|---|---|---|---|"]
    for name, e in head["test"]["per_class"].items():
        lines.append(f"| {display(report, name)} | {e['n_pos']}/{e['n_pos'] + e['n_neg']} "
                     f"| {fmt(e['auroc'])} | {fmt(e['auprc'])} | {fmt(e['f1'])} "
                     f"| {fmt(e['threshold'])} |")
    return lines + [""]


def _comparison_markdown(report: dict, comparison: dict) -> list[str]:
    lines = [f"## A vs B: {comparison['run']}", "",
             f"**{comparison['verdict']}** (macro AUROC, paired bootstrap over "
             f"{comparison['n']} records, patients resampled together"
             f"{_labels_note(report, comparison['run'])})", "",
             f"| figure | A | B | A − B | {level(comparison['alpha'])} CI "
             "| p (paired bootstrap) |",
             "|---|---|---|---|---|---|"]
    for key in ("macro_auroc", "macro_auprc"):
        m = comparison[key]
        lines.append(f"| {key.replace('_', ' ')} | {fmt(m['a'])} | {fmt(m['b'])} | "
                     f"{fmt(m['difference'])} | {_ci(m['ci'])} | {p_text(m)} |")
    lines += ["", _holm_note(comparison.get("per_class_tests")),
              "", "| class | positives | AUROC A | AUROC B | A − B "
              f"| {level(comparison['alpha'])} CI (DeLong) "
              "| p (DeLong) | p (Holm) | verdict (Holm) |", "|---|---|---|---|---|---|---|---|---|"]
    for name, c in comparison["per_class"].items():
        if "skipped" in c:
            lines.append(f"| {display(report, name)} | {DASH} | {DASH} | {DASH} | {DASH} | "
                         f"{DASH} | {DASH} | {DASH} | {c['skipped'].replace('_', ' ')} |")
            continue
        lines.append(f"| {display(report, name)} | {c['n_pos']}/{c['n_pos'] + c['n_neg']} | "
                     f"{fmt(c['auroc_a'])} | {fmt(c['auroc_b'])} | {fmt(c['difference'])} "
                     f"| {_ci(c['ci'])} | {p_text(c)} | {p_text({'p': c.get('p_holm')})} "
                     f"| {c['verdict']} |")
    return lines + [""]


def _holm_note(tests: int | None) -> str:
    """The line above a comparison's per-class table: how many classes Holm's correction ran
    over (`per_class_tests`; a comparison without it had printed "over the None classes")."""
    if tests == 0:
        return "Per class: DeLong's test; no class tested here (each verdict says why)."
    over = "the classes" if tests is None else f"the {tests} classes"
    return (f"Per class: DeLong's test; each verdict is decided on the p after Holm's correction "
            f"over {over} tested here (p (Holm)), the raw p beside it.")


def markdown(report: dict) -> str:
    """The report as Markdown tables: models, runs, folds, per-class figures, cross-domain
    drops, and the paired comparisons of two models."""
    lines = [f"# {report.get('title', 'Evaluation')}", ""]
    settings = report.get("settings", {})
    if settings:
        lines += [", ".join(f"{k}: `{v}`" for k, v in settings.items()), ""]
    models = report.get("models", {})
    if models:
        lines += ["| model | checkpoint | backbone | data path and crops | crop averaging |",
                  "|---|---|---|---|---|"]
        lines += [f"| {label} | {m['checkpoint']} | {m['backbone']} | {m['data']} | "
                  f"{m['crop_averaging']} |" for label, m in models.items()]
        lines.append("")
    if report.get("records"):
        lines += _records_markdown(report)
    if report.get("runs"):
        lines += _runs_markdown(report)
    by_loss = chosen_by_loss(report)
    if by_loss:
        lines += [f"**Chosen by validation loss alone**: {', '.join(by_loss)}: no class was "
                  "scorable on their validation records (none had both a positive and a "
                  "negative), so the L2 strength or epoch was chosen by validation loss, not "
                  "validation macro AUROC.", ""]
    for comparison in report.get("comparisons", []):
        lines += _comparison_markdown(report, comparison)
    cross = report.get("cross_domain", [])
    if cross:
        lines += ["## Cross-domain (head trained on one source)", "",
                  "| model | train source | test source | in-domain AUROC | out-of-domain AUROC "
                  "| drop | common classes | out-of-domain macro AUROC (all scorable) |",
                  "|---|---|---|---|---|---|---|---|"]
        for entry in cross:
            for other, drop in entry["drop"].items():
                lines.append(
                    f"| {entry['model']} | {entry['train_source']} | {other} | "
                    f"{fmt(drop['in_domain'])} | {fmt(drop['out_of_domain'])} | "
                    f"{fmt(drop['drop'])} | {len(drop['classes'])} | "
                    f"{fmt(entry['out_of_domain'][other]['macro_auroc'])} |")
        lines.append("")
        left_out = [f"{n} of {other} (model {e['model']}, trained on {e['train_source']})"
                    for e in cross for other, n in e.get("out_of_domain_left_out", {}).items()
                    if n]
        if left_out:
            lines += ["**Left out of out-of-domain tests** (records of patients the head trained "
                      f"or was selected on): {'; '.join(left_out)}.", ""]
    drops = report.get("cross_domain_comparisons", [])
    if drops:
        lines += ["## Robustness: the drop of A vs the drop of B (paired bootstrap)", "",
                  "| train source | test source | drop A | drop B | A − B "
                  f"| {level(drops[0]['alpha'])} CI | p | verdict | classes below the floor |",
                  "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {d['train_source']} | {d['test_source']} | {fmt(d['drop_a'])} | "
                  f"{fmt(d['drop_b'])} | {fmt(d['difference'])} | {_ci(d['ci'])} | "
                  f"{p_text(d)} | {d['verdict']} | {_below_floor(report, d)} |" for d in drops]
        lines.append("")
    return "\n".join(lines)


def _below_floor(report: dict, drop: dict) -> str:
    """The classes a drop test left out for too few patients (paired.below_floor_text)."""
    below = [paired.below_floor_text({**b, "class": display(report, b["class"])})
             for b in drop.get("classes_below_floor", [])]
    return "; ".join(below) or DASH


def chosen_by_loss(report: dict) -> list[str]:
    """The heads (runs, folds, cross-domain sources) chosen by validation loss alone."""
    def by_loss(entry):
        chosen = entry.get("chosen_by") or entry.get("selection", {}).get("chosen_by")
        return chosen == scoring.BY_LOSS

    names = []
    for run in report.get("runs", []):
        model = f"model {run['model']}"
        names += [f"{run['name']} ({model})"] if by_loss(run) else []
        names += [f"{run['name']} fold {f['fold']} ({model})" for f in run.get("folds", [])
                  if by_loss(f)]
    names += [f"cross-domain, trained on {e['train_source']} (model {e['model']})"
              for e in report.get("cross_domain", []) if by_loss(e)]
    return names


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
    why = ", ".join(f"{display(report, s['class'])}: {s['reason'].replace('_', ' ')}"
                    for s in test["skipped"][:4]) + (", ..." if len(test["skipped"]) > 4 else "")
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


def _records_markdown(report: dict) -> list[str]:
    r = report["records"]
    left_out = [f"{r[key]} {words}" for key, words in (
        ("duplicates_merged", "duplicate rows merged"),
        ("no_class_left", "left with no class by --min_positives"),
        ("not_one_class", "without exactly one class")) if r.get(key)]
    line = (f"**Records**: {r['total']} evaluated of {r['indexed']} indexed"
            + (f" ({'; '.join(left_out)})" if left_out else "")
            + (f", {r['unlabelled']} of them with no label (negatives of every class)"
               if r.get("unlabelled") else "")
            + f"; label type {report['label_type']}; ")
    if r["folds"]:
        line += (f"{len(r['folds'])} folds of {', '.join(map(str, r['folds']))} test records; "
                 f"per fold {r['train']:g} train, {r['val']:g} val; {r['test']} tested")
    else:
        line += f"{r['train']:g} train, {r['val']:g} val, {r['test']} test"
    if r.get("unreadable"):
        line += (f"; {r['unreadable']} test records could not be read (skipped: the log names "
                 "each, with its reason)")
    return [line, ""]


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
    removed."""
    path = workdir_path(workdir, inputs=inputs, checkpoints=checkpoints, log=log)
    made = not path.exists()
    lock = workdir_lib.WorkdirLock(path)
    note = lock.acquire()
    if note:
        log(note)
    try:
        yield path
    finally:
        lock.release()
        if made and path.is_dir() and not any(path.iterdir()):
            path.rmdir()


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
    files.write_text_atomic(paths["markdown"], markdown(report))
    if predictions is not None:
        paths["predictions"] = workdir / "predictions.npz"
        arrays = {k: np.asarray(v) for k, v in predictions.items()}

        def save_npz(tmp):
            with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz"
                np.savez(f, **arrays)
        files.write_atomic(paths["predictions"], save_npz)
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
    files.write_atomic(paths["json"], lambda tmp: write_json(report, tmp))
    return {k: str(v) for k, v in paths.items()}
