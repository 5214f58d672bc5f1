"""Report rendering: JSON without NaN, Markdown figures, PNGs, PCA against scikit-learn."""
import json
import os
import pathlib
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.metrics import roc_auc_score

from crema_jax.evaluate import plots, report, report_markdown, scoring, texts


def _report(rng):
    labels = (rng.random((40, 3)) < 0.4).astype(np.float32)
    labels[:, 2] = 0
    scores = rng.random((40, 3))
    test = scoring.classification_report(labels, scores, ["AF", "PAC", "RBBB"],
                                         thresholds=np.full(3, 0.5))
    test["ci"] = scoring.bootstrap_ci(labels, scores, n_resamples=50)
    run = {"name": "probe", "model": "A", "protocol": {"leads": "12", "label_fraction": 1.0},
           "n_train": 30, "test": test}
    cross = {"model": "A", "train_source": "georgia", "out_of_domain": {"ningbo": test},
             "drop": {"ningbo": {"classes": ["AF"], "in_domain": 0.9, "out_of_domain": 0.7,
                                 "drop": 0.2}}}
    return labels, scores, {"title": "t", "settings": {"seed": 0}, "runs": [run],
                            "cross_domain": [cross]}


def test_write_all_outputs(tmp_path):
    rng = np.random.default_rng(0)
    labels, scores, rep = _report(rng)
    feats = rng.normal(size=(40, 8))
    paths = report.write_all(rep, tmp_path, roc=(labels, scores, ["AF", "PAC", "RBBB"], "ROC"),
                             embeddings=(feats, {"label": ["a"] * 20 + ["b"] * 20,
                                                 "source": ["g", "n"] * 20}, "PCA"))
    text = (tmp_path / "report.json").read_text()
    assert "NaN" not in text
    loaded = json.loads(text)
    assert loaded["runs"][0]["test"]["per_class"]["RBBB"]["auroc"] is None
    md = (tmp_path / "report.md").read_text()
    macro = roc_auc_score(labels[:, :2], scores[:, :2], average="macro")
    assert f"| {macro:.3f} |" in md
    assert "RBBB: no positives" in md
    assert "| A | georgia | ningbo | 0.900 | 0.700 | 0.200 | 1 |" in md
    rep["class_display"] = {"AF": "atrial fibrillation"}
    assert "| atrial fibrillation (AF) |" in report_markdown.markdown(rep)
    for key in ("roc", "embeddings"):
        image = matplotlib.image.imread(paths[key])
        assert image.shape[0] > 300 and image.shape[1] > 300
        assert image[..., :3].std() > 0.05  # something was drawn


def test_pca_matches_sklearn_up_to_sign():
    x = np.random.default_rng(1).normal(size=(50, 6)) * np.arange(1, 7)
    xy, ratio = plots.pca_2d(x)
    ref = PCA(n_components=2).fit(x)
    proj = ref.transform(x)
    for k in range(2):
        sign = np.sign(np.dot(xy[:, k], proj[:, k]))
        np.testing.assert_allclose(sign * xy[:, k], proj[:, k], atol=1e-8)
    np.testing.assert_allclose(ratio, ref.explained_variance_ratio_, rtol=1e-8)


def test_primary_label_is_rarest_positive():
    labels = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 0, 1]], np.float32)
    assert plots.primary_label(labels, ["a", "b", "c"]) == ["b", "a", "none", "c"]


def test_plot_p_labels():
    """The forest plot's label of each row: its p (a bound rounded up to two significant
    digits), its Holm-adjusted p where it has one, nothing without a p."""
    assert plots._p_label({"p": 0.0781, "p_holm": 0.7812}) == "p=0.078, Holm 0.781"
    assert plots._p_label({"p": 2 / 1001, "p_bound": "<"}) == "p < 0.002"
    assert plots._p_label({"p": 0.0004, "p_holm": None}) == "p < 0.001"
    assert plots._p_label({"p": None, "p_holm": 0.5}) == ""


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _check_p(cell: str, entry: dict) -> None:
    """A Markdown p-value against its JSON entry: a bound "< X" with X >= p within p's second
    significant digit when p_bound is "<"; else p to three decimals (or "< 0.001")."""
    p = entry["p"]
    if p is None:
        assert cell == texts.DASH
    elif entry.get("p_bound") == "<":
        assert cell.startswith("< "), (cell, entry)
        shown = float(cell[2:])
        assert p <= shown < p + 10.0 ** (np.floor(np.log10(p)) - 1), (cell, p)
    elif p < 0.001:
        assert cell == "< 0.001", (cell, p)
    else:
        assert float(cell) == round(p, 3), (cell, p)


def check_markdown_agrees(rep: dict, md: str) -> None:
    """report.md says what report.json says: the records line, the runs table's record counts
    (runs on all training labels) and every p-value of the comparisons."""
    lines = md.splitlines()
    records = rep["records"]
    line = next(x for x in lines if x.startswith("**Records**"))
    assert line.startswith(f"**Records**: {records['total']} evaluated of "
                           f"{records['indexed']} indexed")
    for key, words in (("duplicates_merged", "duplicate rows merged"),
                       ("no_class_left", "left with no class by --min_positives")):
        assert (f"{records[key]} {words}" in line) is (records[key] > 0), line
    unlabelled = records.get("unlabelled", 0)
    assert (f", {unlabelled} of them with no label (negatives of every class)" in line) is (
        unlabelled > 0), line
    if records["folds"]:
        assert f"per fold {records['train']:g} train, {records['val']:g} val; " \
               f"{records['test']} tested" in line, line
    else:
        assert f"{records['train']} train, {records['val']} val, {records['test']} test" in line
    assert (f"; {records['unreadable']} test records could not be read" in line) is (
        records["unreadable"] > 0), line
    header = _cells(next(x for x in lines if x.startswith("| run | model |")))
    rows = {_cells(x)[0] + "/" + _cells(x)[1]: dict(zip(header, _cells(x))) for x in lines
            if x.startswith("| ") and any(x.startswith(f"| {r['name']} |") for r in rep["runs"])}
    for run in rep["runs"]:
        row = rows[f"{run['name']}/{run['model']}"]
        assert float(row["test records"]) == run["test"]["n"]
        if run["protocol"]["label_fraction"] == 1.0 and run["protocol"]["leads"] == \
                rep["runs"][0]["protocol"]["leads"]:
            assert float(row["train records"]) == records["train"]
            assert run["test"]["n"] == records["test"]
    for comparison in rep["comparisons"]:
        block = lines[lines.index(f"## A vs B: {comparison['run']}"):]
        for key in ("macro_auroc", "macro_auprc"):
            row = _cells(next(x for x in block if x.startswith(f"| {key.replace('_', ' ')} |")))
            _check_p(row[-1], comparison[key])
        start = next(i for i, x in enumerate(block) if x.startswith("| class | positives |"))
        for entry, line in zip(comparison["per_class"].values(), block[start + 2:]):
            if "skipped" not in entry:  # the raw p, the test that gave it, Holm's p
                _check_p(_cells(line)[-4], entry)
                assert _cells(line)[-3] == {"delong": "DeLong",
                                            "permutation": "permutation"}[entry["test"]]
                _check_p(_cells(line)[-2], {"p": entry["p_holm"]})


def test_report_json_and_markdown_agree_on_counts_and_p_values(tmp_path):
    """45 records in 5 folds of 9 (by hand: each fold trains on 3 x 9 = 27, selects on 9; every
    record tested once), 2 duplicates merged and 3 records left with no class; model A far
    better than B on every resample: p is the bound 2 / (1000 + 1), "< 0.002" in Markdown."""
    from types import SimpleNamespace

    from crema_jax.evaluate import folds, paired

    rng = np.random.default_rng(1)
    labels = np.zeros((45, 2), np.float32)
    labels[np.arange(45), rng.integers(0, 2, 45)] = 1
    a = labels + 0.01 * rng.random((45, 2))
    b = rng.random((45, 2))
    plan = folds.fold_plan(np.repeat(np.arange(5), 9), 5)
    data = SimpleNamespace(
        infos=[None] * 45, splits=np.full(45, "train"), label_type="multiclass",
        classes=["AF", "SR"], display={},
        counts={"indexed": 50, "duplicates_merged": 2, "no_class_left": 3, "not_one_class": 0,
                "unlabelled": 4})
    test = scoring.classification_report(labels, a, ["AF", "SR"], thresholds=np.full(2, 0.5))
    test["ci"] = None
    runs = [{"name": "probe leads=12 labels=1 folds=5", "model": model,
             "protocol": {"leads": "12", "label_fraction": 1.0, "folds": 5}, "n_train": 27.0,
             "n_val": 9.0, "test": test} for model in ("A", "B")]
    comparison = {"run": runs[0]["name"], "protocol": runs[0]["protocol"],
                  **paired.compare_predictions(labels, a, b, ["AF", "SR"], n_resamples=1000)}
    rep = report.new_report(title="t", command="compare", settings={}, data=data, models={},
                            runs=runs, cross_domain=[], record_folds=plan,
                            comparisons=[comparison], seconds=1.0)
    assert rep["records"] == {"total": 45, "indexed": 50, "duplicates_merged": 2,
                              "no_class_left": 3, "not_one_class": 0, "unlabelled": 4,
                              "patients_across_splits": None, "train": 27.0,
                              "val": 9.0, "test": 45, "unreadable": 0, "folds": [9] * 5}
    macro = rep["comparisons"][0]["macro_auroc"]
    assert macro["n_valid"] == 1000 and macro["p_bound"] == "<"
    assert macro["p"] == 2 / 1001
    for stale in ("paired_differences.png", "roc.png"):  # an earlier report's figures
        (tmp_path / stale).write_bytes(b"old")
    report.write_all(rep, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "report.md"]
    md = (tmp_path / "report.md").read_text()
    loaded = json.loads((tmp_path / "report.json").read_text())
    assert loaded["comparisons"][0]["macro_auroc"]["p"] == 2 / 1001
    assert "| macro auroc |" in md and md.split("| macro auroc |")[1].split("\n")[0] \
        .rstrip().endswith("| < 0.002 |")
    check_markdown_agrees(loaded, md)


def test_a_report_stopped_part_way_leaves_no_report_json_beside_earlier_figures(
        tmp_path, monkeypatch):
    """Ctrl-C while a probe wrote its report into a compare's workdir had left the probe's
    report.json beside the compare's paired_differences.png (and no roc.png): a report
    mixing two runs. An earlier report's files now go first and report.json comes last."""
    labels = np.eye(2, dtype=np.float32)[np.arange(20) % 2]
    scores = np.random.default_rng(0).random((20, 2))
    test = scoring.classification_report(labels, scores, ["AF", "SR"], thresholds=np.full(2, .5))
    test["ci"] = None
    from types import SimpleNamespace
    data = SimpleNamespace(infos=[None] * 20, splits=np.full(20, "test"), label_type="multiclass",
                           classes=["AF", "SR"], display={}, counts={})
    runs = [{"name": "probe leads=12 labels=1", "model": "A", "n_train": 0, "n_val": 0,
             "protocol": {"leads": "12", "label_fraction": 1.0, "folds": 0}, "test": test}]
    rep = report.new_report(title="t", command="probe", settings={}, data=data, models={},
                            runs=runs, cross_domain=[], seconds=1.0)
    for name in ("report.json", "report.md", "paired_differences.png", "roc.png"):
        (tmp_path / name).write_text("an earlier compare's")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(plots, "plot_roc", interrupted)
    with pytest.raises(KeyboardInterrupt):
        report.write_all(rep, tmp_path, roc=(labels, scores, ["AF", "SR"], "t"))
    left = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert left == ["report.md"]                          # this run's own, and no report.json
    assert "an earlier" not in (tmp_path / "report.md").read_text()
    monkeypatch.undo()
    report.write_all(rep, tmp_path, roc=(labels, scores, ["AF", "SR"], "t"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "report.md", "roc.png"]


def test_report_json_never_holds_nan_or_infinity(tmp_path):
    """json.dumps wrote a DeLong z of inf as the bare `Infinity` (not JSON): a strict parser
    refused report.json. Non-finite numbers are written as null."""
    path = tmp_path / "report.json"
    report.write_json({"z": float("inf"), "p": np.float64("nan"), "ok": 0.5,
                       "nested": [{"low": float("-inf")}, 1]}, path)
    strict = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(c))
    assert strict == {"z": None, "p": None, "ok": 0.5, "nested": [{"low": None}, 1]}


def test_the_robustness_table_lists_the_classes_left_below_the_drop_floor():
    drop = {"train_source": "s1", "test_source": "s2", "drop_a": 0.1, "drop_b": 0.2,
            "difference": -0.1, "ci": {"low": -0.3, "high": 0.1}, "p": 0.4, "p_bound": None,
            "alpha": 0.05, "verdict": "no detectable difference at alpha=0.05",
            "classes_below_floor": [{"class": "164889003", "test_set": "in-domain",
                                     "positives": 2, "negatives": 9}]}
    md = report_markdown.markdown({"class_display": {"164889003": "AF"},
                          "cross_domain_comparisons": [drop]})
    row = next(line for line in md.splitlines() if line.startswith("| s1 | s2 |"))
    assert row.endswith("| no detectable difference at alpha=0.05 | AF (164889003) (the "
                        "in-domain test set has 2 positive and 9 negative patients) |")
    assert "| classes below the floor |" in md


def test_every_label_fraction_shown_says_what_it_used():
    """The audit's 5-fold run: 0.1 of 27 training records a fold drew 4, 5, 6, 5, 4 (one
    positive of each of ten classes first): 24 of 135 records, 0.178, a mean of 4.8 a fold."""
    from crema_jax.evaluate import paired, protocols

    rng = np.random.default_rng(0)
    labels = np.eye(2, dtype=np.float32)[np.arange(45) % 2]
    test = scoring.classification_report(labels, rng.random((45, 2)), ["AF", "SR"],
                                         thresholds=np.full(2, 0.5))
    drawn = [4, 5, 6, 5, 4]
    folds_ = [{"fold": f + 1, "n_train": d, "n_val": 9, "test": test,
               **protocols.labels_used(d, 27)} for f, d in enumerate(drawn)]
    run = {"name": "probe leads=12 labels=0.1 folds=5", "model": "A", "n_train": 4.8,
           "n_val": 9.0, "protocol": {"leads": "12", "label_fraction": 0.1, "folds": 5},
           "test": test, "folds": folds_, **protocols.labels_used(drawn, [27] * 5)}
    assert (run["n_labelled"], run["n_train_pool"]) == (4.8, 27.0)
    assert run["label_fraction_used"] == pytest.approx(24 / 135, abs=1e-12)
    comparison = {"run": run["name"], **paired.compare_predictions(
        labels, rng.random((45, 2)), rng.random((45, 2)), ["AF", "SR"], n_resamples=20)}
    md = report_markdown.markdown({"runs": [run], "comparisons": [comparison]})
    row = next(x for x in md.splitlines() if x.startswith(f"| {run['name']} |"))
    assert _cells(row)[3] == "0.1 (used 0.178: 4.8 of 27)"
    fold_rows = [x for x in md.splitlines() if x.startswith("| 3 | ")]
    assert _cells(fold_rows[0])[1] == "0.1 (used 0.222: 6 of 27)"       # 6 / 27
    assert "patients resampled together; label fraction 0.1 (used 0.178: 4.8 of 27))" in md
    assert "## Per class (probe leads=12 labels=0.1 folds=5, model A; label fraction 0.1 " \
           "(used 0.178: 4.8 of 27))" in md


def test_the_per_class_table_says_how_many_classes_holm_ran_over():
    """A comparison without `per_class_tests` had printed "over the None classes"; one where
    no class was tested says so."""
    from crema_jax.evaluate import paired

    rng = np.random.default_rng(0)
    labels = np.eye(2, dtype=np.float32)[np.arange(40) % 2]
    comparison = {"run": "probe", **paired.compare_predictions(
        labels, rng.random((40, 2)), rng.random((40, 2)), ["AF", "SR"], n_resamples=20)}
    holm = [e for e in comparison["per_class"].values() if e.get("p_holm") is not None]
    assert len(holm) == 2    # 20 positives and 20 negatives a class: both tested

    def note(**changed):
        md = report_markdown.markdown({"comparisons": [{**comparison, **changed}]})
        return next(x for x in md.splitlines() if x.startswith("Per class: "))
    assert "over the 2 classes tested here (p (Holm))" in note()
    assert note(per_class_tests=0) == (
        "Per class: a paired permutation test (ranks exchanged within patients) where a class "
        "has fewer than 100 positives or negatives, DeLong's test above (column test; the CI "
        "is DeLong's either way); no class tested here (each verdict says why).")
    del comparison["per_class_tests"]
    assert "None" not in note() and "over the classes tested here (p (Holm))" in note()


def test_an_evaluation_failing_in_its_workdir_leaves_no_folder_it_made(tmp_path):
    """claimed_workdir: the workdir and its missing parents go when the run wrote nothing (a
    parent made for it had been left behind); a file written keeps them."""
    with pytest.raises(RuntimeError, match="boom"):
        with report.claimed_workdir(str(tmp_path / "runs" / "a"), log=lambda line: None):
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError, match="boom"):
        with report.claimed_workdir(str(tmp_path / "runs" / "b"), log=lambda line: None) as path:
            (path / "figures.txt").write_text("kept")
            raise RuntimeError("boom")
    assert (tmp_path / "runs" / "b" / "figures.txt").read_text() == "kept"


def test_the_report_texts_and_statistics_import_no_jax():
    """texts.py had imported inference.backbones for one f-string, pulling JAX, flax and the
    models into paired.py, plots.py and report_markdown.py (about 5 s an import, not 1)."""
    repo = pathlib.Path(__file__).resolve().parents[2]
    script = ("import sys\nfrom crema_jax.evaluate import texts, report_markdown, paired, plots\n"
              "print(sorted(m for m in ('jax', 'flax', 'crema_jax.inference.backbones') "
              "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, cwd=str(repo), env={**os.environ, "PYTHONPATH": str(repo)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout
