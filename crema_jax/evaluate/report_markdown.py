"""report.md: an evaluation report (report.py's dict) as Markdown tables (`markdown`: every
name in it escaped, `escape`), what compare prints of it as plain text (`summary`), and the
texts every table of figures shares (fmt, level, labels_used_text, escape; the leaderboard's
too; p-values, the drop test's left-out classes and the same-model note: texts.py).

Missing values (classes that could not be scored, undefined CIs) are an em dash (texts.DASH).
"""
from __future__ import annotations

import re

import numpy as np

from crema_jax.evaluate import paired, scoring
from crema_jax.evaluate.texts import DASH, below_floor_text, p_text, same_model_text


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


# The characters Markdown reads in running text or a table cell (emphasis, code, links, HTML,
# headings, strikethrough, the cell bar): a name holding one is written with it escaped.
_MARKDOWN_SPECIAL = frozenset("\\`*_[]<|~#")


def escape(name) -> str:
    """A name (a model, column, class, checkpoint path) as Markdown shows it as written: each of
    its characters Markdown reads backslash-escaped ("ISC_" -> "ISC\\_", "a|b" -> "a\\|b",
    which had split a table row in two cells). Only for Markdown: a terminal shows the name."""
    return "".join("\\" + c if c in _MARKDOWN_SPECIAL else c for c in str(name))


def _code(value) -> str:
    """A value as inline code, shown as written: fenced by more backticks than it holds in a
    row (backslashes do not escape inside code)."""
    text = str(value)
    fence = "`" * (max(map(len, re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _ci(ci: dict | None) -> str:
    if not ci or ci.get("low") is None:
        return DASH
    return f"[{fmt(ci['low'])}, {fmt(ci['high'])}]"


def display(report: dict, name: str) -> str:
    """'PAC (284470004)' when the report has a readable name for a class code."""
    readable = report.get("class_display", {}).get(name)
    return f"{readable} ({name})" if readable else name


def _class(report: dict, name: str) -> str:
    """A class as report.md's tables name it: display, escaped."""
    return escape(display(report, name))


def _fold_spread(run: dict) -> str:
    spread = run.get("fold_summary", {}).get("macro_auroc")
    if not spread or spread["mean"] is None:
        return DASH
    return f"{spread['mean']:.3f} ± {fmt(spread['std'])}"


def level(alpha: float) -> str:
    return f"{100 * (1 - alpha):g}%"


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
        skipped = ", ".join(f"{_class(report, s['class'])}: {s['reason'].replace('_', ' ')}"
                            for s in test["skipped"]) or DASH
        lines.append(
            f"| {escape(run['name'])} | {escape(run['model'])} | "
            f"{escape(run['protocol']['leads'])} | "
            f"{labels_used_text(run['protocol']['label_fraction'], run)} | "
            f"{run['n_train']:g} | {test['n']} | "
            f"{fmt(test['macro_auroc'])} | {_ci(test.get('ci'))} | {_fold_spread(run)} | "
            f"{fmt(test['macro_auprc'])} | {fmt(test['macro_f1'])} | {skipped} |")
    lines.append("")
    for run in runs:
        if run.get("folds") and run["protocol"] == runs[0]["protocol"]:
            lines += [f"### Folds of {escape(run['name'])} (model {escape(run['model'])})", "",
                      "| fold | labels used | train | val | test | macro AUROC | macro AUPRC "
                      "| macro F1 |", "|---|---|---|---|---|---|---|---|"]
            lines += [f"| {f['fold']} | "
                      f"{labels_used_text(run['protocol']['label_fraction'], f)} | "
                      f"{f['n_train']} | {f['n_val']} | {f['test']['n']} | "
                      f"{fmt(f['test']['macro_auroc'])} | {fmt(f['test']['macro_auprc'])} | "
                      f"{fmt(f['test']['macro_f1'])} |" for f in run["folds"]]
            lines.append("")
    head = runs[0]
    lines += [f"## Per class ({escape(head['name'])}, model {escape(head['model'])}"
              f"{_labels_note(report, head['name'])})", "",
              "| class | test positives | AUROC | AUPRC | F1 | threshold (val) |",
              "|---|---|---|---|---|---|"]
    for name, e in head["test"]["per_class"].items():
        lines.append(f"| {_class(report, name)} | {e['n_pos']}/{e['n_pos'] + e['n_neg']} "
                     f"| {fmt(e['auroc'])} | {fmt(e['auprc'])} | {fmt(e['f1'])} "
                     f"| {fmt(e['threshold'])} |")
    return lines + [""]


def _comparison_markdown(report: dict, comparison: dict) -> list[str]:
    lines = [f"## A vs B: {escape(comparison['run'])}", "",
             f"**{escape(comparison['verdict'])}** (macro AUROC, paired bootstrap over "
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
              "| p | test | p (Holm) | verdict (Holm) |", "|---" * 10 + "|"]
    for name, c in comparison["per_class"].items():
        if "skipped" in c:
            lines.append(f"| {_class(report, name)} | {DASH} | {DASH} | {DASH} | {DASH} | "
                         f"{DASH} | {DASH} | {DASH} | {DASH} | {c['skipped'].replace('_', ' ')} |")
            continue
        lines.append(f"| {_class(report, name)} | {c['n_pos']}/{c['n_pos'] + c['n_neg']} | "
                     f"{fmt(c['auroc_a'])} | {fmt(c['auroc_b'])} | {fmt(c['difference'])} "
                     f"| {_ci(c['ci'])} | {p_text(c)} | {TEST_NAMES[c.get('test', 'delong')]} "
                     f"| {p_text({'p': c.get('p_holm')})} "
                     f"| {escape(c['verdict'])} |")
    return lines + [""]


# A class's test as report.md names it (paired.class_test's `test`).
TEST_NAMES = {"delong": "DeLong", "permutation": "permutation"}


def _holm_note(tests: int | None) -> str:
    """The line above a comparison's per-class table: which test gave each p, and how many
    classes Holm's correction ran over (`per_class_tests`; a comparison without it had printed
    "over the None classes")."""
    which = (f"Per class: a paired permutation test (ranks exchanged within patients) where a "
             f"class has fewer than {paired.PERMUTATION_BELOW} positives or negatives, DeLong's "
             f"test above (column test; the CI is DeLong's either way)")
    if tests == 0:
        return f"{which}; no class tested here (each verdict says why)."
    over = "the classes" if tests is None else f"the {tests} classes"
    return (f"{which}; each verdict is decided on the p after Holm's correction over {over} "
            f"tested here (p (Holm)), the raw p beside it.")


def markdown(report: dict) -> str:
    """The report as Markdown tables: models, runs, folds, per-class figures, cross-domain
    drops, and the paired comparisons of two models."""
    lines = [f"# {escape(report.get('title', 'Evaluation'))}", ""]
    settings = report.get("settings", {})
    if settings:
        lines += [", ".join(f"{k}: {_code(v)}" for k, v in settings.items()), ""]
    lines += _models_markdown(report.get("models", {}))
    if report.get("records"):
        lines += _records_markdown(report)
    if report.get("runs"):
        lines += _runs_markdown(report)
    by_loss = chosen_by_loss(report)
    if by_loss:
        lines += [f"**Chosen by validation loss alone**: {escape(', '.join(by_loss))}: no "
                  "class was scorable on their validation records (none had both a positive "
                  "and a negative), so the L2 strength or epoch was chosen by validation loss, "
                  "not validation macro AUROC.", ""]
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
                    f"| {escape(entry['model'])} | {escape(entry['train_source'])} | "
                    f"{escape(other)} | "
                    f"{fmt(drop['in_domain'])} | {fmt(drop['out_of_domain'])} | "
                    f"{fmt(drop['drop'])} | {len(drop['classes'])} | "
                    f"{fmt(entry['out_of_domain'][other]['macro_auroc'])} |")
        lines.append("")
        left_out = [f"{n} of {other} (model {e['model']}, trained on {e['train_source']})"
                    for e in cross for other, n in e.get("out_of_domain_left_out", {}).items()
                    if n]
        if left_out:
            lines += ["**Left out of out-of-domain tests** (records of patients the head trained "
                      f"or was selected on): {escape('; '.join(left_out))}.", ""]
    drops = report.get("cross_domain_comparisons", [])
    if drops:
        lines += ["## Robustness: the drop of A vs the drop of B (paired bootstrap)", "",
                  "| train source | test source | drop A | drop B | A − B "
                  f"| {level(drops[0]['alpha'])} CI | p | verdict | classes below the floor |",
                  "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {escape(d['train_source'])} | {escape(d['test_source'])} | "
                  f"{fmt(d['drop_a'])} | {fmt(d['drop_b'])} | {fmt(d['difference'])} | "
                  f"{_ci(d['ci'])} | {p_text(d)} | {escape(d['verdict'])} | "
                  f"{_below_floor(report, d)} |" for d in drops]
        lines.append("")
    return "\n".join(lines)


def summary(report: dict) -> list[str]:
    """What compare prints, plain text (report.md's figures, names as given, no Markdown): its
    title, then per comparison its verdict and macro AUROCs (A, B, A − B with its CI and p), per
    drop comparison its verdict and drops."""
    lines = [report.get("title", "Evaluation")]
    for c in report.get("comparisons", []):
        m = c["macro_auroc"]
        lines.append(f"{c['run']}: {c['verdict']} (macro AUROC A {fmt(m['a'])}, B {fmt(m['b'])}, "
                     f"A − B {fmt(m['difference'])}, {level(c['alpha'])} CI {_ci(m['ci'])}, "
                     f"p {p_text(m)}; {c['n']} records)")
    for d in report.get("cross_domain_comparisons", []):
        lines.append(f"drop {d['train_source']} -> {d['test_source']}: {d['verdict']} (drop A "
                     f"{fmt(d['drop_a'])}, B {fmt(d['drop_b'])}, A − B {fmt(d['difference'])}, "
                     f"{level(d['alpha'])} CI {_ci(d['ci'])}, p {p_text(d)})")
    return lines


def _below_floor(report: dict, drop: dict) -> str:
    """The classes a drop test left out for too few patients (texts.below_floor_text)."""
    below = [below_floor_text({**b, "class": display(report, b["class"])})
             for b in drop.get("classes_below_floor", [])]
    return escape("; ".join(below)) or DASH


def _models_markdown(models: dict) -> list[str]:
    """The models table; under it, when compare's B is A (`same_as_A`), the note compare
    prints (texts.same_model_text): every difference below is 0 by construction."""
    if not models:
        return []
    lines = ["| model | checkpoint | backbone | data path and crops | crop averaging |",
             "|---|---|---|---|---|"]
    lines += [f"| {escape(label)} | {escape(m['checkpoint'])} | {escape(m['backbone'])} | "
              f"{escape(m['data'])} | {escape(m['crop_averaging'])} |"
              for label, m in models.items()]
    if models.get("B", {}).get("same_as_A"):
        seed = models["A"].get("init_seed")
        lines += ["", f"**Note**: {escape(same_model_text(seed is not None, seed))}."]
    return lines + [""]


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
