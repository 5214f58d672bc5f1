"""The benchmark's leaderboard, computed from the cells' saved predictions alone.

Per column x protocol (a panel): the records every model predicted (a record's windows
averaged, compare.common_records; records only some models read are left out and counted), each
model's macro AUROC and AUPRC over the classes scorable there, with a 1 - alpha bootstrap CI of
the macro AUROC over patients; the top model (highest macro AUROC; ties: the first listed);
then paired tests (paired.compare_predictions: per class a permutation test, its exchanges
enough for the table's Holm family (permutations_for), or DeLong's at 100 positives and
negatives; a paired bootstrap of the macro AUROC over patients) of every
model against the top one and against the random init of its architecture. Holm's correction
runs across the whole table: once over every macro AUROC comparison, once over every per-class
test. A difference is called significant where the Holm-adjusted p < alpha. The best of a
panel are the top model and every model whose test against it is not significant: a point
estimate alone had crowned one of two models tied to the fourth decimal (p = 1). Each panel
says what it scored: its records, classes, and the label fraction asked for and used
(protocols.labels_used).
"""
from __future__ import annotations

import math

import numpy as np

from crema_jax.evaluate import (benchmark_tasks, compare, holm, paired, permutation, plots,
                                report, report_markdown, scoring)
from crema_jax.runtime import files


def _per_record_truth(cell: dict, rows: np.ndarray):
    """(labels, patient key, record id) of each of `rows`, from a cell's per-example arrays."""
    first = {int(r): i for i, r in reversed(list(enumerate(cell["rows"])))}
    idx = np.asarray([first[int(r)] for r in rows], np.int64)
    return cell["labels"][idx], cell["group"][idx], cell["record_id"][idx]


def _score(labels, probs, groups, suite) -> dict:
    auprc = paired.MACRO_METRICS["macro_auprc"](labels > 0.5, probs)
    auroc = scoring.columnwise_auroc(labels, probs)
    ci = scoring.bootstrap_ci(labels, probs, n_resamples=suite["bootstrap"], seed=suite["seed"],
                              alpha=suite["alpha"], groups=groups)
    scored = np.isfinite(auroc)
    return {"macro_auroc": float(auroc[scored].mean()) if scored.any() else None,
            "macro_auprc": float(auprc[scored].mean()) if scored.any() else None,
            "ci": {"low": ci["low"], "high": ci["high"]}, "n_scored_classes": int(scored.sum())}


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


def _column(column, protocol, names, cells, random_row, suite):
    """(cells' scores, the panel, its paired tests to run: `_run_test`) of one column x
    protocol."""
    group = {n: cells[(n, column.name, protocol)] for n in names}
    classes = [str(c) for c in group[names[0]]["classes"]]
    common = compare.common_records(group, len(classes))
    labels, groups, _ = _per_record_truth(group[names[0]], common["rows"])
    scores = []
    for name in names:
        fields = group[name]["fields"]
        scores.append({"model": name, "column": column.name, "protocol": protocol,
                       "n": len(common["rows"]), "unpaired": common["unpaired"][name],
                       "n_train": fields.get("n_train"), "n_val": fields.get("n_val"),
                       **_score(labels, common["probs"][name], groups, suite)})
    ranked = [s for s in scores if s["macro_auroc"] is not None]
    best = max(ranked, key=lambda s: s["macro_auroc"])["model"] if ranked else None
    pending = [dict(column=column.name, protocol=protocol, model=name, reference=ref,
                    against=against, labels=labels, a=common["probs"][name],
                    b=common["probs"][ref], classes=classes, groups=groups)
               for name, ref, against in (_references(names, best, random_row) if best else [])]
    return scores, _panel(column, protocol, group, scores, best), pending


def permutations_for(pending: list, alpha: float) -> int:
    """The exchanges each per-class permutation test draws: permutation.enough_for the table's
    per-class Holm family (at most one test per class of each pending comparison)."""
    return permutation.enough_for(sum(len(t["classes"]) for t in pending), alpha)


# The most resamples the paired tests draw unless the task file's bootstrap asks for more.
RESAMPLES_CAP = 19_999


def resamples_for(pending: list, suite: dict) -> int:
    """The resamples of each paired bootstrap: the task file's `bootstrap`, raised so that
    Holm's correction over the table's m macro comparisons can reach alpha / 2 with the
    smallest p a bootstrap gives, its bound 2 / (B + 1): B + 1 >= 4 m / alpha, raised to at
    most RESAMPLES_CAP. With 500 resamples and 40 comparisons no model could be called worse
    (40 x 2 / 501 = 0.16)."""
    needed = math.ceil(4 * len(pending) / suite["alpha"]) - 1
    return int(max(suite["bootstrap"], min(RESAMPLES_CAP, needed)))



def _run_test(t: dict, suite: dict, n_resamples: int, n_permutations: int) -> dict:
    """One pending paired test (`_column`) run and reduced to what the table keeps."""
    test = paired.compare_predictions(t["labels"], t["a"], t["b"], t["classes"],
                                      groups=t["groups"], alpha=suite["alpha"],
                                      n_resamples=n_resamples, seed=suite["seed"],
                                      n_permutations=n_permutations)
    macro = test["macro_auroc"]
    return {**{k: t[k] for k in ("column", "protocol", "model", "reference", "against")},
            "macro_auroc": {k: macro[k] for k in ("a", "b", "difference", "ci", "p", "p_bound")},
            "per_class": {c: {"difference": e["difference"], "p": e["p"], "test": e["test"]}
                          for c, e in test["per_class"].items()
                          if e.get("p") is not None and not e["not_testable"]}}


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


def build(models, cols, suite: dict, cells: dict) -> dict:
    """leaderboard.json's content (module docstring)."""
    random_row = benchmark_tasks.model_random_row(models)
    same = benchmark_tasks.same_models(models, suite["seed"])
    scores, panels, pending, not_applicable = [], [], [], []
    for column in cols:
        for protocol in suite["protocols"]:
            names = [m.name for m in models if (m.name, column.name, protocol) in cells]
            not_applicable += [{"model": m.name, "column": column.name, "protocol": protocol}
                               for m in models if m.name not in names]
            if not names:
                continue
            found, panel, found_tests = _column(column, protocol, names, cells, random_row,
                                                suite)
            scores += found
            pending += found_tests
            panels.append(panel)
    n_permutations = permutations_for(pending, suite["alpha"])
    n_resamples = resamples_for(pending, suite)
    tests = [_run_test(t, suite, n_resamples, n_permutations) for t in pending]
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
        "tests": {"macro_auroc": _macro_text(sizes["macro"], n_resamples, suite),
                  "per_class": _per_class_text(sizes["per_class"], n_permutations,
                                               suite["alpha"])}}


def _macro_text(m: int, b: int, suite: dict) -> str:
    """What the macro tests were: their resamples (raised from the task file's for Holm's
    family, resamples_for), and the smallest adjusted p a bound can give where the cap leaves
    it above alpha / 2."""
    raised = (f", raised from the task file's {suite['bootstrap']} so that Holm's correction "
              f"can reach alpha" if b > suite["bootstrap"] else "")
    text = (f"paired bootstrap of the macro AUROC difference over patients ({b} resamples"
            f"{raised}; seed {suite['seed']}: a p no resample resolves is the bound "
            f"2/{b + 1}, shown as < and entering Holm's correction at that value: an adjusted "
            f"p it decides is a bound too); Holm's correction over the {m} comparisons of the "
            f"table")
    floor = m * 2 / (b + 1)
    if floor > suite["alpha"] / 2:
        needed = math.ceil(4 * m / suite["alpha"]) - 1
        text += (f" (an adjusted p is at least {floor:.2g}: more comparisons than {b} "
                 f"resamples resolve; set the task file's bootstrap to {needed} or more)")
    return text


def _per_class_text(m: int, n_permutations: int, alpha: float) -> str:
    """What the per-class tests were, and the smallest Holm-adjusted p a permutation p can
    give (m / (n + 1)) where the cap on exchanges leaves it above alpha / 2."""
    text = (f"each class's AUROC difference by a paired permutation test ({n_permutations} "
            f"exchanges of the models' ranks within patients), DeLong's test at "
            f"{paired.PERMUTATION_BELOW} positives and negatives; Holm's correction over the "
            f"{m} per-class tests of the table")
    floor = m / (n_permutations + 1)
    if floor > alpha / 2:
        text += (f" (a permutation-tested class's adjusted p is at least {floor:.2g}: more "
                 f"tests than {n_permutations} exchanges resolve)")
    return text


def _p(value, bound: str | None = None) -> str:
    return report_markdown.p_text({"p": value, "p_bound": bound})


def decimals(values, least: int = 3, most: int = 6) -> int:
    """The fewest decimals (least..most) at which values that differ (at `most` decimals)
    print differently: 0.5578986 and 0.5578826 are both 0.558, and 0.55790 and 0.55788."""
    values = [v for v in values if v is not None]
    distinct = len({f"{v:.{most}f}" for v in values})
    for digits in range(least, most):
        if len({f"{v:.{digits}f}" for v in values}) == distinct:
            return digits
    return most


def _table(board: dict) -> list[str]:
    """The leaderboard's table: a column per panel, a row per model."""
    panels = board["panels"]
    by_cell = {(s["model"], s["column"], s["protocol"]): s for s in board["cells"]}
    worse = {(t["model"], t["column"], t["protocol"]) for t in board["comparisons"]
             if "best" in t["against"] and t["macro_auroc"].get("significant")}
    lines = ["| model | " + " | ".join(f"{p['column']} / {p['protocol']}" for p in panels)
             + " |", "|---|" + "---|" * len(panels)]
    places = [decimals([s["macro_auroc"] for s in board["cells"]
                        if (s["column"], s["protocol"]) == (p["column"], p["protocol"])])
              for p in panels]
    for model in board["models"]:
        row = []
        for panel, digits in zip(panels, places):
            key = (model["name"], panel["column"], panel["protocol"])
            s = by_cell.get(key)
            if s is None or s["macro_auroc"] is None:
                row.append(report_markdown.DASH)
                continue
            ci = s["ci"]
            text = (f"{s['macro_auroc']:.{digits}f} [{report_markdown.fmt(ci['low'])}, "
                    f"{report_markdown.fmt(ci['high'])}]")
            text = f"**{text}**" if model["name"] in panel["best"] else text
            row.append(text + ("\\*" if key in worse else ""))
        lines.append(f"| {model['name']} | " + " | ".join(row) + " |")
    return lines


def _panels_table(board: dict) -> list[str]:
    """What each column x protocol scored: its leads, the label fraction asked for and used,
    its test records and classes."""
    lines = ["| column | protocol | leads | label fraction (used: labelled of training "
             "records) | test records | classes |", "|---|---|---|---|---|---|"]
    for p in board["panels"]:
        lines.append(f"| {p['column']} | {p['protocol']} | {p['leads']} | "
                     f"{report_markdown.labels_used_text(p['label_fraction'], p)} | {p['n']} | "
                     f"{p['n_classes']} |")
    return lines


def markdown(board: dict) -> str:
    level = report_markdown.level(board['settings']['alpha'])
    lines = ["# Benchmark leaderboard", "",
             (f"Macro AUROC [{level} CI over patients]; **bold**: the best (highest macro "
              "AUROC), or not distinguishable from it (its paired test against the best: "
              "Holm-adjusted p >= alpha); \\*: below the best after Holm's correction; —: not "
              "applicable. A column's macro AUROCs get more decimals where two that differ "
              "would print alike."), "",
             *_table(board), "",
             *[f"Note: {m['same_model']}." for m in board["models"] if m["same_model"]],
             *([""] if any(m["same_model"] for m in board["models"]) else []),
             "Label fractions: at least one positive of every class trains, so a small "
             "fraction can use more records than it names; with folds the records are means "
             "per fold.", "", *_panels_table(board),
             "", "## Paired tests", "", f"- macro AUROC: {board['tests']['macro_auroc']}",
              f"- per class: {board['tests']['per_class']}", "",
              ("| column | protocol | model | against | reference | Δ macro AUROC | "
               f"{level} CI | p | p (Holm) |"), "|---|---|---|---|---|---|---|---|---|"]
    for t in board["comparisons"]:
        m = t["macro_auroc"]
        lines.append(f"| {t['column']} | {t['protocol']} | {t['model']} | "
                     f"{' and '.join(t['against'])} | {t['reference']} | "
                     f"{report_markdown.fmt(m['difference'])} | "
                     f"[{report_markdown.fmt(m['ci']['low'])}, "
                     f"{report_markdown.fmt(m['ci']['high'])}] | {_p(m['p'], m['p_bound'])} | "
                     f"{_p(m.get('p_holm'), m.get('p_holm_bound'))} |")
    lines += ["", "## Models", ""] + [
        f"- {m['name']}: {m['family']}, {m['checkpoint']}"
        + (f" (the random init, seed {board['settings']['seed']}, of {m['random_of']})"
           if m["random_of"] else "")
        for m in board["models"]]
    return "\n".join(lines) + "\n"


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
    files.write_json_atomic(workdir / "leaderboard.json", report.json_safe(board))
    files.write_text_atomic(workdir / "leaderboard.md", markdown(board))
    files.write_atomic(workdir / "leaderboard.png", lambda tmp: plot(board, tmp))
