"""The leaderboard on made-up predictions (no model runs): Holm's correction of p-values some
of which are bootstrap bounds, worked by hand; the best of a column (the top model and those
not distinguishable from it), the decimals that tell two values apart, what a column's label
fraction used, the level of its CIs; the per-class section and the printed summary, recomputed
with scikit-learn; the cache of its statistics, keyed by every input and setting."""
import json
import re

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from crema_jax.evaluate import benchmark_leaderboard, holm, leaderboard_markdown, leaderboard_tests


def test_an_adjusted_p_inherits_the_bound_of_the_raw_p_it_comes_from():
    # m = 5, sorted as given. Terms (m - j + 1) p_(j): 5 x 2/1001 = 0.00999 (a bound: the true
    # p is below 2/1001), 4 x 0.002 = 0.008, 3 x 0.03 = 0.09, 2 x 0.04 = 0.08, 1 x 0.5 = 0.5;
    # running max 0.00999, 0.00999, 0.09, 0.09, 0.5. The second p is exact but its adjusted
    # value is the first's term: a bound too.
    got = holm.holm_bounded([2 / 1001, 2 / 1000, 0.03, 0.04, 0.5], ["<", None, None, None, None])
    assert [v for v, _ in got] == pytest.approx([10 / 1001, 10 / 1001, 0.09, 0.09, 0.5],
                                                abs=1e-15)
    assert [b for _, b in got] == ["<", "<", None, None, None]
    texts = [leaderboard_markdown._p(v, b) for v, b in got]
    assert texts == ["< 0.01", "< 0.01", "0.090", "0.090", "0.500"]


def test_an_exact_term_above_a_bound_gives_an_exact_adjusted_p():
    # terms 3 x 0.002 = 0.006 (bound), 2 x 0.01 = 0.02, 1 x 0.02 = 0.02.
    got = holm.holm_bounded([0.002, 0.01, 0.02], ["<", None, None])
    assert got == [(pytest.approx(0.006, abs=1e-15), "<"), (pytest.approx(0.02, abs=1e-15), None),
                   (pytest.approx(0.02, abs=1e-15), None)]


def test_a_capped_or_displaceable_bound_is_at_most_rather_than_below():
    # terms 2 x 0.6 = 1.2 -> 1 (a bound, capped: the true p could give anything up to 1),
    # 1 x 0.7: both adjusted values are 1, at most.
    assert holm.holm_bounded([0.6, 0.7], ["<", None]) == [(1.0, "<="), (1.0, "<=")]
    assert leaderboard_markdown._p(1.0, "<=") == "≤ 1"
    # An exact 0.002 sorts before the bound 0.0021 (two tests of other valid resample counts);
    # the true p of the bound may sort first: 0.002's adjusted value is 2 x 0.002 = 0.004 or
    # as low as 1 x 0.002, so at most 0.004.
    got = holm.holm_bounded([0.0021, 0.002], ["<", None])
    assert got == [(pytest.approx(0.004, abs=1e-15), "<="), (pytest.approx(0.004, abs=1e-15), "<=")]
    assert holm.holm_bounded([], []) == []
    # A tie: the bound 0.02 ("<") and the exact 0.03 both give the term 0.06. The exact one's
    # is reached whatever the bound's true p: 0.03's adjusted value is 0.06 unless the bound
    # 0.5 turns out below it (then less), at most 0.06, never "below 0.06"; the bound's own
    # adjusted value, its term 3 x p < 0.06, is below.
    got = holm.holm_bounded([0.03, 0.02, 0.5], [None, "<", "<"])
    assert [b for _, b in got][:2] == ["<=", "<"]
    assert [v for v, _ in got][:2] == pytest.approx([0.06, 0.06], abs=1e-15)
    # A tie on the bootstrap grid k/(B + 1), where the two products differ by one ulp: the
    # bound 1/1000 first (9 x 1/1000 = 0.009000000000000001), the exact 9/1000 last (1 x 9/1000
    # = 0.009), the exact 1/1000s between (8 x ... 2 x 1/1000, below): the last adjusted p is
    # its own term, exactly, however low the bound's true p.
    p = [1 / 1000] * 8 + [9 / 1000]
    got = holm.holm_bounded(p, ["<"] + [None] * 8)
    assert got[-1] == (pytest.approx(0.009, abs=1e-15), None)
    with pytest.raises(ValueError, match=r"bounds \['>'\]: expected one None or '<' per p-value"):
        holm.holm_bounded([0.1], [">"])


def _board(alpha=0.05, cache=None, log=lambda line: None, names=None, column="rhythm"):
    """A leaderboard of made-up cells: 60 records (each its own patient), 3 classes; model a
    informative, b = a but for one score (macro AUROCs 1/2400 apart), c and random:a
    uninformative. The cells' fields: a 5-fold run whose 0.1 of 27 training records drew 24 of
    135 (4.8 a fold). `names`: {a, b or c: another name for it}; `column`: the column's name."""
    import numpy as np

    from crema_jax.evaluate import benchmark_models, benchmark_tasks
    from tests.configs import tiny_config

    rng = np.random.default_rng(1)   # a seed at which a and b print alike at three decimals
    n = 60
    labels = np.zeros((n, 3), np.float32)
    labels[np.arange(n), np.arange(n) % 3] = 1
    a = 0.5 * labels + rng.random((n, 3))
    b = a.copy()   # one pair of class 0 ranked the other way round: its AUROC 1/800 apart
    pos, neg = np.flatnonzero(labels[:, 0]), np.flatnonzero(labels[:, 0] == 0)
    gap = a[pos, 0][:, None] - a[neg, 0][None, :]
    i, j = np.unravel_index(np.argmin(np.where(gap > 0, gap, np.inf)), gap.shape)
    b[pos[i], 0] = a[neg[j], 0] - 1e-9
    probs = {"a": a, "b": b, "c": rng.random((n, 3)), "random:a": rng.random((n, 3))}
    probs = {(names or {}).get(name, name): p for name, p in probs.items()}
    config = tiny_config()
    models = [benchmark_models.Model(name, "random" if name == "random:a" else f"/ckpt/{name}",
                                    config, None if name == "random:a" else {"w": 1})
              for name in probs]
    column = benchmark_tasks.Column(column, "rhythm", "d", "12", 0.1, "", "")
    fields = {"n_train": 4.8, "n_val": 9.0, "n_labelled": 4.8, "n_train_pool": 27.0,
              "label_fraction_used": 24 / 135}
    cells = {(name, column.name, "probe"): {
        "probs": p, "labels": labels, "rows": np.arange(n), "group": np.arange(n).astype(str),
        "record_id": np.asarray([f"r{i}" for i in range(n)]),
        "classes": np.asarray(["x", "y", "z"]), "fields": fields} for name, p in probs.items()}
    suite = {"protocols": {"probe": {}}, "bootstrap": 200, "alpha": alpha, "seed": 0}
    board = benchmark_leaderboard.build(models, [column], suite, cells, cache=cache, log=log)
    return board, labels, probs


def test_the_best_are_the_top_model_and_those_not_distinguishable_from_it():
    from sklearn.metrics import roc_auc_score

    board, labels, probs = _board()
    macro = {m: roc_auc_score(labels, p, average="macro") for m, p in probs.items()}
    assert abs(macro["a"] - macro["b"]) == pytest.approx(1 / 2400, abs=1e-12)
    top = max(macro, key=macro.get)
    other = "b" if top == "a" else "a"
    (panel,) = board["panels"]
    assert panel["top"] == top
    tests = {t["model"]: t["macro_auroc"] for t in board["comparisons"] if "best" in t["against"]}
    assert tests[other]["p_holm"] >= 0.05 and tests["c"]["significant"]
    assert tests["random:a"]["significant"]
    assert panel["best"] == [top, other]               # a and b bold; c and random:a not
    md = leaderboard_markdown.markdown(board)
    rows = {line.split(" | ")[0][2:]: line for line in md.splitlines()
            if line.startswith("| ") and " | **" in line or line.startswith("| c |")
            or line.startswith("| random:a |")}
    # The fewest decimals (from 3) at which the two tied values print apart.
    digits = next(d for d in range(3, 7) if f"{macro['a']:.{d}f}" != f"{macro['b']:.{d}f}")
    assert digits > 3
    for name in ("a", "b"):
        assert f"| **{macro[name]:.{digits}f} [" in rows[name]
    for name in ("c", "random:a"):
        assert f"| {macro[name]:.{digits}f} [" in rows[name] and rows[name].endswith("\\* |")
    assert "**bold**: the best (highest macro AUROC), or not distinguishable from it" in md
    # What the column used: 0.1 asked for, 24 of 135 records (0.178), 60 test records, 3 classes.
    assert "| rhythm | probe | 12 | 0.1 (used 0.178: 4.8 of 27) | 60 | 3 |" in md
    assert (panel["n"], panel["n_classes"], panel["label_fraction"]) == (60, 3, 0.1)
    assert panel["label_fraction_used"] == pytest.approx(24 / 135)
    # The tie's difference, -1/2400, is not "-0.000": two significant digits below 0.0005.
    assert f"| {other} | best | {top} | -0.00042 | [" in md
    assert not re.search(r"-0\.000(?!\d)", md)


def test_a_holm_p_from_a_bound_is_printed_as_a_bound_and_the_plot_uses_the_tasks_alpha(
        monkeypatch, tmp_path):
    import matplotlib.axes

    board, _, _ = _board(alpha=0.1)
    assert "Macro AUROC [90% CI over patients]" in leaderboard_markdown.markdown(board)
    # The audit's p-values: 2/1001 (a bound) then an exact 2/1000, among five comparisons.
    tests = [{**t, "macro_auroc": {**t["macro_auroc"], "p": p, "p_bound": bound}}
             for t, p, bound in zip(board["comparisons"] * 2,
                                    [2 / 1001, 2 / 1000, 0.03, 0.04, 0.5],
                                    ["<", None, None, None, None])]
    benchmark_leaderboard._apply_holm(tests, 0.05)
    md = leaderboard_markdown.markdown({**board, "comparisons": tests})
    rows = [line for line in md.splitlines() if line.startswith("| rhythm | probe | ")
            and line.count("|") == 10]
    assert [line.split(" | ")[-2:] for line in rows] == [
        ["< 0.002", "< 0.01 |"], ["0.002", "< 0.01 |"], ["0.030", "0.090 |"],
        ["0.040", "0.090 |"], ["0.500", "0.500 |"]]
    labels = []
    original = matplotlib.axes.Axes.set

    def recording(ax, **kwargs):
        labels.append(kwargs.get("xlabel"))
        return original(ax, **kwargs)
    monkeypatch.setattr(matplotlib.axes.Axes, "set", recording)
    benchmark_leaderboard.plot(board, tmp_path / "board.png")
    assert "macro AUROC (90% CI)" in labels


def test_paired_tests_draw_enough_resamples_for_holm_over_the_table():
    """The smallest p of a paired bootstrap is its bound 2 / (B + 1): with the task file's 500
    resamples Holm's correction over 40 comparisons could call nothing worse (40 x 2 / 501 =
    0.16). The tests draw 4 m / alpha - 1 (3,199 for 40, by hand), never fewer than the task
    file's, at most 19,999; past the cap the text names the floor m x 2 / (B + 1)."""
    suite = {"bootstrap": 500, "alpha": 0.05, "seed": 0}
    assert leaderboard_tests.resamples_for([{}] * 40, suite) == 3199
    assert 40 * 2 / (3199 + 1) == pytest.approx(0.025)
    assert leaderboard_tests.resamples_for([{}] * 2, suite) == 500
    assert leaderboard_tests.resamples_for([{}] * 400, suite) == 19_999
    assert "or more)" not in leaderboard_tests.macro_text(40, 3199, suite)
    assert "raised from the task file's 500" in leaderboard_tests.macro_text(40, 3199, suite)
    capped = leaderboard_tests.macro_text(400, 19_999, suite)
    assert capped.endswith("(an adjusted p is at least 0.04: more comparisons than 19999 "
                           "resamples resolve; set the task file's bootstrap to 31999 or more)")


@pytest.mark.parametrize("m,alpha", [(1, 0.05), (7, 0.05), (40, 0.05), (13, 0.01), (3, 0.1)])
def test_holm_resamples_is_the_fewest_that_reach_alpha(m, alpha):
    """With B = holm_resamples(m, alpha), Holm's smallest adjusted bound m x 2 / (B + 1)
    reaches alpha / 2; with B - 1 it does not (searched here, not by the formula)."""
    def reaches(b):
        return m * 2 / (b + 1) <= alpha / 2 + 1e-15
    fewest = next(b for b in range(1, 100_000) if reaches(b))
    assert leaderboard_tests.holm_resamples(m, alpha) == fewest


def test_the_per_class_section_gives_each_class_its_counts_aurocs_and_test_against_the_top():
    board, labels, probs = _board()
    auroc = {m: [roc_auc_score(labels[:, c], p[:, c]) for c in range(3)] for m, p in probs.items()}
    top = board["panels"][0]["top"]
    against = {t["model"]: t["per_class"] for t in board["comparisons"]
               if t["reference"] == top and "best" in t["against"]}
    md = leaderboard_markdown.markdown(board)
    section = md[md.index("## Per class"):md.index("## Models")].splitlines()
    header = section.index("### rhythm / probe") + 2
    assert section[header] == ("| class | positives / negatives | test | " + " | ".join(
        f"{m} (top)" if m == top else m for m in probs) + " |")
    rows = section[header + 2:header + 5]
    for c, (name, row) in enumerate(zip(["x", "y", "z"], rows)):
        cells = []
        for m in probs:
            text = f"{auroc[m][c]:.3f}"
            if m != top:   # its test against the top: a - b = the model's AUROC - the top's
                test = against[m][name]
                assert test["difference"] == pytest.approx(auroc[m][c] - auroc[top][c],
                                                           abs=1e-12)
                below = test["p_holm"] < 0.05 and test["difference"] < 0
                text += f" (p {test['p_holm']:.3f}{', below' if below else ''})"
            cells.append(text)
        # 60 records, class c on every third: 20 positives, 40 negatives, < 100: permutation.
        assert row == f"| {name} | 20 / 40 | permutation | " + " | ".join(cells) + " |"
    # c and random:a are uninformative: on some class each is below the top after Holm.
    assert any(", below)" in row.split(" | ")[5] for row in rows)
    assert board["panels"][0]["class_counts"]["y"] == {"positives": 20, "negatives": 40}


def _plain_rows(board, macro: dict, digits: int) -> list[str]:
    """The terminal's table rows, from the sklearn macro AUROCs: the name padded to the longest
    (or "model"), two spaces, the figure with its CI, " +" for the best, " *" below it."""
    (panel,) = board["panels"]
    below = {t["model"] for t in board["comparisons"]
             if "best" in t["against"] and t["macro_auroc"]["significant"]}
    width = max(len(n) for n in [*macro, "model"])
    rows = []
    for name, value in macro.items():
        ci = next(s["ci"] for s in board["cells"] if s["model"] == name)
        mark = " +" if name in panel["best"] else " *" if name in below else ""
        rows.append(f"{name.ljust(width)}  {value:.{digits}f} [{ci['low']:.3f}, "
                    f"{ci['high']:.3f}]{mark}")
    return rows


def test_the_printed_summary_is_the_table_and_each_panels_verdict():
    board, labels, probs = _board()
    macro = {m: roc_auc_score(labels, p, average="macro") for m, p in probs.items()}
    top = max(macro, key=macro.get)
    other = "b" if top == "a" else "a"
    lines = leaderboard_markdown.summary(board)
    # The ranking table, plain: a legend, then a, b (the best: +), c, random:a (below it: *).
    assert lines[:2] == ["macro AUROC [95% CI over patients]",
                         "+: the best, or not distinguishable from it; *: below the best after "
                         "Holm's correction; \u2014: not applicable"]
    assert lines[2] == "model     rhythm / probe"
    assert lines[3:7] == _plain_rows(board, macro, 4)   # 4 decimals: a and b differ there
    assert [row[-1] for row in lines[3:7]] == ["+", "+", "*", "*"]
    assert lines[8] == (f"rhythm / probe: top {top} ({macro[top]:.3f}); not distinguishable "
                        f"from it: {other}; below it: c, random:a")
    tests = {frozenset((t["model"], t["reference"])): t["macro_auroc"]
             for t in board["comparisons"]}
    for line, model in zip(lines[9:], ["a", "b", "c"]):
        m = tests[frozenset((model, "random:a"))]
        verdict = "above it" if m["p_holm"] < 0.05 else "not distinguishable from it"
        assert line.startswith(f"  {model} vs its random init random:a: "
                               f"{macro[model] - macro['random:a']:.3f} macro AUROC, p (Holm) ")
        assert line.endswith(f": {verdict}")
    assert len(lines) == 12 and lines[9].endswith("above it") and lines[11].endswith(
        "not distinguishable from it")   # a informative, c not
    assert "## Per class" not in "\n".join(lines)


def test_the_terminal_gets_names_as_given_and_leaderboard_md_escapes_them():
    """The printed table had been leaderboard.md's: `\\*` after a model below the best, `**`
    round the best. In leaderboard.md a name's `|` had split its row in two cells and its `_` or
    `*` started emphasis; there they are escaped, on the terminal written as given."""
    names = {"a": "st_mem|v2", "c": "*c*"}
    board, labels, probs = _board(names=names, column="rhythm_[x]")
    macro = {m: roc_auc_score(labels, p, average="macro") for m, p in probs.items()}
    lines = leaderboard_markdown.summary(board)
    assert lines[2] == "model      rhythm_[x] / probe"
    assert lines[3:7] == _plain_rows(board, macro, 4)
    assert lines[3].startswith("st_mem|v2  ") and lines[5].startswith("*c*        ")
    assert lines[8].startswith("rhythm_[x] / probe: top ")
    assert not any("\\" in line or "**" in line for line in lines)
    md = leaderboard_markdown.markdown(board)
    table = md.splitlines()[4:10]
    assert table[0] == "| model | rhythm\\_\\[x\\] / probe |"
    ci = {s["model"]: s["ci"] for s in board["cells"]}
    assert table[2] == (f"| st\\_mem\\|v2 | **{macro['st_mem|v2']:.4f} "
                        f"[{ci['st_mem|v2']['low']:.3f}, {ci['st_mem|v2']['high']:.3f}]** |")
    assert table[4].startswith("| \\*c\\* | ") and table[4].endswith("]\\* |")
    # Every row of every table of leaderboard.md has its header's cells (bars not escaped).
    cells = [len(re.split(r"(?<!\\)\|", line)) for line in md.splitlines()]
    for start in (i for i, line in enumerate(md.splitlines()) if line.startswith("|---")):
        end = next((i for i in range(start, len(cells)) if cells[i] == 1), len(cells))
        assert set(cells[start - 1:end]) == {cells[start - 1]}, md.splitlines()[start - 1]
    assert "\n### rhythm\\_\\[x\\] / probe\n" in md
    assert "\n- st\\_mem\\|v2: sit\\_pretrain, /ckpt/st\\_mem\\|v2\n" in md


def test_a_rebuild_reuses_the_cached_statistics_and_a_changed_input_recomputes_them(tmp_path):
    path = tmp_path / "cache.json"
    cache, said = leaderboard_tests.Cache(path), []
    first, _, _ = _board(cache=cache, log=said.append)
    cache.save()
    # 4 cells' scores and 5 paired tests (each model against the top and random:a, a pair once).
    assert (cache.computed, cache.reused) == (9, 0)
    assert first["counts"] == {"statistics_computed": 9, "statistics_reused": 0}
    assert said[0] == "leaderboard: rhythm / probe: 4 cells scored (0 reused) in " + \
        said[0].split(" in ")[1]
    # 4 x 5 / 0.05 - 1 = 399 resamples for Holm over 5 comparisons (resamples_for).
    assert said[1] == "leaderboard: 5 paired tests in 1 panel (399 resamples, 9999 exchanges)"
    assert re.fullmatch(r"leaderboard: rhythm / probe: 5 tests \(0 reused\) in \d+\.\d s; 5 of 5 "
                        r"done, \d+\.\d s", said[2])
    again = leaderboard_tests.Cache(path)
    second, _, _ = _board(cache=again)
    assert (again.computed, again.reused) == (0, 9)
    assert json.dumps({**second, "counts": 0}, sort_keys=True) == json.dumps(
        {**first, "counts": 0}, sort_keys=True)   # the same leaderboard, to the last digit
    # Every input of a result is in its key: a setting, the seed, one probability, a class name.
    arrays = {"labels": np.eye(3), "a": np.arange(3.0)}
    settings = {"alpha": 0.05, "seed": 0, "n_resamples": 200, "n_permutations": 9999,
                "classes": ["x"]}
    key = leaderboard_tests.Cache.key("paired test", arrays, settings)
    changed = [{**settings, "seed": 1}, {**settings, "alpha": 0.1},
               {**settings, "n_resamples": 201}, {**settings, "n_permutations": 10_000},
               {**settings, "classes": ["w"]}]
    assert key not in {leaderboard_tests.Cache.key("paired test", arrays, s) for s in changed}
    assert key != leaderboard_tests.Cache.key("paired test", {**arrays, "a": np.r_[0, 1, 2.5]},
                                              settings)
    assert key != leaderboard_tests.Cache.key("cell score", arrays, settings)
    assert key == leaderboard_tests.Cache.key("paired test", dict(arrays), dict(settings))
    # alpha 0.1: every statistic computed again; a damaged file: read as empty, said so.
    third = leaderboard_tests.Cache(path)
    _board(alpha=0.1, cache=third)
    assert (third.computed, third.reused) == (9, 0)
    path.write_text("{not json")
    lines = []
    assert leaderboard_tests.Cache(path, log=lines.append).found == {}
    assert lines[0].startswith(f"{path}: does not read (JSONDecodeError: ")


def test_a_result_asked_twice_in_one_run_is_computed_once_and_not_called_reused(tmp_path):
    """Two entries of one model give one key twice: the second had been counted "reused" on a
    first run with no cache file."""
    cache, calls = leaderboard_tests.Cache(tmp_path / "cache.json"), []
    arrays = {"labels": np.eye(2), "a": np.arange(2.0)}
    results = [cache.get("cell score", arrays, {"seed": 0},
                         lambda: calls.append(1) or {"auroc": 0.5}) for _ in range(2)]
    assert [hit for _, hit in results] == [False, False] and len(calls) == 1
    assert (cache.computed, cache.reused) == (1, 0)
    cache.save()
    again = leaderboard_tests.Cache(tmp_path / "cache.json")
    assert [again.get("cell score", arrays, {"seed": 0}, lambda: 1 / 0)[1]
            for _ in range(2)] == [True, True]
    assert (again.computed, again.reused) == (0, 1)


def test_leaderboard_json_is_written_as_report_json_is(tmp_path):
    """leaderboard.json: a strict JSON dump (no NaN), its keys in the order built (a panel's
    classes in the task's order, not sorted), indent 2: report.write_json, as report.json."""
    board, _, _ = _board()
    panel = board["panels"][0]
    panel["class_counts"] = dict(reversed(list(panel["class_counts"].items())))
    board["cells"][0]["ci"]["low"] = float("nan")
    benchmark_leaderboard.write_all(board, tmp_path)
    text = (tmp_path / "leaderboard.json").read_text()
    loaded = json.loads(text, parse_constant=lambda c: pytest.fail(c))
    assert list(loaded["panels"][0]["class_counts"]) == ["z", "y", "x"]
    assert loaded["cells"][0]["ci"]["low"] is None
    assert list(loaded) == list(board) and text.startswith('{\n  "models": [')
