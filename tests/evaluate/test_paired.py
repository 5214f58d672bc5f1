"""Paired tests against references written here: DeLong from the published structural
components (O(m n), DeLong et al. 1988), the paired bootstrap re-drawn with numpy and
scored with scikit-learn."""
import numpy as np
import pytest
import scipy.stats
from sklearn.metrics import average_precision_score, roc_auc_score

from crema_jax.evaluate import paired
from tests.evaluate.test_permutation import reference_exchange_p


def reference_delong(y, score_a, score_b):
    """DeLong, DeLong & Clarke-Pearson (1988), section 2: psi(X, Y) = 1 if Y < X, 1/2 if Y = X,
    0 otherwise, for positives X_i (m) and negatives Y_j (n); V10(X_i) = mean_j psi(X_i, Y_j),
    V01(Y_j) = mean_i psi(X_i, Y_j); S10 and S01 their covariance matrices over the two models
    (divisors m - 1 and n - 1); S = S10 / m + S01 / n; the contrast L = (1, -1) has variance
    L S L'. Returns (AUC_A, AUC_B, variance of the difference, two-sided p)."""
    y = np.asarray(y) > 0.5
    v10, v01, theta = [], [], []
    for s in (np.asarray(score_a, float), np.asarray(score_b, float)):
        x_pos, y_neg = s[y], s[~y]
        psi = (y_neg[None, :] < x_pos[:, None]) + 0.5 * (y_neg[None, :] == x_pos[:, None])
        theta.append(psi.mean())
        v10.append(psi.mean(1))
        v01.append(psi.mean(0))
    m, n = int(y.sum()), int((~y).sum())
    s10 = np.zeros((2, 2))
    s01 = np.zeros((2, 2))
    for r in range(2):
        for s in range(2):
            s10[r, s] = np.sum((v10[r] - theta[r]) * (v10[s] - theta[s])) / (m - 1)
            s01[r, s] = np.sum((v01[r] - theta[r]) * (v01[s] - theta[s])) / (n - 1)
    contrast = np.array([1.0, -1.0])
    var = contrast @ (s10 / m + s01 / n) @ contrast
    z = (theta[0] - theta[1]) / np.sqrt(var)
    return theta[0], theta[1], var, 2 * (1 - scipy.stats.norm.cdf(abs(z)))


def _correlated_scores(rng, n, tie_levels=0):
    y = (rng.random(n) < 0.35).astype(np.float32)
    y[:2] = [1, 0]
    shared = rng.normal(size=n)
    a = shared + 1.0 * y + 0.5 * rng.normal(size=n)
    b = shared + 0.6 * y + 0.5 * rng.normal(size=n)
    if tie_levels:
        a, b = np.round(a * tie_levels) / tie_levels, np.round(b * tie_levels) / tie_levels
    return y, a, b


@pytest.mark.parametrize("n,tie_levels", [(60, 0), (97, 2), (200, 1)])
def test_delong_matches_the_published_structural_components(n, tie_levels):
    y, a, b = _correlated_scores(np.random.default_rng(n), n, tie_levels)
    got = paired.delong(y, a, b)
    auc_a, auc_b, var, p = reference_delong(y, a, b)
    assert got["auroc_a"] == pytest.approx(roc_auc_score(y, a), abs=1e-12)
    assert got["auroc_a"] == pytest.approx(auc_a, abs=1e-12)
    assert got["auroc_b"] == pytest.approx(auc_b, abs=1e-12)
    assert got["variance"] == pytest.approx(var, abs=1e-8, rel=0)
    assert got["p"] == pytest.approx(p, abs=1e-8, rel=0)
    half = scipy.stats.norm.ppf(0.975) * np.sqrt(var)
    assert got["ci"]["low"] == pytest.approx(auc_a - auc_b - half, abs=1e-8)
    assert 0 < got["p"] < 1


def test_delong_on_fixed_data():
    """A hand-checkable case: 3 positives, 4 negatives, ties across models and classes."""
    y = [1, 1, 1, 0, 0, 0, 0]
    a = [0.9, 0.8, 0.4, 0.4, 0.3, 0.2, 0.1]
    b = [0.7, 0.3, 0.6, 0.5, 0.3, 0.8, 0.1]
    got = paired.delong(y, a, b)
    auc_a, auc_b, var, p = reference_delong(y, a, b)
    # A: 11.5 of 12 pairs ranked right (0.4 ties 0.4); B: 7.5 of 12.
    assert (auc_a, auc_b) == (11.5 / 12, 7.5 / 12)
    assert got["auroc_a"] == pytest.approx(auc_a, abs=1e-12)
    assert got["auroc_b"] == pytest.approx(auc_b, abs=1e-12)
    assert got["variance"] == pytest.approx(var, abs=1e-8, rel=0)
    assert got["p"] == pytest.approx(p, abs=1e-8, rel=0)


def test_identical_models_are_no_detectable_difference():
    y, a, _ = _correlated_scores(np.random.default_rng(1), 80)
    test = paired.delong(y, a, a.copy())
    assert test["difference"] == 0 and test["variance"] == 0 and test["p"] == 1.0
    labels = np.stack([y, 1 - y], 1)
    probs = np.stack([a, -a], 1)
    out = paired.compare_predictions(labels, probs, probs.copy(), ["x", "y"], n_resamples=50)
    assert out["macro_auroc"]["p"] == 1.0 and out["macro_auroc"]["difference"] == 0
    assert out["verdict"] == "no detectable difference at alpha=0.05"
    assert {c["verdict"] for c in out["per_class"].values()} == {
        "no detectable difference at alpha=0.05"}


def test_delong_refuses_a_column_without_negatives():
    with pytest.raises(ValueError, match="no negatives"):
        paired.delong(np.ones(5), np.arange(5), np.arange(5))


def delong_testable(labels) -> list[int]:
    """The columns DeLong's variance is defined for: at least 2 positives and 2 negatives (the
    covariances S10 and S01 divide by m - 1 and n - 1)."""
    labels = np.asarray(labels) > 0.5
    return [c for c in range(labels.shape[1])
            if 2 <= labels[:, c].sum() <= len(labels) - 2]


def test_one_positive_gets_no_test_rather_than_a_false_verdict():
    """With one positive S10 is undefined (the reference divides by m - 1 = 0); taken as 0 it
    left out the term that dominates, and two models of independent random scores were called
    different in most such classes. Such a class is skipped, with its reason."""
    rng = np.random.default_rng(0)
    y = np.zeros((49, 2))
    y[3, 0] = 1
    y[[3, 7], 1] = 1
    with pytest.raises(ValueError, match="one positive"):
        paired.delong(y[:, 0], rng.random(49), rng.random(49))
    with pytest.raises(ValueError, match="one negative"):
        paired.delong(1 - y[:, 0], rng.random(49), rng.random(49))
    called_different = 0
    for _ in range(40):
        a, b = rng.random((49, 2)), rng.random((49, 2))
        out = paired.compare_predictions(y, a, b, ["one", "two"], n_resamples=20)
        assert out["per_class"]["one"] == {"skipped": "one_positive"}
        assert out["per_class"]["two"]["n_pos"] == 2
        called_different += out["per_class"]["two"]["p"] < 0.05
    assert delong_testable(y) == [1]
    assert called_different < 20  # two positives: defined (anti-conservative, not absurd)


def _reference_paired_bootstrap(labels, a, b, groups, n_resamples, seed, score, alpha=0.05):
    """Patients drawn with replacement (numpy's integers(0, G, G), groups in order of first
    appearance), both models scored on the same records with scikit-learn."""
    first = {}
    for i, g in enumerate(groups):
        first.setdefault(g, []).append(i)
    members = list(first.values())
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_resamples):
        idx = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
        cols = [c for c in range(labels.shape[1]) if 0 < labels[idx, c].sum() < len(idx)]
        if not cols:
            continue
        diffs.append(np.mean([score(labels[idx, c], a[idx, c]) for c in cols])
                     - np.mean([score(labels[idx, c], b[idx, c]) for c in cols]))
    diffs = np.array(diffs)
    low, high = np.percentile(diffs, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    tie = np.abs(diffs) <= 1e-12  # equal AUROCs but for floating-point rounding
    p = min(1.0, 2 * min(np.mean((diffs <= 0) | tie), np.mean((diffs >= 0) | tie)))
    return low, high, p, len(diffs)


@pytest.mark.parametrize("metric,score", [("macro_auroc", roc_auc_score),
                                          ("macro_auprc", average_precision_score)])
def test_paired_bootstrap_is_reproduced_with_patients_resampled_together(metric, score):
    rng = np.random.default_rng(4)
    n = 70
    labels = (rng.random((n, 3)) < [0.4, 0.2, 0.08]).astype(np.float32)
    a = labels + rng.normal(size=(n, 3))
    b = 0.5 * labels + rng.normal(size=(n, 3))
    groups = [f"p{i // 2}" for i in rng.permutation(n)]  # two records per patient, shuffled
    got = paired.paired_bootstrap(labels, a, b, metric=metric, groups=groups, n_resamples=200,
                                  seed=7)
    low, high, p, n_valid = _reference_paired_bootstrap(labels, a, b, groups, 200, 7, score)
    assert got["n_valid"] == n_valid
    assert got["ci"]["low"] == pytest.approx(low, abs=1e-12)
    assert got["ci"]["high"] == pytest.approx(high, abs=1e-12)
    assert got["p"] == pytest.approx(p, abs=1e-12)
    point = np.mean([score(labels[:, c], a[:, c]) - score(labels[:, c], b[:, c])
                     for c in range(3)])
    assert got["difference"] == pytest.approx(point, abs=1e-12)
    assert got == paired.paired_bootstrap(labels, a, b, metric=metric, groups=groups,
                                          n_resamples=200, seed=7)


def test_a_clearly_better_model_wins_and_the_verdict_names_it():
    rng = np.random.default_rng(5)
    n = 300
    labels = (rng.random((n, 2)) < 0.3).astype(np.float32)
    good = labels * 2 + rng.normal(size=(n, 2))
    poor = rng.normal(size=(n, 2))
    out = paired.compare_predictions(labels, poor, good, ["x", "y"], n_resamples=200)
    assert out["macro_auroc"]["difference"] < 0 and out["macro_auroc"]["p"] < 0.01
    assert out["verdict"] == "B better at alpha=0.05"
    assert out["per_class"]["x"]["verdict"] == "B better at alpha=0.05"
    assert out["macro_auroc"]["ci"]["high"] < 0


def test_drop_difference_resamples_both_sets_jointly():
    rng = np.random.default_rng(6)
    sets = []
    for n, signal_b in ((60, 1.5), (80, 0.3)):
        labels = (rng.random((n, 2)) < 0.4).astype(np.float32)
        sets.append({"labels": labels, "a": labels + rng.normal(size=(n, 2)),
                     "b": signal_b * labels + rng.normal(size=(n, 2))})
    got = paired.paired_drop_difference(sets[0], sets[1], ["x", "y"], n_resamples=100, seed=3)
    macro = lambda s, m: np.mean([roc_auc_score(s["labels"][:, c], s[m][:, c])  # noqa: E731
                                  for c in range(2)])
    drop_a, drop_b = (macro(sets[0], m) - macro(sets[1], m) for m in ("a", "b"))
    assert got["drop_a"] == pytest.approx(drop_a, abs=1e-12)
    assert got["difference"] == pytest.approx(drop_a - drop_b, abs=1e-12)
    # The resamples: in-domain patients first, then out-of-domain, from one generator.
    r = np.random.default_rng(3)
    diffs = []
    for _ in range(100):
        i, o = r.integers(0, 60, 60), r.integers(0, 80, 80)
        sub = [{k: v[idx] for k, v in s.items()} for s, idx in zip(sets, (i, o))]
        diffs.append((macro(sub[0], "a") - macro(sub[1], "a"))
                     - (macro(sub[0], "b") - macro(sub[1], "b")))
    assert got["ci"]["low"] == pytest.approx(np.percentile(diffs, 2.5), abs=1e-12)
    p = min(1, 2 * min(np.mean(np.array(diffs) <= 0), np.mean(np.array(diffs) >= 0)))
    # No resample reaching 0 cannot give p = 0: the bound 2 / (B + 1), marked "<".
    assert got["p_bound"] == ("<" if p == 0 else None)
    assert got["p"] == pytest.approx(2 / (len(diffs) + 1) if p == 0 else p, abs=1e-12)
    assert got["verdict"].endswith("at alpha=0.05")


def test_a_comparison_with_no_class_scorable_is_not_tested_rather_than_no_difference():
    """A cross-domain drop with no class scorable in-domain (difference, p: None) had said "no
    detectable difference at alpha=0.05", as if a test had found none."""
    rng = np.random.default_rng(0)
    positive_everywhere = {"labels": np.ones((20, 2), np.float32),   # no negatives: no AUROC
                           "a": rng.random((20, 2)), "b": rng.random((20, 2))}
    mixed = {"labels": (rng.random((30, 2)) < 0.5).astype(np.float32),
             "a": rng.random((30, 2)), "b": rng.random((30, 2))}
    drop = paired.paired_drop_difference(positive_everywhere, mixed, ["x", "y"], n_resamples=20)
    assert drop["difference"] is None and drop["p"] is None and drop["n_valid"] == 0
    assert drop["verdict"] == ("not tested: no class scorable both in-domain and out of "
                               "domain")
    macro = paired.compare_predictions(positive_everywhere["labels"], positive_everywhere["a"],
                                       positive_everywhere["b"], ["x", "y"], n_resamples=20)
    assert macro["macro_auroc"]["difference"] is None
    assert macro["verdict"] == "not tested: no class scorable on these records"
    assert {c.get("skipped") is not None for c in macro["per_class"].values()} == {True}


def _audit_null_sets(rng, n_in):
    """The robustness audit's exact null (A and B exchangeable): an in-domain test set as small
    as compare's documented example makes it on the 50 CinC records (--split_fractions=0.6,0.2,
    0.2: 3 or 4 records, 1 and 2 positives), 20 out-of-domain records."""
    y_in = np.zeros((n_in, 2))
    y_in[0, 0] = 1
    y_in[:2, 1] = 1
    y_out = np.zeros((20, 2))
    y_out[:5, 0] = 1
    y_out[:16, 1] = 1
    s = lambda y, k: k * y + rng.normal(size=y.shape)  # noqa: E731
    return ({"labels": y_in, "a": s(y_in, 1.5), "b": s(y_in, 1.5)},
            {"labels": y_out, "a": s(y_out, 0.7), "b": s(y_out, 0.7)})


def test_the_docs_robustness_example_on_tiny_sets_is_not_tested_rather_than_significant():
    """On 3 in-domain records (1 positive of c0) the drop test rejected this exact null 13% of
    the time at alpha 0.05 (4 records: 9%): "A more robust, p=0.015" on the docs' example. With
    fewer than DROP_MIN_PER_CLASS positive or negative patients of a class it is not tested."""
    rng = np.random.default_rng(7)
    for seed in range(40):
        sets = _audit_null_sets(rng, 3 + seed % 2)
        got = paired.paired_drop_difference(*sets, ["c0", "c1"], n_resamples=200, seed=seed)
        assert got["p"] is None and got["n_valid"] == 0, seed
        assert got["verdict"] == (
            "not tested: no class has >= 5 positive and 5 negative patients in both test "
            "sets; first short: c0 (the in-domain test set has 1 positive and "
            f"{2 + seed % 2} negative patients)")
        assert [b["class"] for b in got["classes_below_floor"]] == ["c0", "c1"]
        # The drops themselves are still reported (the cross-domain table shows them).
        macro = [np.mean([roc_auc_score(s["labels"][:, c], s["a"][:, c]) for c in range(2)])
                 for s in sets]
        assert got["drop_a"] == pytest.approx(macro[0] - macro[1], abs=1e-12)


def test_the_drop_tests_floor_counts_patients_in_both_sets():
    """Five positive records of ONE patient are one positive patient: refused; the out-of-domain
    set is held to the same floor."""
    y = np.zeros((12, 1))
    y[:5] = 1
    scores = np.linspace(0, 1, 12)[:, None]
    ok = {"labels": y, "a": scores, "b": scores[::-1]}
    one_patient = {**ok, "groups": ["p"] * 5 + [f"q{i}" for i in range(7)]}
    assert paired._below_floor([ok, ok], ["c"]) == []
    got = paired.paired_drop_difference(ok, one_patient, ["c"], n_resamples=10)
    assert got["verdict"] == (
        "not tested: no class has >= 5 positive and 5 negative patients in both test sets; "
        "first short: c (the out-of-domain test set has 1 positive and 7 negative patients)")
    assert got["classes_below_floor"] == [{"class": "c", "test_set": "out-of-domain",
                                           "positives": 1, "negatives": 7}]


def _drop_differences_by_hand(sets, seed, n_resamples):
    """scikit-learn's drop differences (a's drop minus b's) of class 0 over the same draws as
    paired_drop_difference, a resample in which a set has one label value discarded."""
    auc = lambda s, m, idx: roc_auc_score(s["labels"][idx, 0], s[m][idx, 0])  # noqa: E731
    (n_in, n_out), r, diffs = (len(s["labels"]) for s in sets), np.random.default_rng(seed), []
    for _ in range(n_resamples):
        i, o = r.integers(0, n_in, n_in), r.integers(0, n_out, n_out)
        if any(len(set(s["labels"][idx, 0])) < 2 for s, idx in zip(sets, (i, o))):
            continue
        diffs.append(auc(sets[0], "a", i) - auc(sets[1], "a", o)
                     - auc(sets[0], "b", i) + auc(sets[1], "b", o))
    return diffs


def test_a_class_below_the_drop_floor_leaves_the_set_and_the_others_are_tested():
    """One rare class (2 positives in-domain) had refused the whole drop test. It now leaves
    the fixed set (listed in classes_below_floor) and the test runs on the others; the drops
    and the bootstrap are those of the remaining class alone (scikit-learn, same draws)."""
    rng = np.random.default_rng(5)
    sets = []
    for n in (12, 14):
        labels = np.zeros((n, 2))
        labels[:6, 0] = 1                       # x: 6 positives, >= 6 negatives: at the floor
        labels[:2, 1] = 1                       # rare: 2 positives, below it
        sets.append({"labels": labels, "a": labels + rng.normal(size=(n, 2)),
                     "b": 0.5 * labels + rng.normal(size=(n, 2))})
    got = paired.paired_drop_difference(sets[0], sets[1], ["x", "rare"], n_resamples=200,
                                        seed=4)
    assert got["classes"] == ["x"]
    assert got["classes_below_floor"] == [{"class": "rare", "test_set": "in-domain",
                                           "positives": 2, "negatives": 10}]
    auc = lambda s, m, idx: roc_auc_score(s["labels"][idx, 0], s[m][idx, 0])  # noqa: E731
    every = [np.arange(12), np.arange(14)]
    drop_a = auc(sets[0], "a", every[0]) - auc(sets[1], "a", every[1])
    assert got["drop_a"] == pytest.approx(drop_a, abs=1e-12)
    diffs = _drop_differences_by_hand(sets, seed=4, n_resamples=200)
    assert got["n_valid"] == len(diffs) > 0
    assert got["ci"]["low"] == pytest.approx(np.percentile(diffs, 2.5), abs=1e-12)
    assert not got["verdict"].startswith("not tested")


def test_a_drop_test_with_no_valid_resample_says_so():
    """n_valid = 0 with a fixed class set: no resample could score EVERY class of the set (it
    had said "no class scorable on any resample")."""
    y = np.zeros((10, 1))
    y[:5] = 1
    s = {"labels": y, "a": np.linspace(0, 1, 10)[:, None], "b": np.zeros((10, 1))}
    got = paired.paired_drop_difference(s, s, ["c"], n_resamples=0)
    assert got["n_valid"] == 0 and got["p"] is None
    assert got["verdict"] == "not tested: no resample could score every class of the fixed set"


def test_the_drop_tests_class_set_is_fixed_and_a_resample_losing_one_is_discarded():
    """The classes are those scorable on both full sets (y is not: no out-of-domain positive),
    the same in every resample: a resample in which x has no positive or no negative is
    discarded, never scored on fewer classes (a different statistic). Reproduced with
    scikit-learn over the same draws."""
    rng = np.random.default_rng(11)
    sets = []
    for n, n_pos_y in ((10, 5), (11, 0)):
        labels = np.zeros((n, 2))
        labels[:5, 0] = 1                       # x: 5 positives of 10 (11), at the floor
        labels[:n_pos_y, 1] = 1
        sets.append({"labels": labels, "a": labels + rng.normal(size=(n, 2)),
                     "b": 0.5 * labels + rng.normal(size=(n, 2))})
    got = paired.paired_drop_difference(sets[0], sets[1], ["x", "y"], n_resamples=1000, seed=2)
    assert got["classes"] == ["x"]
    diffs = _drop_differences_by_hand(sets, seed=2, n_resamples=1000)
    assert 900 < got["n_valid"] == len(diffs) < 1000   # some resamples were discarded
    assert got["ci"]["low"] == pytest.approx(np.percentile(diffs, 2.5), abs=1e-12)
    diffs = np.array(diffs)
    p = min(1, 2 * min(np.mean(diffs <= 0), np.mean(diffs >= 0)))
    assert got["p"] == pytest.approx(p if p else 2 / (len(diffs) + 1), abs=1e-12)


def test_delong_with_zero_variance_is_not_testable_rather_than_certain():
    """A perfect A against a constant B: every placement equal within each model, variance 0.
    It had given z = inf, p = 0, "A better" on two positives (and Infinity in report.json)."""
    y = np.r_[np.ones(2), np.zeros(40)]
    a = np.r_[0.9, 0.95, np.linspace(0.1, 0.8, 40)]
    b = np.full(42, 0.999)
    got = paired.delong(y, a, b)
    assert got["difference"] == pytest.approx(0.5) and got["variance"] == 0.0
    assert got["p"] is None and got["z"] is None and got["not_testable"] == "zero_variance"
    # Below 100 of each the permutation test decides; it needs no variance estimate.
    out = paired.compare_predictions(y[:, None], a[:, None], b[:, None], ["c"], n_resamples=20)
    entry = out["per_class"]["c"]
    assert entry["test"] == "permutation" and entry["p_delong"] is None
    assert entry["p"] == pytest.approx(reference_exchange_p(y, a, b, seed=[0, 0])[1], abs=1e-12)
    assert entry["p"] > 0.05 and entry["verdict"] == "no detectable difference at alpha=0.05"
    # At 100 of each DeLong's test decides, and its zero variance leaves the class untested.
    y, a = np.r_[np.ones(100), np.zeros(100)], np.r_[np.ones(100), np.zeros(100)]
    out = paired.compare_predictions(y[:, None], a[:, None], np.full((200, 1), 0.5), ["c"],
                                     n_resamples=20)
    assert out["per_class"]["c"]["verdict"] == (
        "not tested: zero_variance (DeLong's variance estimate is 0)")
    same = paired.delong(y, a, a)
    assert (same["p"], same["z"], same["not_testable"]) == (1.0, 0.0, None)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_probability_is_an_error_naming_the_model_and_count(bad):
    """A NaN had made the class's AUROC NaN and dropped it from the bootstrap's macro figure."""
    rng = np.random.default_rng(0)
    labels = (rng.random((30, 2)) < 0.5).astype(np.float32)
    a, b = rng.random((30, 2)), rng.random((30, 2))
    b[[3, 7], 1] = bad
    with pytest.raises(ValueError, match=r"^model B: 2 of 60 scores are NaN or infinite"):
        paired.compare_predictions(labels, a, b, ["x", "y"], n_resamples=20)
    with pytest.raises(ValueError, match=r"^model B \(out-of-domain\): 2 of 60 scores"):
        paired.paired_drop_difference({"labels": labels, "a": a, "b": a},
                                      {"labels": labels, "a": a, "b": b}, ["x", "y"])


def test_per_class_verdicts_are_decided_on_holm_adjusted_p_values():
    """Two models of independent random scores, 10 classes of 12 positives in 80 records, one
    class with a single positive (no test) and one with 9. Every tested class has fewer than
    100 positives, so its p is the permutation test's (reference_exchange_p, class c's
    exchanges from seed [0, c]), DeLong's beside it. Two raw p-values are below 0.05; after
    Holm's correction over the 11 tested classes (by hand) one is."""
    rng = np.random.default_rng(50)
    y = np.zeros((80, 12))
    for c in range(10):
        y[rng.choice(80, 12, replace=False), c] = 1
    a, b = (np.c_[rng.random((80, 10)), np.linspace(0, 1, 80), np.zeros(80)] for _ in range(2))
    y[5, 10] = 1
    few = np.random.default_rng(7)
    y[few.choice(80, 9, replace=False), 11] = 1
    a[:, 11], b[:, 11] = few.random(80), few.random(80)
    names = [f"c{c}" for c in range(12)]
    out = paired.compare_predictions(y, a, b, names, n_resamples=20)
    tested = [c for c in range(12) if c != 10]
    raw = {c: reference_exchange_p(y[:, c], a[:, c], b[:, c], seed=[0, c])[1] for c in tested}
    order = sorted(tested, key=raw.get)
    assert raw[order[0]] < raw[order[1]] < 0.05 < raw[order[2]]
    adjusted, running = {}, 0.0
    for rank, c in enumerate(order):  # Holm by hand: the i-th smallest x (11 - i), running max
        running = max(running, min(1.0, (11 - rank) * raw[c]))
        adjusted[c] = running
    assert adjusted[order[0]] < 0.05 < adjusted[order[1]]
    assert out["per_class_tests"] == 11 and out["per_class"]["c10"] == {"skipped": "one_positive"}
    for c in tested:
        entry = out["per_class"][names[c]]
        assert entry["test"] == "permutation" and entry["n_permutations"] == 9999
        assert entry["enumerated"] is False  # 2^G exchanges are more than 9,999: drawn
        assert entry["p"] == pytest.approx(raw[c], abs=1e-12)
        assert entry["p_delong"] == pytest.approx(
            reference_delong(y[:, c], a[:, c], b[:, c])[3], abs=1e-9)
        assert entry["p_holm"] == pytest.approx(adjusted[c], abs=1e-12)
        better = "A" if entry["difference"] > 0 else "B"
        assert entry["verdict"] == (f"{better} better at alpha=0.05" if adjusted[c] < 0.05
                                    else "no detectable difference at alpha=0.05")
    assert out["per_class"]["c11"]["auroc_a"] == pytest.approx(
        roc_auc_score(y[:, 11], a[:, 11]), abs=1e-12)


def test_a_class_with_100_of_each_is_tested_by_delong():
    """At PERMUTATION_BELOW positives and negatives DeLong's normal p decides (no exchange);
    one fewer positive and the permutation test does."""
    rng = np.random.default_rng(4)
    y = np.zeros((260, 2))
    y[:100, 0] = 1
    y[:99, 1] = 1
    a, b = rng.normal(size=(260, 2)), rng.normal(size=(260, 2))
    a[:, :] += 0.3 * y
    out = paired.compare_predictions(y, a, b, ["hundred", "ninety-nine"], n_resamples=20)
    big, small = out["per_class"]["hundred"], out["per_class"]["ninety-nine"]
    assert big["test"] == "delong" and "p_delong" not in big
    assert big["p"] == pytest.approx(reference_delong(y[:, 0], a[:, 0], b[:, 0])[3], abs=1e-9)
    assert small["test"] == "permutation"
    assert small["p"] == pytest.approx(
        reference_exchange_p(y[:, 1], a[:, 1], b[:, 1], seed=[0, 1])[1], abs=1e-12)
