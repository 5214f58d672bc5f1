"""Paired tests of two models scored on the SAME records: is a difference real?

- Per class: AUROC(A) - AUROC(B) with DeLong's variance and CI, DeLong, DeLong &
  Clarke-Pearson (1988), in the fast midrank form of Sun & Xu (2014): each record's placement
  value (the fraction of the other class it outranks, ties one half) for each model;
  var(AUC_A - AUC_B) = S10/m + S01/n from the covariances of the two models' placements over
  the m positives (S10) and the n negatives (S01); CI difference +- z_(1-alpha/2) sd. The p-value
  is DeLong's two-sided normal one where the class has at least PERMUTATION_BELOW positives and
  negatives; below, where that normal approximation rejects a true null too often, it is the
  paired permutation test's (permutation.py: the two models' ranks exchanged within patients).
- Macro figures: a paired bootstrap. Each resample draws patients with replacement (all of a
  patient's records together, scoring.Groups) and scores BOTH models on that same resample;
  the statistic is macro(A) - macro(B) over the classes the resample can score.
  CI: percentiles alpha/2 and 1 - alpha/2 (numpy's linear interpolation). p = min(1,
  2 min(P*(d <= 0), P*(d >= 0))) over the resamples (|d| <= 1e-12 counts as 0: equal AUROCs
  but for rounding): the alpha at which the percentile CI reaches 0, so "p < alpha" and "the
  CI excludes 0" agree (up to that interpolation). A bootstrap cannot give p = 0: when no
  resample reaches 0, p is the bound 2 / (B + 1) with "p_bound": "<" (DeLong's p-values are
  exact: "p_bound": null).
- Verdict at alpha: "A better" / "B better" when p < alpha (a class's: its p after Holm's
  correction over the classes of the comparison), else "no detectable difference";
  "not tested: ..." when no class (or no resample) could be scored, or (the drop test) no class
  reaches its floor.
"""
from __future__ import annotations

import numpy as np
import scipy.stats

from crema_jax.evaluate import permutation, scoring, texts
from crema_jax.evaluate.holm import holm

ALPHA = 0.05


# The verdict of a comparison no class could be scored in (or no resample): nothing was tested.
# It had read "no detectable difference", as if a test had found none.
NOT_TESTED = "not tested: no class scorable"


def verdict(difference: float | None, p: float | None, alpha: float,
            untested: str = NOT_TESTED) -> str:
    if difference is None or p is None:
        return untested
    if p >= alpha or difference == 0:
        return f"no detectable difference at alpha={alpha:g}"
    return f"{'A' if difference > 0 else 'B'} better at alpha={alpha:g}"


def _placements(y: np.ndarray, scores: np.ndarray):
    """(AUC per model (k,), positives' placements (k, m), negatives' placements (k, n)) from
    midranks: a positive's placement is the fraction of negatives below it (ties 1/2)."""
    pos, neg = scores[:, y], scores[:, ~y]
    m, n = pos.shape[1], neg.shape[1]
    rank_all = scipy.stats.rankdata(np.concatenate([pos, neg], 1), axis=1)
    rank_pos = scipy.stats.rankdata(pos, axis=1)
    rank_neg = scipy.stats.rankdata(neg, axis=1)
    v_pos = (rank_all[:, :m] - rank_pos) / n
    v_neg = 1.0 - (rank_all[:, m:] - rank_neg) / m
    auc = (rank_all[:, :m].sum(1) - m * (m + 1) / 2.0) / (m * n)
    return auc, v_pos, v_neg


# DeLong's variance needs the spread of at least two positives' (and negatives') placements:
# with one, S10 is undefined, and taking it as 0 left out the term that dominates (two models
# of independent random scores, 49 records, alpha 0.05: 69% of such tests said "better").
MIN_PER_CLASS = 2
# A nonzero difference whose estimated variance is 0 (every positive's and negative's placement
# the same within each model, as a constant-score model's are) cannot be tested: it is not a
# difference known without error.
ZERO_VARIANCE = "zero_variance"


# Below this many positives (or negatives) a class's p is the permutation test's, not DeLong's.
# Two models of independent random scores, alpha 0.05 (`python bench/calibration.py`,
# docs/benchmarks.md): in 60 records DeLong rejected 17% of the tests with 3 positives, 10%
# with 5, 7.6% with 10, 5.8% with 20 and 30; the permutation test 0.0%, 5.1%, 4.9%, 5.2%, 5.2%.
# In 300 records: DeLong 7.1% with 10 and 5.6% with 30, the permutation test 4.5% and 5.0%;
# with 100, DeLong 5.7% (binomial se 0.5%). Above, DeLong's costs nothing; the permutation
# test's cost grows with the smaller class.
PERMUTATION_BELOW = 100


def delong_status(y_true) -> str | None:
    """None when DeLong's test is defined for the column, else the reason it is not."""
    y = np.asarray(y_true).reshape(-1) > 0.5
    reason = scoring.class_status(y)
    if reason is None and min(int(y.sum()), int((~y).sum())) < MIN_PER_CLASS:
        reason = ("one_positive" if y.sum() < MIN_PER_CLASS else "one_negative")
    return reason


def delong(y_true, scores_a, scores_b, *, alpha: float = ALPHA) -> dict:
    """DeLong's test of AUC_A - AUC_B for one binary column scored by two models (at least
    MIN_PER_CLASS positives and negatives)."""
    y = np.asarray(y_true).reshape(-1) > 0.5
    reason = delong_status(y)
    if reason is not None:
        raise ValueError(f"DeLong's test is undefined for a class with "
                         f"{reason.replace('_', ' ')}")
    scoring.check_finite({"model A": scores_a, "model B": scores_b})
    scores = np.stack([np.asarray(scores_a, np.float64).reshape(-1),
                       np.asarray(scores_b, np.float64).reshape(-1)])
    if scores.shape[1] != len(y):
        raise ValueError(f"labels ({len(y)}) and scores {scores.shape[1:]} differ in length")
    auc, v_pos, v_neg = _placements(y, scores)
    m, n = v_pos.shape[1], v_neg.shape[1]
    cov = np.cov(v_pos) / m + np.cov(v_neg) / n
    diff = float(auc[0] - auc[1])
    var = float(max(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1], 0.0))
    sd = np.sqrt(var)
    out = {"auroc_a": float(auc[0]), "auroc_b": float(auc[1]), "difference": diff,
           "variance": var, "z": None, "p": None, "p_bound": None,
           "ci": {"low": None, "high": None}, "n_pos": int(m), "n_neg": int(n),
           "not_testable": None}
    if sd > 0:
        half = float(scipy.stats.norm.ppf(1 - alpha / 2) * sd)
        out.update(z=diff / sd, p=float(2 * scipy.stats.norm.sf(abs(diff / sd))),
                   ci={"low": diff - half, "high": diff + half})
    elif diff == 0:  # both models rank every pair alike: no difference, exactly
        out.update(z=0.0, p=1.0, ci={"low": 0.0, "high": 0.0})
    else:  # e.g. a perfect A against a constant B: the variance estimate degenerates to 0
        out["not_testable"] = ZERO_VARIANCE  # (it had given z = inf, p = 0: "A better")
    return out


def _percentile_test(values: np.ndarray, alpha: float) -> tuple[dict, float | None, str | None]:
    """(percentile CI, p-value, p_bound) of bootstrap differences (module docstring). When no
    resample reaches 0 the resampling cannot resolve p: it is reported as the bound
    p < 2 / (B + 1) (B valid resamples; two-sided, each side < 1 / (B + 1)), p_bound "<"."""
    ci = scoring.percentile_ci(values, alpha)
    if not len(values):
        return ci, None, None
    # Two AUROCs equal in exact arithmetic can differ by rounding (1e-17) in floating point;
    # such a resample is a tie and counts on both sides, whatever the sign of its rounding.
    tie = np.abs(values) <= permutation.TIE
    p = float(min(1.0, 2 * min(np.mean((values <= 0) | tie), np.mean((values >= 0) | tie))))
    if p == 0.0:
        return ci, 2.0 / (len(values) + 1), "<"
    return ci, p, None


MACRO_METRICS = {"macro_auroc": scoring.columnwise_auroc,
                 "macro_auprc": scoring.columnwise_auprc}


def paired_bootstrap(labels, scores_a, scores_b, *, metric: str = "macro_auroc", groups=None,
                     n_resamples: int = 1000, seed: int = 0, alpha: float = ALPHA) -> dict:
    """Macro(A) - macro(B) with its paired-bootstrap CI and p-value (module docstring)."""
    labels = np.asarray(labels) > 0.5
    scoring.check_finite({"model A": scores_a, "model B": scores_b})
    scores_a, scores_b = np.asarray(scores_a, np.float64), np.asarray(scores_b, np.float64)
    columnwise = MACRO_METRICS[metric]

    def difference(idx):
        # The labels decide which classes are scorable, so the same classes for both models.
        a = scoring.macro_over_scorable(columnwise(labels[idx], scores_a[idx]))
        b = scoring.macro_over_scorable(columnwise(labels[idx], scores_b[idx]))
        if a is None:
            return np.nan, np.nan, np.nan
        return a, b, a - b

    a, b, diff = difference(np.arange(len(labels)))
    resampler = scoring.Groups(len(labels), groups)
    rng = np.random.default_rng(seed)
    values = np.array([difference(resampler.resample(rng))[2] for _ in range(n_resamples)])
    values = values[np.isfinite(values)]
    out = {"a": None if np.isnan(a) else a, "b": None if np.isnan(b) else b,
           "difference": None if np.isnan(diff) else diff, "ci": {"low": None, "high": None},
           "p": None, "p_bound": None, "n_resamples": n_resamples,
           "n_valid": int(len(values)), "seed": seed, "alpha": alpha}
    if out["difference"] is not None:
        out["ci"], out["p"], out["p_bound"] = _percentile_test(values, alpha)
    out["verdict"] = verdict(out["difference"], out["p"], alpha,
                             f"{NOT_TESTED} on these records")
    return out


def _untested(entry: dict) -> str:
    """The verdict of a class DeLong's test does not decide."""
    return f"not tested: {entry['not_testable']} (DeLong's variance estimate is 0)"


def class_test(y_true, scores_a, scores_b, *, groups=None, seed=0, alpha: float = ALPHA,
               n_permutations: int = permutation.N_PERMUTATIONS) -> dict:
    """One class's paired test (module docstring): DeLong's entry (`delong`) with `test`
    "delong", or, below PERMUTATION_BELOW positives or negatives, its `p` the permutation
    test's (`test` "permutation", `n_permutations`, `enumerated`, `p_delong` DeLong's p beside
    it; a zero DeLong variance does not stop it). `p_holm` is left None for the caller's
    family."""
    entry = {**delong(y_true, scores_a, scores_b, alpha=alpha), "test": "delong", "p_holm": None}
    if min(entry["n_pos"], entry["n_neg"]) >= PERMUTATION_BELOW:
        return entry
    exchanged = permutation.auroc_difference(y_true, scores_a, scores_b, groups=groups,
                                             n_permutations=n_permutations, seed=seed)
    entry.update(test="permutation", p_delong=entry["p"], p=exchanged["p"], not_testable=None,
                 n_permutations=exchanged["n_permutations"],
                 enumerated=exchanged["enumerated"])
    return entry


def compare_predictions(labels, probs_a, probs_b, classes, *, groups=None, alpha: float = ALPHA,
                        n_resamples: int = 1000, seed: int = 0,
                        n_permutations: int | None = None,
                        metrics: tuple = tuple(MACRO_METRICS)) -> dict:
    """Per-class paired tests (`class_test`; class c's permutations drawn from seed [seed, c],
    n_permutations by default permutation.enough_for the comparison's classes)
    and paired-bootstrap differences of the macro `metrics` (AUROC, AUPRC) of two models'
    predictions on the same records (rows aligned); the verdict is the macro AUROC's, which
    `metrics` must hold. A caller that keeps only the macro AUROC leaves out the AUPRC's
    bootstrap: it was two thirds of the benchmark leaderboard's time, then thrown away.

    A class's verdict is decided on its Holm-adjusted p (`p_holm`; Holm's correction over the
    `per_class_tests` classes of this comparison with a p), its raw p beside it: ten
    unadjusted tests between two near-random models had called one class in ten "better"."""
    labels = np.asarray(labels)
    scoring.check_finite({"model A": probs_a, "model B": probs_b})
    if "macro_auroc" not in metrics or not set(metrics) <= set(MACRO_METRICS):
        raise ValueError(f"metrics={list(metrics)}: expected 'macro_auroc' and any of "
                         f"{list(MACRO_METRICS)}")
    if n_permutations is None:
        n_permutations = permutation.enough_for(len(classes), alpha)
    per_class = {}
    for c, name in enumerate(classes):
        reason = delong_status(labels[:, c])
        if reason is not None:
            per_class[name] = {"skipped": reason}
            continue
        per_class[name] = class_test(labels[:, c], probs_a[:, c], probs_b[:, c], groups=groups,
                                     seed=[seed, c], alpha=alpha, n_permutations=n_permutations)
    tested = [e for e in per_class.values() if e.get("p") is not None and not e["not_testable"]]
    for entry, adjusted in zip(tested, holm([e["p"] for e in tested])):
        entry["p_holm"] = adjusted
    for entry in per_class.values():
        if "skipped" not in entry:
            entry["verdict"] = verdict(entry["difference"], entry["p_holm"], alpha,
                                       _untested(entry))
    macro = {metric: paired_bootstrap(labels, probs_a, probs_b, metric=metric, groups=groups,
                                      n_resamples=n_resamples, seed=seed, alpha=alpha)
             for metric in metrics}
    return {"n": int(len(labels)), "alpha": alpha, "per_class": per_class,
            "per_class_tests": len(tested), **macro,
            "verdict": macro["macro_auroc"]["verdict"]}


# The robustness test's floor: a class enters its fixed set only with this many positive and
# this many negative patients in the in-domain AND in the out-of-domain test set; a class short
# of it is left out (`classes_below_floor`) and the test is refused ("not tested: ...") only
# when no class is left. Below it, on the CinC sample's 3-4 in-domain records (1-2 positives
# a class), the test rejected an exact null 13% (3 records) and 9% (4) of the time at alpha
# 0.05; at this floor, 5.5% and 5.0% (600 draws each; docs/evaluation.md).
DROP_MIN_PER_CLASS = 5


def _below_floor(sets, classes) -> list[dict]:
    """The classes with fewer than DROP_MIN_PER_CLASS positive or negative patients in either
    set, each with the first set short of it: {"class", "test_set", "positives", "negatives"}."""
    below = {}
    for where, s in zip(("in-domain", "out-of-domain"), sets):
        y = np.asarray(s["labels"]) > 0.5
        keys = np.arange(len(y)) if s.get("groups") is None else np.asarray(s["groups"])
        for c, name in enumerate(classes):
            n_pos, n_neg = len(np.unique(keys[y[:, c]])), len(np.unique(keys[~y[:, c]]))
            if min(n_pos, n_neg) < DROP_MIN_PER_CLASS and name not in below:
                below[name] = {"class": name, "test_set": where, "positives": n_pos,
                               "negatives": n_neg}
    return [below[name] for name in classes if name in below]


def _floor_refusal(below: list[dict]) -> str:
    return (f"not tested: no class has >= {DROP_MIN_PER_CLASS} positive and "
            f"{DROP_MIN_PER_CLASS} negative patients in both test sets; first short: "
            f"{texts.below_floor_text(below[0])}")


def paired_drop_difference(in_domain: dict, out_of_domain: dict, classes, *, alpha=ALPHA,
                           n_resamples: int = 1000, seed: int = 0) -> dict:
    """(in-domain - out-of-domain macro AUROC) of A minus that of B, with a paired bootstrap.

    in_domain / out_of_domain: {"labels", "a", "b", "groups"} of two disjoint record sets. The
    class set is fixed once: the classes scorable in both full sets (the drop of
    protocols.common_class_macro) with DROP_MIN_PER_CLASS positive and negative patients in
    each; the others are listed in `classes_below_floor`. Each resample draws patients of each
    set (in-domain first, from one seeded generator) and scores that same set; a resample in
    which one of its classes has no positive or no negative is discarded (counted:
    n_resamples - n_valid). Refused ("not tested: ...") when no class reaches the floor; the
    drops are then those of every class scorable in both (`classes`)."""
    sets = (in_domain, out_of_domain)
    y = [np.asarray(s["labels"]) > 0.5 for s in sets]
    scoring.check_finite({f"model {m} ({where})": s[m.lower()] for m in "AB"
                  for where, s in zip(("in-domain", "out-of-domain"), sets)})
    resamplers = [scoring.Groups(len(s["labels"]), s.get("groups")) for s in sets]
    common = np.ones(y[0].shape[1], bool)
    for k in range(2):
        common &= np.array([scoring.class_status(y[k][:, c]) is None
                            for c in range(y[k].shape[1])], bool)
    scorable = [c for c, ok in zip(classes, common) if ok]
    below = _below_floor([{**s, "labels": yk[:, common]} for s, yk in zip(sets, y)], scorable)
    short = {b["class"] for b in below}
    tested = common & np.array([c not in short for c in classes], bool)
    fixed = tested if tested.any() else common

    def drops(idx_in, idx_out):
        auc = {m: [scoring.columnwise_auroc(y[k][idx][:, fixed],
                                            np.asarray(sets[k][m])[idx][:, fixed])
                   for k, idx in enumerate((idx_in, idx_out))] for m in ("a", "b")}
        if not all(np.isfinite(v).all() for v in auc["a"]):
            return None  # a class of the fixed set unscorable in this resample
        return {m: float(auc[m][0].mean() - auc[m][1].mean()) for m in auc}

    out = {"drop_a": None, "drop_b": None, "difference": None, "ci": {"low": None, "high": None},
           "p": None, "p_bound": None, "n_resamples": n_resamples, "n_valid": 0, "seed": seed,
           "alpha": alpha, "n_in_domain": int(len(y[0])), "n_out_of_domain": int(len(y[1])),
           "classes": [c for c, ok in zip(classes, fixed) if ok], "classes_below_floor": below}
    if not common.any():
        out["verdict"] = f"{NOT_TESTED} both in-domain and out of domain"
        return out
    observed = drops(np.arange(len(y[0])), np.arange(len(y[1])))
    out.update(drop_a=observed["a"], drop_b=observed["b"],
               difference=observed["a"] - observed["b"])
    if not tested.any():
        out["verdict"] = _floor_refusal(below)
        return out
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_resamples):
        d = drops(resamplers[0].resample(rng), resamplers[1].resample(rng))
        if d is not None:
            values.append(d["a"] - d["b"])
    values = np.asarray(values)
    out["n_valid"] = int(len(values))
    out["ci"], out["p"], out["p_bound"] = _percentile_test(values, alpha)
    # A smaller drop is the better (more robust) model: the verdict names it.
    untested = "not tested: no resample could score every class of the fixed set"
    out["verdict"] = verdict(-out["difference"], out["p"], alpha,
                             untested).replace("better", "more robust")
    return out
