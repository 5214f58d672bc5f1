"""Scoring predictions: the classification metrics of downstream evaluation (AUROC, AUPRC, F1,
bootstrap intervals), in numpy (no scikit-learn at run time). Training throughput and MFU are
another thing: crema_jax/train/perf.py.

Definitions match scikit-learn so numbers are comparable with published tables:
- AUROC: Mann-Whitney U from average ranks, so tied scores count one half (= sklearn's
  trapezoidal `roc_auc_score`).
- AUPRC: average precision with sklearn's step definition, sum_k (R_k - R_{k-1}) P_k over the
  distinct score thresholds (no interpolation).
- F1: per class at a threshold chosen on VALIDATION (`choose_thresholds`), then applied to test.

A class with no positives (or no negatives) in a split has no AUROC: it is listed under
"skipped" with the reason and left out of every macro average, so tables never show NaN.
Scores must be finite (`check_finite`): a NaN or infinite probability is an error naming its
model and count, not a class quietly dropped.

Test figures are per record: a record cut into windows (ST-MEM's data path) is scored once, its
windows' probabilities averaged (`per_record`), as the paired comparisons and the benchmark
score it (a run's AUROC was per window, its comparison's per record: two figures for one model).
"""
from __future__ import annotations

import numpy as np
import scipy.stats

NO_POSITIVES = "no_positives"
NO_NEGATIVES = "no_negatives"


def class_status(y_true: np.ndarray) -> str | None:
    """None when a binary column has both classes, else the reason it cannot be scored."""
    n_pos = int(np.sum(y_true > 0.5))
    if n_pos == 0:
        return NO_POSITIVES
    if n_pos == len(y_true):
        return NO_NEGATIVES
    return None


def check_finite(named: dict) -> None:
    """Every array of {what: scores} must be finite. A NaN or infinite probability means the
    model (or its head) broke: ranked, it gave a class AUROC of NaN next to an AUPRC of 1.0,
    and dropped, a macro figure over fewer classes than the report said. So it is an error
    naming what held it and how many, never a figure."""
    for what, values in named.items():
        values = np.asarray(values, np.float64)
        bad = int(values.size - np.isfinite(values).sum())
        if bad:
            raise ValueError(f"{what}: {bad} of {values.size} scores are NaN or infinite "
                             "(expected finite probabilities; the model's output is broken)")


def _binary(y_true, y_score) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true).reshape(-1) > 0.5
    y_score = np.asarray(y_score, dtype=np.float64).reshape(-1)
    if y_true.shape != y_score.shape:
        raise ValueError(f"labels {y_true.shape} and scores {y_score.shape} differ in length")
    reason = class_status(y_true)
    if reason is not None:
        raise ValueError(f"metric undefined for a class with {reason.replace('_', ' ')}")
    return y_true, y_score


def auroc(y_true, y_score) -> float:
    """Area under the ROC curve of one binary column (ties count 1/2)."""
    y_true, y_score = _binary(y_true, y_score)
    ranks = scipy.stats.rankdata(y_score)  # average ranks handle ties
    n_pos = int(y_true.sum())
    n_neg = len(y_true) - n_pos
    u = ranks[y_true].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def columnwise_auroc(y_true: np.ndarray, y_score: np.ndarray) -> np.ndarray:
    """AUROC of every column at once (NaN where a column lacks a class); used by the bootstrap."""
    ranks = scipy.stats.rankdata(y_score, axis=0)
    pos = y_true > 0.5
    n_pos = pos.sum(0).astype(np.float64)
    n_neg = pos.shape[0] - n_pos
    u = (ranks * pos).sum(0) - n_pos * (n_pos + 1) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


def _threshold_counts(y_true: np.ndarray, y_score: np.ndarray):
    """True/false positives when predicting `score >= t` for each distinct score t, descending."""
    order = np.argsort(-y_score, kind="mergesort")
    s, y = y_score[order], y_true[order]
    last_of_run = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # end of each tie block
    tps = np.cumsum(y)[last_of_run].astype(np.float64)
    fps = (last_of_run + 1) - tps
    return s[last_of_run], tps, fps


def roc_curve(y_true, y_score) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate), starting at (0, 0), for plots."""
    y_true, y_score = _binary(y_true, y_score)
    _, tps, fps = _threshold_counts(y_true, y_score)
    return np.r_[0.0, fps / fps[-1]], np.r_[0.0, tps / tps[-1]]


def average_precision(y_true, y_score) -> float:
    """Area under the precision-recall curve, sklearn's step (non-interpolated) definition."""
    y_true, y_score = _binary(y_true, y_score)
    _, tps, fps = _threshold_counts(y_true, y_score)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def columnwise_auprc(y_true: np.ndarray, y_score: np.ndarray) -> np.ndarray:
    """Average precision of every column (NaN where a column lacks a class)."""
    out = np.full(y_true.shape[1], np.nan)
    for c in range(y_true.shape[1]):
        if class_status(y_true[:, c]) is None:
            out[c] = average_precision(y_true[:, c], y_score[:, c])
    return out


def f1_at(y_true, y_score, threshold) -> float:
    """F1 of the predictions `score >= threshold` (a number, or one per record; 0 when nothing
    is predicted or present)."""
    y_true = np.asarray(y_true).reshape(-1) > 0.5
    pred = np.asarray(y_score).reshape(-1) >= np.asarray(threshold).reshape(-1)
    tp = np.sum(pred & y_true)
    denom = pred.sum() + y_true.sum()
    return float(2.0 * tp / denom) if denom > 0 else 0.0


def best_threshold(y_true, y_score, default: float = 0.5) -> float:
    """The score threshold that maximises F1 on this (validation) column.

    Ties between thresholds keep the highest one (fewest positives). A column without positives
    has no meaningful F1, so it gets `default`.
    """
    y_true = np.asarray(y_true).reshape(-1) > 0.5
    y_score = np.asarray(y_score, dtype=np.float64).reshape(-1)
    if not y_true.any():
        return float(default)
    thresholds, tps, fps = _threshold_counts(y_true, y_score)
    f1 = 2.0 * tps / (tps + fps + y_true.sum())
    return float(thresholds[int(np.argmax(f1))])


def choose_thresholds(labels: np.ndarray, scores: np.ndarray, default: float = 0.5) -> np.ndarray:
    """Per-class F1-optimal thresholds, (C,), chosen on validation labels/scores (n, C)."""
    return np.array([best_threshold(labels[:, c], scores[:, c], default)
                     for c in range(labels.shape[1])], dtype=np.float64)


def classification_report(labels: np.ndarray, scores: np.ndarray, class_names, *,
                          thresholds: np.ndarray | None = None) -> dict:
    """Per-class and macro AUROC/AUPRC/F1 of scores (n, C) against multi-hot labels (n, C).

    thresholds: (C,), or (n, C) when each record has its own (pooled out-of-fold predictions:
    its fold's); a class's "threshold" is then None. Returns plain Python types (JSON-ready).
    Classes that cannot be scored are listed under "skipped" and carry None for their metrics.
    """
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    check_finite({"scores": scores})
    if labels.shape != scores.shape or labels.ndim != 2:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape}: expected equal (n, C)")
    if len(class_names) != labels.shape[1]:
        raise ValueError(f"{len(class_names)} class names for {labels.shape[1]} score columns")
    per_record = thresholds is not None and np.ndim(thresholds) == 2
    per_class, skipped = {}, []
    sums = {"auroc": [], "auprc": [], "f1": []}
    for c, name in enumerate(class_names):
        y, s = labels[:, c], scores[:, c]
        n_pos = int(np.sum(y > 0.5))
        entry = {"n_pos": n_pos, "n_neg": int(len(y) - n_pos),
                 "auroc": None, "auprc": None, "f1": None, "threshold": None}
        reason = class_status(y)
        if reason is not None:
            skipped.append({"class": name, "reason": reason})
        else:
            entry["auroc"] = auroc(y, s)
            entry["auprc"] = average_precision(y, s)
            sums["auroc"].append(entry["auroc"])
            sums["auprc"].append(entry["auprc"])
            if thresholds is not None:
                column = np.asarray(thresholds)[..., c]
                entry["threshold"] = None if per_record else float(column)
                entry["f1"] = f1_at(y, s, column)
                sums["f1"].append(entry["f1"])
        per_class[name] = entry
    return {
        "n": int(labels.shape[0]),
        "macro_auroc": macro_over_scorable(sums["auroc"]),
        "macro_auprc": macro_over_scorable(sums["auprc"]),
        "macro_f1": macro_over_scorable(sums["f1"]),
        "n_scored_classes": len(sums["auroc"]),
        "per_class": per_class,
        "skipped": skipped,
    }


def macro_over_scorable(values) -> float | None:
    """A macro figure: the mean of per-class `values` over the scorable classes (the finite
    ones: a columnwise_* NaN is a class without a positive or a negative); None when there is
    none. Every macro AUROC, AUPRC and F1 is this."""
    values = np.asarray(values, np.float64).reshape(-1)
    scored = values[np.isfinite(values)]
    return float(scored.mean()) if len(scored) else None


def macro_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Macro AUROC over the scorable columns; NaN only when no column is scorable."""
    value = macro_over_scorable(columnwise_auroc(np.asarray(labels),
                                                 np.asarray(scores, dtype=np.float64)))
    return float("nan") if value is None else value


# ------------------------------------------------------------------ choosing a head on validation
BY_AUROC = "validation macro AUROC"
BY_LOSS = "validation loss (no class scorable on the validation records)"


def validation_loss(labels: np.ndarray, probs: np.ndarray, label_type: str) -> float:
    """Mean over records of the cross-entropy of the predicted probabilities: summed over
    classes of the binary CE (multilabel) or the softmax CE (multiclass); p clipped to
    [1e-7, 1 - 1e-7]."""
    y = np.asarray(labels, np.float64)
    p = np.clip(np.asarray(probs, np.float64), 1e-7, 1 - 1e-7)
    if label_type == "multiclass":
        return float(np.mean(-np.sum(y * np.log(p), -1)))
    return float(np.mean(-np.sum(y * np.log(p) + (1 - y) * np.log1p(-p), -1)))


def validation_key(labels: np.ndarray, probs: np.ndarray, label_type: str) -> dict:
    """How a candidate head (an L2 strength, an epoch) did on the validation records:
    {"macro_auroc" (None when no class is scorable), "loss", "key"}. The best candidate has
    the largest key: higher macro AUROC (to 1e-9), then lower validation loss; a candidate
    with no AUROC ranks below every one with one, so with no class scorable on validation the
    loss alone chooses (`chosen_by` says which)."""
    auroc = macro_auroc(labels, probs)
    loss = validation_loss(labels, probs, label_type)
    return {"macro_auroc": None if np.isnan(auroc) else float(auroc), "loss": loss,
            "key": (-np.inf if np.isnan(auroc) else round(float(auroc), 9), -loss)}


def chosen_by(candidate: dict) -> str:
    """BY_AUROC, or BY_LOSS when the chosen candidate had no validation macro AUROC."""
    return BY_AUROC if candidate["macro_auroc"] is not None else BY_LOSS


def best_on_validation(candidates: list[dict]) -> int:
    """The index of the largest validation_key (the first of equal ones)."""
    return max(range(len(candidates)), key=lambda i: (candidates[i]["key"], -i))


class Groups:
    """Records grouped for resampling (patients), groups in order of first appearance; None:
    every record its own group, so a resample draws records. `ids`: each record's group, 0 to
    G - 1."""

    def __init__(self, n: int, groups=None):
        if groups is None:
            self.ids = self.flat = self.starts = np.arange(n)
            self.sizes = np.ones(n, np.int64)
            return
        _, first, inverse = np.unique(np.asarray(groups), return_index=True,
                                      return_inverse=True)
        rank = np.empty(len(first), np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(len(first))
        self.ids = rank[inverse]
        self.flat = np.argsort(rank[inverse], kind="stable")   # records, group by group
        self.sizes = np.bincount(rank[inverse])
        self.starts = np.r_[0, np.cumsum(self.sizes)[:-1]]

    def __len__(self) -> int:
        return len(self.sizes)

    def resample(self, rng: np.random.Generator) -> np.ndarray:
        """One bootstrap resample: G of the G groups drawn with replacement (rng.integers(0, G,
        G)), their records concatenated in draw order (each group's in record order)."""
        draw = rng.integers(0, len(self), size=len(self))
        sizes = self.sizes[draw]
        within = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        return self.flat[np.repeat(self.starts[draw], sizes) + within]


def bootstrap_ci(labels: np.ndarray, scores: np.ndarray, metric_fn=macro_auroc, *,
                 n_resamples: int = 1000, seed: int = 0, alpha: float = 0.05,
                 groups=None) -> dict:
    """Percentile bootstrap confidence interval of `metric_fn(labels, scores)`.

    Records (or, with `groups`, patients: all of a patient's records together) are resampled
    with replacement (seeded); resamples where the metric is undefined (NaN) are dropped and
    counted, never averaged in.
    """
    labels, scores = np.asarray(labels), np.asarray(scores)
    check_finite({"scores": scores})
    resampler = Groups(labels.shape[0], groups)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_resamples):
        idx = resampler.resample(rng)
        value = metric_fn(labels[idx], scores[idx])
        if np.isfinite(value):
            values.append(value)
    return {**percentile_ci(values, alpha), "n_resamples": n_resamples, "n_valid": len(values),
            "alpha": alpha, "seed": seed}


def percentile_ci(values, alpha: float) -> dict:
    """The percentile interval {"low", "high"} of resampled `values`: their alpha / 2 and
    1 - alpha / 2 quantiles, linearly interpolated between order statistics (np.percentile's
    default, Hyndman and Fan's type 7); None for both without a value."""
    if not len(values):
        return {"low": None, "high": None}
    low, high = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return {"low": float(low), "high": float(high)}


def per_record(rows, *arrays) -> tuple:
    """(the records of `rows`, sorted; each of `arrays` averaged over each record's rows): a
    record's windows share its labels (and its fold's thresholds), their probabilities are
    averaged."""
    records, inverse = np.unique(np.asarray(rows, np.int64), return_inverse=True)
    counts = np.bincount(inverse, minlength=len(records)).astype(np.float64)
    out = []
    for array in arrays:
        array = np.asarray(array, np.float64)
        total = np.zeros((len(records),) + array.shape[1:])
        np.add.at(total, inverse, array)
        out.append(total / counts.reshape((-1,) + (1,) * (array.ndim - 1)))
    return (records, *out)


def report_on_test(probs_val, labels_val, probs_test, labels_test, classes, *, bootstrap: int,
                seed: int, groups=None) -> dict:
    """A head's test metrics: F1 thresholds chosen on validation, plus the bootstrap 95% CI of
    the macro AUROC (test records, or with `groups` their patients, resampled)."""
    thresholds = choose_thresholds(labels_val, probs_val)
    test = classification_report(labels_test, probs_test, classes, thresholds=thresholds)
    test["ci"] = bootstrap_ci(labels_test, probs_test, n_resamples=bootstrap, seed=seed,
                              groups=groups)
    return test
