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
leaderboard_tests.py, which caches them. leaderboard.md: the table, the panels, every paired
test, and per panel each class's counts, each model's AUROC and its test against the top one;
`summary`: what the benchmark prints, the table and each panel's verdict.
"""
from __future__ import annotations

import time

import numpy as np

from crema_jax.evaluate import (benchmark_tasks, compare, holm, leaderboard_tests, paired, plots,
                                report, report_markdown, scoring, texts)
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


# How the terminal's table marks the best and those below it (leaderboard.md: bold and \*).
PLAIN_BEST, PLAIN_BELOW = " +", " *"


def _p(value, bound: str | None = None) -> str:
    return texts.p_text({"p": value, "p_bound": bound})


def decimals(values, least: int = 3, most: int = 6) -> int:
    """The fewest decimals (least..most) at which values that differ (at `most` decimals)
    print differently: 0.5578986 and 0.5578826 are both 0.558, and 0.55790 and 0.55788."""
    values = [v for v in values if v is not None]
    distinct = len({f"{v:.{most}f}" for v in values})
    for digits in range(least, most):
        if len({f"{v:.{digits}f}" for v in values}) == distinct:
            return digits
    return most


def _ranking(board: dict) -> tuple[list[str], list[tuple[str, list]]]:
    """The ranking table's panels (column, protocol) and per model its name and, per panel, None
    (not applicable) or (macro AUROC [CI], best, below the best after Holm's correction)."""
    panels = board["panels"]
    by_cell = {(s["model"], s["column"], s["protocol"]): s for s in board["cells"]}
    worse = {(t["model"], t["column"], t["protocol"]) for t in board["comparisons"]
             if "best" in t["against"] and t["macro_auroc"].get("significant")}
    places = [decimals([s["macro_auroc"] for s in board["cells"]
                        if (s["column"], s["protocol"]) == (p["column"], p["protocol"])])
              for p in panels]
    rows = []
    for model in board["models"]:
        row = []
        for panel, digits in zip(panels, places):
            key = (model["name"], panel["column"], panel["protocol"])
            s = by_cell.get(key)
            ci = s["ci"] if s is not None and s["macro_auroc"] is not None else None
            row.append(None if ci is None else (
                f"{s['macro_auroc']:.{digits}f} [{report_markdown.fmt(ci['low'])}, "
                f"{report_markdown.fmt(ci['high'])}]", model["name"] in panel["best"],
                key in worse))
        rows.append((model["name"], row))
    return [(p["column"], p["protocol"]) for p in panels], rows


def _table(board: dict) -> list[str]:
    """The leaderboard's table in Markdown: a column per panel, a row per model; the best bold,
    those below it \\*, names escaped (report_markdown.escape)."""
    panels, rows = _ranking(board)
    lines = ["| model | " + " | ".join(f"{report_markdown.escape(column)} / {protocol}"
                                       for column, protocol in panels) + " |",
             "|---|" + "---|" * len(panels)]
    for name, row in rows:
        cells = [texts.DASH if c is None else (f"**{c[0]}**" if c[1] else c[0])
                 + ("\\*" if c[2] else "") for c in row]
        lines.append(f"| {report_markdown.escape(name)} | " + " | ".join(cells) + " |")
    return lines


def plain_table(board: dict) -> list[str]:
    """The leaderboard's table as the terminal shows it: a legend, then aligned columns, names
    as given; PLAIN_BEST marks the best (bold in leaderboard.md), PLAIN_BELOW those below it.
    The Markdown table's escapes had been printed (`\\*`, and `**` round the best)."""
    panels, rows = _ranking(board)
    table = [["model", *[f"{column} / {protocol}" for column, protocol in panels]]]
    table += [[name, *[texts.DASH if c is None else c[0] + (PLAIN_BEST if c[1] else "")
                       + (PLAIN_BELOW if c[2] else "") for c in row]] for name, row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    level = report_markdown.level(board["settings"]["alpha"])
    return [f"macro AUROC [{level} CI over patients]",
            f"{PLAIN_BEST.strip()}: the best, or not distinguishable from it; "
            f"{PLAIN_BELOW.strip()}: below the best after Holm's correction; {texts.DASH}: not "
            "applicable",
            *["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in table]]


def _panels_table(board: dict) -> list[str]:
    """What each column x protocol scored: its leads, the label fraction asked for and used,
    its test records and classes."""
    lines = ["| column | protocol | leads | label fraction (used: labelled of training "
             "records) | test records | classes |", "|---|---|---|---|---|---|"]
    for p in board["panels"]:
        lines.append(f"| {report_markdown.escape(p['column'])} | {p['protocol']} | {p['leads']} | "
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
             *[f"Note: {report_markdown.escape(m['same_model'])}." for m in board["models"]
               if m["same_model"]],
             *([""] if any(m["same_model"] for m in board["models"]) else []),
             "Label fractions: at least one positive of every class trains, so a small "
             "fraction can use more records than it names; with folds the records are means "
             "per fold.", "", *_panels_table(board),
             "", "## Paired tests", "", f"- macro AUROC: {board['tests']['macro_auroc']}",
              f"- per class: {board['tests']['per_class']}", "",
              ("| column | protocol | model | against | reference | Δ macro AUROC | "
               f"{level} CI | p | p (Holm) |"), "|---|---|---|---|---|---|---|---|---|"]
    name = report_markdown.escape
    for t in board["comparisons"]:
        m = t["macro_auroc"]
        lines.append(f"| {name(t['column'])} | {t['protocol']} | {name(t['model'])} | "
                     f"{' and '.join(t['against'])} | {name(t['reference'])} | "
                     f"{report_markdown.fmt(m['difference'])} | "
                     f"[{report_markdown.fmt(m['ci']['low'])}, "
                     f"{report_markdown.fmt(m['ci']['high'])}] | {_p(m['p'], m['p_bound'])} | "
                     f"{_p(m.get('p_holm'), m.get('p_holm_bound'))} |")
    lines += ["", *_per_class_section(board), "## Models", ""] + [
        f"- {name(m['name'])}: {name(m['family'])}, {name(m['checkpoint'])}"
        + (f" (the random init, seed {board['settings']['seed']}, of {name(m['random_of'])})"
           if m["random_of"] else "")
        for m in board["models"]]
    return "\n".join(lines) + "\n"


def _against_top(test: dict | None, alpha: float) -> str:
    """A model's per-class test against its panel's top model, as a cell of the per-class
    table: its Holm-adjusted p, and "below" / "above" where that p < alpha."""
    if test is None or test.get("p_holm") is None:
        return ""
    side = (", below" if test["difference"] < 0 else ", above"
            if test["difference"] > 0 else "") if test["p_holm"] < alpha else ""
    return f" (p {_p(test['p_holm'])}{side})"


def _per_class_section(board: dict) -> list[str]:
    """## Per class: a table per panel, a row per class: its test positives / negatives, the
    test its comparisons used, each model's AUROC and its test against the top model."""
    alpha = board["settings"]["alpha"]
    lines = ["## Per class", "",
             "Each panel's classes: positives / negatives among its test records, each model's "
             "AUROC and, beside it, its paired test of that class against the panel's top model "
             "(column test: DeLong's, or the permutation test below "
             f"{paired.PERMUTATION_BELOW} positives or negatives): the p after Holm's "
             "correction over the table's per-class tests; below / above: that p < alpha. No p: "
             "the class could not be tested (too few positives or negatives). Each model's "
             "tests against its random init are in leaderboard.json (comparisons[].per_class).",
             ""]
    by_cell = {(s["model"], s["column"], s["protocol"]): s for s in board["cells"]}
    for panel in board["panels"]:
        key = (panel["column"], panel["protocol"])
        names = [m["name"] for m in board["models"] if (m["name"], *key) in by_cell]
        against = {t["model"]: t["per_class"] for t in board["comparisons"]
                   if (t["column"], t["protocol"]) == key and "best" in t["against"]
                   and t["reference"] == panel["top"]}
        lines += [f"### {report_markdown.escape(panel['column'])} / {panel['protocol']}", "",
                  "| class | positives / negatives | test | " + " | ".join(
                      report_markdown.escape(n) + (" (top)" if n == panel["top"] else "")
                      for n in names) + " |",
                  "|---|---|---|" + "---|" * len(names)]
        for name, counts in panel["class_counts"].items():
            tests = [against[n][name] for n in names if name in against.get(n, {})]
            row = [report_markdown.escape(name), f"{counts['positives']} / {counts['negatives']}",
                   report_markdown.TEST_NAMES[tests[0]["test"]] if tests else texts.DASH]
            row += [report_markdown.fmt(by_cell[(n, *key)]["auroc"].get(name))
                    + _against_top(against.get(n, {}).get(name), alpha) for n in names]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return lines


def summary(board: dict) -> list[str]:
    """What the benchmark prints, plain text: the ranking table (plain_table), then per panel
    its top model, the models not distinguishable from it and those below it, and each model
    against its random init."""
    random_row = {m["name"]: m["random_row"] for m in board["models"]}
    lines = [*plain_table(board), ""]
    for panel in board["panels"]:
        key = (panel["column"], panel["protocol"])
        name = f"{panel['column']} / {panel['protocol']}"
        if panel["top"] is None:
            lines.append(f"{name}: no model could be scored")
            continue
        tests = [t for t in board["comparisons"] if (t["column"], t["protocol"]) == key]
        top = next(s for s in board["cells"] if (s["model"], s["column"], s["protocol"])
                   == (panel["top"], *key))
        below = [t["model"] for t in tests if "best" in t["against"]
                 and t["macro_auroc"].get("significant")]
        lines.append(f"{name}: top {panel['top']} ({report_markdown.fmt(top['macro_auroc'])}); "
                     f"not distinguishable from it: {', '.join(panel['best'][1:]) or 'none'}; "
                     f"below it: {', '.join(below) or 'none'}")
        for t in tests:
            if "random init" not in t["against"]:
                continue
            m, flip = t["macro_auroc"], random_row[t["model"]] != t["reference"]
            model, init = (t["reference"], t["model"]) if flip else (t["model"], t["reference"])
            difference = -m["difference"] if flip else m["difference"]
            verdict = ("above it" if difference > 0 else "below it") if m.get("significant") \
                else "not distinguishable from it"
            lines.append(f"  {model} vs its random init {init}: "
                         f"{report_markdown.fmt(difference)} macro AUROC, p (Holm) "
                         f"{_p(m.get('p_holm'), m.get('p_holm_bound'))}: {verdict}")
    return lines


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
    files.write_text_atomic(workdir / "leaderboard.md", markdown(board))
    files.write_atomic(workdir / "leaderboard.png", lambda tmp: plot(board, tmp))
