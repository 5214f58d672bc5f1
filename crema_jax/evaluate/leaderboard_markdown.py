"""leaderboard.md and what the benchmark prints: the leaderboard (benchmark_leaderboard.build's
dict) as Markdown (`markdown`: the ranking table, the panels, every paired test, the per-class
section, the models; names escaped, report_markdown.escape) and as plain text for the terminal
(`summary`: the ranking table, plain_table, and each panel's verdict). Its figures are written
as report.md's are (report_markdown.fmt, texts.p_text).
"""
from __future__ import annotations

from crema_jax.evaluate import paired, report_markdown, texts

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
