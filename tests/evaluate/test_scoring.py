"""Metrics against scikit-learn (test-only dependency) on random inputs with ties."""
import numpy as np
import pytest
from sklearn import metrics as skm

from crema_jax.evaluate import scoring


def _random_column(rng, n, tie_levels):
    y = rng.random(n) < rng.uniform(0.1, 0.6)
    y[:2] = [True, False]  # both classes present
    rng.shuffle(y)
    if tie_levels:  # few distinct scores -> many ties
        s = rng.integers(0, tie_levels, size=n) / tie_levels
    else:
        s = rng.normal(size=n) + 0.8 * y
    return y.astype(np.float32), s.astype(np.float32)


@pytest.mark.parametrize("tie_levels", [0, 3, 7])
def test_auroc_auprc_f1_match_sklearn(tie_levels):
    rng = np.random.default_rng(tie_levels)
    for trial in range(20):
        y, s = _random_column(rng, int(rng.integers(5, 200)), tie_levels)
        assert scoring.auroc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-6)
        assert scoring.average_precision(y, s) == pytest.approx(
            skm.average_precision_score(y, s), abs=1e-6)
        threshold = float(np.quantile(s, rng.random()))
        assert scoring.f1_at(y, s, threshold) == pytest.approx(
            skm.f1_score(y, s >= threshold, zero_division=0.0), abs=1e-6)


@pytest.mark.parametrize("tie_levels", [0, 4])
def test_best_threshold_maximises_f1_by_brute_force(tie_levels):
    rng = np.random.default_rng(10 + tie_levels)
    for _ in range(10):
        y, s = _random_column(rng, 60, tie_levels)
        best = max(skm.f1_score(y, s >= t) for t in np.unique(s))
        t = scoring.best_threshold(y, s)
        assert skm.f1_score(y, s >= t) == pytest.approx(best, abs=1e-9)


def test_roc_curve_matches_sklearn():
    rng = np.random.default_rng(3)
    y, s = _random_column(rng, 80, 5)
    fpr, tpr = scoring.roc_curve(y, s)
    ref_fpr, ref_tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr, atol=1e-12)
    np.testing.assert_allclose(tpr, ref_tpr, atol=1e-12)


def test_report_macro_matches_sklearn_and_skips_degenerate_classes():
    rng = np.random.default_rng(5)
    n = 100
    labels = (rng.random((n, 4)) < 0.3).astype(np.float32)
    labels[:, 2] = 0.0  # no positives
    labels[:, 3] = 1.0  # no negatives
    scores = rng.random((n, 4)).round(1)  # ties
    val_labels = (rng.random((n, 4)) < 0.3).astype(np.float32)
    thresholds = scoring.choose_thresholds(val_labels, rng.random((n, 4)))
    report = scoring.classification_report(labels, scores, ["a", "b", "c", "d"],
                                           thresholds=thresholds)
    ok = [0, 1]
    assert report["macro_auroc"] == pytest.approx(
        skm.roc_auc_score(labels[:, ok], scores[:, ok], average="macro"), abs=1e-6)
    assert report["macro_auprc"] == pytest.approx(
        skm.average_precision_score(labels[:, ok], scores[:, ok], average="macro"), abs=1e-6)
    preds = scores[:, ok] >= thresholds[ok]
    assert report["macro_f1"] == pytest.approx(
        skm.f1_score(labels[:, ok], preds, average="macro"), abs=1e-6)
    assert report["skipped"] == [{"class": "c", "reason": "no_positives"},
                                 {"class": "d", "reason": "no_negatives"}]
    assert report["per_class"]["c"]["auroc"] is None
    assert report["n_scored_classes"] == 2
    # macro_auroc (vectorised, used by the bootstrap) agrees with the per-class path.
    assert scoring.macro_auroc(labels, scores) == pytest.approx(report["macro_auroc"], abs=1e-9)


def _with_degenerate_classes(seed: int, n: int = 120, c: int = 12):
    """Labels (n, c) with classes 3 (no positives) and 7 (no negatives), and tied scores; 12
    classes, so a mean over the scorable ones that summed NaN slots as 0 would be out of step
    with a plain mean's pairwise sum."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, c)) < 0.3).astype(np.float32)
    labels[:, 3], labels[:, 7] = 0.0, 1.0
    return labels, rng.random((n, c)).round(2), [i for i in range(c) if i not in (3, 7)]


def test_columnwise_auprc_and_macro_over_scorable_match_sklearn():
    labels, scores, ok = _with_degenerate_classes(11)
    auprc = scoring.columnwise_auprc(labels, scores)
    assert np.isnan(auprc[[3, 7]]).all()
    np.testing.assert_allclose(auprc[ok], [skm.average_precision_score(labels[:, c], scores[:, c])
                                           for c in ok], atol=1e-12)
    assert scoring.macro_over_scorable(auprc) == pytest.approx(
        skm.average_precision_score(labels[:, ok], scores[:, ok], average="macro"), abs=1e-12)
    assert scoring.macro_over_scorable(scoring.columnwise_auroc(labels, scores)) == pytest.approx(
        skm.roc_auc_score(labels[:, ok], scores[:, ok], average="macro"), abs=1e-12)
    assert scoring.macro_over_scorable([np.nan, np.nan]) is None
    assert scoring.macro_over_scorable([]) is None


def test_every_macro_figure_is_the_mean_over_the_scorable_classes():
    """The report, the paired bootstrap's observed figures, the leaderboard's cell score and
    the cross-domain drop all give sklearn's macro over the classes with both a positive and
    a negative (each had computed it on its own)."""
    from crema_jax.evaluate import benchmark_leaderboard, paired, protocols
    labels, scores, ok = _with_degenerate_classes(12)
    other = np.random.default_rng(13).random(scores.shape)
    auroc = skm.roc_auc_score(labels[:, ok], scores[:, ok], average="macro")
    auprc = skm.average_precision_score(labels[:, ok], scores[:, ok], average="macro")
    names = [str(i) for i in range(labels.shape[1])]
    report = scoring.classification_report(labels, scores, names)
    assert (report["macro_auroc"], report["macro_auprc"]) == pytest.approx((auroc, auprc),
                                                                            abs=1e-12)
    cell = benchmark_leaderboard._score(labels, scores, None,
                                        {"bootstrap": 5, "seed": 0, "alpha": 0.05})
    assert (cell["macro_auroc"], cell["macro_auprc"]) == pytest.approx((auroc, auprc), abs=1e-12)
    assert cell["n_scored_classes"] == len(ok)
    for metric, want in (("macro_auroc", auroc), ("macro_auprc", auprc)):
        got = paired.paired_bootstrap(labels, scores, other, metric=metric, n_resamples=5)
        assert got["a"] == pytest.approx(want, abs=1e-12)
    # The drop: over the classes scorable in both sets (here: not class 0 out of domain).
    out_labels = labels.copy()
    out_labels[:, 0] = 0.0
    both = [c for c in ok if c != 0]
    drop = protocols.common_class_macro(report, scoring.classification_report(
        out_labels, other, names))
    assert drop["classes"] == [names[c] for c in both]
    assert drop["in_domain"] == pytest.approx(
        skm.roc_auc_score(labels[:, both], scores[:, both], average="macro"), abs=1e-12)
    assert drop["out_of_domain"] == pytest.approx(
        skm.roc_auc_score(out_labels[:, both], other[:, both], average="macro"), abs=1e-12)


def test_all_classes_degenerate_gives_none_not_nan():
    labels = np.zeros((10, 2), np.float32)
    report = scoring.classification_report(labels, np.random.rand(10, 2), ["a", "b"])
    assert report["macro_auroc"] is None and len(report["skipped"]) == 2
    ci = scoring.bootstrap_ci(labels, np.random.rand(10, 2), n_resamples=20)
    assert ci["low"] is None and ci["n_valid"] == 0


def test_bootstrap_ci_covers_estimate_and_is_seeded():
    rng = np.random.default_rng(7)
    labels = (rng.random((300, 3)) < 0.3).astype(np.float32)
    scores = rng.normal(size=(300, 3)) + labels
    point = skm.roc_auc_score(labels, scores, average="macro")
    ci = scoring.bootstrap_ci(labels, scores, n_resamples=300, seed=1)
    assert ci["low"] < point < ci["high"]
    assert ci["high"] - ci["low"] < 0.2
    assert ci == scoring.bootstrap_ci(labels, scores, n_resamples=300, seed=1)
    assert ci != scoring.bootstrap_ci(labels, scores, n_resamples=300, seed=2)


def test_percentile_ci_interpolates_between_order_statistics():
    """The bootstrap CI and the paired tests' CI (one function): the alpha / 2 quantile of n
    sorted values sits at position (n - 1) * alpha / 2, between two of them (worked by hand)."""
    values = [5.0, 1.0, 4.0, 2.0, 3.0]            # sorted 1..5; positions 0.2 and 3.8 at 10 %
    ci = scoring.percentile_ci(values, 0.1)
    assert ci["low"] == pytest.approx(1.2) and ci["high"] == pytest.approx(4.8)
    assert scoring.percentile_ci(np.arange(101.0), 0.05) == {"low": 2.5, "high": 97.5}
    assert scoring.percentile_ci([], 0.05) == {"low": None, "high": None}


def test_undefined_binary_metric_names_the_reason():
    with pytest.raises(ValueError, match="no positives"):
        scoring.auroc(np.zeros(5), np.arange(5))


def test_a_non_finite_score_is_an_error_not_a_class_dropped():
    """With one NaN probability the class's AUROC was NaN, its AUPRC 1.0 and the macro AUROC
    NaN; the bootstrap dropped the class. Now each says which scores and how many."""
    labels = np.array([[1], [0], [1], [0]], np.float32)
    scores = np.array([[0.9], [np.nan], [0.8], [0.1]])
    with pytest.raises(ValueError, match=r"^scores: 1 of 4 scores are NaN or infinite"):
        scoring.classification_report(labels, scores, ["c"])
    with pytest.raises(ValueError, match=r"^scores: 1 of 4 scores are NaN or infinite"):
        scoring.bootstrap_ci(labels, scores, n_resamples=5)
