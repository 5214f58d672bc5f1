"""The benchmark's leaderboard, computed from the cells' saved predictions alone.

Per column x protocol (a panel): the records every model predicted (a record's windows
averaged, compare.common_records; records only some models read are left out and counted), each
model's macro AUROC and AUPRC over the classes scorable there, with a 1 - alpha bootstrap CI of
the macro AUROC over patients; the top model (highest macro AUROC; ties: the first listed);
then paired tests (paired.compare_predictions: per class a permutation test, its exchanges
enough for the table's Holm family (leaderboard_tests.permutations_for), or DeLong's at
paired.PERMUTATION_BELOW positives and negatives; a paired bootstrap of the macro AUROC over
patients) of every model against the top one and against the random init of its architecture.
Holm's correction runs across the whole table: once over every macro AUROC comparison, once over
every per-class test. A difference is called significant where the Holm-adjusted p < alpha.
The best of a panel are the top model and every model whose test against it is not
significant: a point estimate alone had crowned one of two models tied to the fourth decimal
(p = 1). Each panel says what it scored: its records, classes, and the label fraction asked for
and used (protocols.labels_used). The slow statistics (each cell's CI, the paired tests) come from
leaderboard_tests.py, which caches them. leaderboard.md (leaderboard_markdown.py): the table,
the panels, every paired test, and per panel each class's counts, each model's AUROC and its
test against the top one; leaderboard_markdown.summary: what the benchmark prints, the table and
each panel's verdict.
"""
from __future__ import annotations

import time

import numpy as np

from crema_jax.evaluate import (benchmark_models, compare, holm, leaderboard_markdown,
                                leaderboard_tests, plots, report, report_markdown, scoring)
from crema_jax.runtime import files


def _per_record_truth(cell: dict, rows: np.ndarray):
    """(labels, patient key, record id) of each of `rows`, from a cell's per-example arrays."""
    first = {int(r): i for i, r in reversed(list(enumerate(cell["rows"])))}
    idx = np.asarray([first[int(r)] for r in rows], np.int64)
    return cell["labels"][idx], cell["group"][idx], cell["record_id"][idx]


def _score(labels, probs, groups, suite) -> dict:
    auroc = scoring.columnwise_auroc(labels, probs)
    ci = scoring.bootstrap_ci(labels, probs, n_resamples=suite["bootstrap"], seed=suite["seed"],
                              alpha=suite["alpha"], groups=groups)
    return {"macro_auroc": scoring.macro_over_scorable(auroc),
            "macro_auprc": scoring.macro_over_scorable(scoring.columnwise_auprc(labels, probs)),
            "ci": {"low": ci["low"], "high": ci["high"]},
            "n_scored_classes": int(np.isfinite(auroc).sum()),
            "auroc": [float(v) if np.isfinite(v) else None for v in auroc]}


def _references(names: list, best: str, random_row: dict) -> list[tuple[str, str, list]]:
    """(model, reference, [what the reference is]) of each paired test, one per pair."""
    tests, seen = [], {}
    for name in names:
        if name != best:
            seen[frozenset((name, best))] = len(tests)
            tests.append((name, best, ["best"]))
    for name in names:
        ref = random_row[name]
        if ref == name or ref not in names:
            continue
        if frozenset((name, ref)) in seen:
            tests[seen[frozenset((name, ref))]][2].append("random init")
        else:
            seen[frozenset((name, ref))] = len(tests)
            tests.append((name, ref, ["random init"]))
    return tests


def _panel(column, protocol, group: dict, scores: list, top) -> dict:
    """What one column x protocol scored: records, classes, the label fraction asked for and
    what it used (the first model's cell: every model's head draws the same rows), its top
    model (`best` is filled in once Holm's correction has run)."""
    fields = next(iter(group.values()))["fields"]
    return {"column": column.name, "protocol": protocol, "leads": column.leads,
            "label_fraction": column.label_fraction,
            **{k: fields.get(k) for k in ("n_labelled", "n_train_pool", "label_fraction_used")},
            "n": scores[0]["n"], "n_classes": scores[0]["n_scored_classes"], "top": top,
            "best": []}


def _column(column, protocol, names, cells, random_row, suite, cache):
    """(cells' scores, the panel, its paired tests to run: leaderboard_tests.run_test) of one
    column x protocol; each cell's score from `cache` where it holds it."""
    group = {n: cells[(n, column.name, protocol)] for n in names}
    classes = [str(c) for c in group[names[0]]["classes"]]
    common = compare.common_records(group, len(classes))
    labels, groups, _ = _per_record_truth(group[names[0]], common["rows"])
    scores = []
    settings = {k: suite[k] for k in ("bootstrap", "seed", "alpha")}
    for name in names:
        fields = group[name]["fields"]
        probs = common["probs"][name]
        score, _ = cache.get("cell score", {"labels": labels, "probs": probs, "groups": groups},
                             settings, lambda probs=probs: _score(labels, probs, groups, suite))
        score["auroc"] = dict(zip(classes, score["auroc"]))  # each class's AUROC
        scores.append({"model": name, "column": column.name, "protocol": protocol,
                       "n": len(common["rows"]), "unpaired": common["unpaired"][name],
                       "n_train": fields.get("n_train"), "n_val": fields.get("n_val"),
                       **score})
    ranked = [s for s in scores if s["macro_auroc"] is not None]
    best = max(ranked, key=lambda s: s["macro_auroc"])["model"] if ranked else None
    pending = [dict(column=column.name, protocol=protocol, model=name, reference=ref,
                    against=against, labels=labels, a=common["probs"][name],
                    b=common["probs"][ref], classes=classes, groups=groups)
               for name, ref, against in (_references(names, best, random_row) if best else [])]
    panel = _panel(column, protocol, group, scores, best)
    positives = (labels > 0.5).sum(0)
    panel["class_counts"] = {c: {"positives": int(k), "negatives": int(len(labels) - k)}
                             for c, k in zip(classes, positives)}
    return scores, panel, pending


def _mark_best(panels: list, tests: list) -> None:
    """Each panel's `best`: its top model first, then every model whose test against it is not
    significant after Holm's correction (not distinguishable from it)."""
    for panel in panels:
        key = (panel["column"], panel["protocol"])
        panel["best"] = [panel["top"]] + [
            t["model"] for t in tests if (t["column"], t["protocol"]) == key
            and "best" in t["against"] and not t["macro_auroc"].get("significant")
        ] if panel["top"] is not None else []


def _apply_holm(tests: list, alpha: float) -> dict:
    """Holm-adjusted p-values written into `tests`; the two families' sizes. A bootstrap p that
    no resample resolved enters as its bound 2/(B+1) (paired.py): an adjusted p that comes from
    it is a bound too (`p_holm_bound`, holm.holm_bounded)."""
    macro = [t["macro_auroc"] for t in tests if t["macro_auroc"]["p"] is not None]
    adjusted = holm.holm_bounded([m["p"] for m in macro], [m["p_bound"] for m in macro])
    for entry, (value, bound) in zip(macro, adjusted):
        entry["p_holm"], entry["p_holm_bound"] = value, bound
        entry["significant"] = bool(value < alpha)
    per_class = [e for t in tests for e in t["per_class"].values()]
    for entry, adjusted in zip(per_class, holm.holm([e["p"] for e in per_class])):
        entry["p_holm"] = adjusted
    return {"macro": len(macro), "per_class": len(per_class)}


def build(models, cols, suite: dict, cells: dict, *, cache=None, log=lambda line: None) -> dict:
    """leaderboard.json's content (module docstring). `cache`: a leaderboard_tests.Cache whose
    results are reused (None: everything computed); `log` gets a progress line per panel."""
    cache = leaderboard_tests.Cache() if cache is None else cache
    random_row = benchmark_models.model_random_row(models)
    same = benchmark_models.same_models(models, suite["seed"])
    scores, panels, pending, not_applicable = [], [], [], []
    for column in cols:
        for protocol in suite["protocols"]:
            names = [m.name for m in models if (m.name, column.name, protocol) in cells]
            not_applicable += [{"model": m.name, "column": column.name, "protocol": protocol}
                               for m in models if m.name not in names]
            if not names:
                continue
            t0, reused = time.time(), cache.reused
            found, panel, found_tests = _column(column, protocol, names, cells, random_row,
                                                suite, cache)
            log(f"leaderboard: {column.name} / {protocol}: {len(names)} cells scored "
                f"({cache.reused - reused} reused) in {time.time() - t0:.1f} s")
            scores += found
            pending += found_tests
            panels.append(panel)
    tests, drawn = leaderboard_tests.run_tests(pending, suite, cache, log)
    n_resamples, n_permutations = drawn["test_resamples"], drawn["test_permutations"]
    sizes = _apply_holm(tests, suite["alpha"])
    _mark_best(panels, tests)
    return {
        "models": [{"name": m.name, "checkpoint": m.checkpoint, "filed_as": m.filed_as,
                    "random_of": m.random_of, "same_model": same.get(m.name),
                    "random_row": random_row[m.name],
                    "family": m.config.model.name} for m in models],
        "columns": [c.__dict__ for c in cols], "protocols": list(suite["protocols"]),
        "settings": {**{k: suite[k] for k in ("bootstrap", "alpha", "seed")},
                     "test_resamples": n_resamples, "test_permutations": n_permutations},
        "cells": scores, "panels": panels, "comparisons": tests,
        "not_applicable": not_applicable,
        "counts": {"statistics_computed": cache.computed, "statistics_reused": cache.reused},
        "tests": {"macro_auroc": leaderboard_tests.macro_text(sizes["macro"], n_resamples, suite),
                  "per_class": leaderboard_tests.per_class_text(sizes["per_class"],
                                                                n_permutations, suite["alpha"])}}


def plot(board: dict, path) -> None:
    """One panel per column x protocol: each model's macro AUROC with its CI, the best (bold in
    leaderboard.md) black."""
    plt = plots.pyplot()
    keys = [(p["column"], p["protocol"], p["best"]) for p in board["panels"]]
    names = [m["name"] for m in board["models"]]
    by_cell = {(s["model"], s["column"], s["protocol"]): s for s in board["cells"]}
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 1.2 + 0.4 * len(names)),
                             squeeze=False, sharey=True)
    level = report_markdown.level(board["settings"]["alpha"])
    for ax, (column, protocol, best) in zip(axes[0], keys):
        for y, name in enumerate(names[::-1]):
            s = by_cell.get((name, column, protocol))
            if s is None or s["macro_auroc"] is None:
                continue
            low = s["ci"]["low"] if s["ci"]["low"] is not None else s["macro_auroc"]
            high = s["ci"]["high"] if s["ci"]["high"] is not None else s["macro_auroc"]
            ax.errorbar(s["macro_auroc"], y, xerr=[[s["macro_auroc"] - low],
                                                   [high - s["macro_auroc"]]], fmt="o",
                        capsize=3, color="black" if name in best else "tab:blue")
        ax.set_yticks(range(len(names)), names[::-1], fontsize=8)
        ax.axvline(0.5, color="grey", ls="--", lw=1)
        ax.set(title=f"{column}\n{protocol}", xlabel=f"macro AUROC ({level} CI)")
        ax.title.set_fontsize(9)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def write_all(board: dict, workdir) -> None:
    report.write_json(board, workdir / "leaderboard.json")
    files.write_text_atomic(workdir / "leaderboard.md", leaderboard_markdown.markdown(board))
    files.write_atomic(workdir / "leaderboard.png", lambda tmp: plot(board, tmp))
