"""K-fold cross-validation: every record tested exactly once, by a head that never saw its patient.

Folds (`stratified_group_folds`) are made over PATIENTS (protocols.patient_keys: a record's
`meta["patient_id"]`, its record id when the layout has none), so all of a patient's records
share one fold, and are stratified by label, greedily (iterative stratification, Sechidis et
al. 2011, over groups):
patients are visited by their rarest class (fewest positives in the dataset), larger patients
first, ties in a seeded random order; each goes to the fold that most lacks that class, then the
fold that most lacks the patient's other classes, then the smallest fold. For one record per
patient and one class per record, every class then has floor(n_c / K) or ceil(n_c / K) records
in each fold, and the fold sizes differ by at most one.

Fold f is the test set of run f; fold f + 1 (mod K) selects its head (the L2 strength, the
fine-tuning epoch, the F1 thresholds); the other K - 2 folds train it. `cross_validate` runs the
K heads and pools their out-of-fold predictions: the pooled figures score every record once.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from crema_jax.evaluate import datasets, protocols, ranges, scoring


def stratified_group_folds(labels: np.ndarray, groups, k: int, *, seed: int = 0,
                           where: str = "--folds") -> np.ndarray:
    """The fold (0..k-1) of every record: label-stratified, patients kept together, seeded.
    `where` names the fold count in the error of a count outside MIN_FOLDS..patients."""
    positives = np.asarray(labels) > 0.5
    groups = np.asarray(groups)
    if positives.ndim != 2 or len(positives) != len(groups):
        raise ValueError(f"labels {positives.shape} and groups {groups.shape}: expected (n, C) "
                         "and (n,)")
    names, inverse = np.unique(groups, return_inverse=True)
    n_groups = len(names)
    if not ranges.MIN_FOLDS <= k <= n_groups:  # it had said "expected 2 <= folds"
        raise ValueError(f"{where}={k}: expected {ranges.MIN_FOLDS} to {n_groups}, the number of "
                         "patients (patient_id, else record id): a patient's records share a "
                         "fold")
    counts = np.zeros((n_groups, positives.shape[1]))
    np.add.at(counts, inverse, positives)
    sizes = np.bincount(inverse, minlength=n_groups).astype(np.float64)
    totals = counts.sum(0)
    rarity = np.where(counts > 0, totals[None, :], np.inf)
    key_class = np.where(counts.any(1), np.argmin(rarity, 1), -1)
    key_total = np.where(key_class >= 0, rarity.min(1), np.inf)
    tiebreak = np.random.default_rng(seed).permutation(n_groups)
    order = np.lexsort((tiebreak, -sizes, key_class, key_total))

    want_class, want_size = totals / k, len(groups) / k
    have_class, have_size = np.zeros((k, len(totals))), np.zeros(k)
    group_fold = np.empty(n_groups, np.int64)
    for g in order:
        need = want_class[None, :] - have_class                   # (k, C)
        need_key = need[:, key_class[g]] if key_class[g] >= 0 else np.zeros(k)
        # lexsort: the last key is primary; -fold index makes the lowest fold win a full tie.
        best = np.lexsort((-np.arange(k), want_size - have_size, need @ counts[g], need_key))[-1]
        group_fold[g] = best
        have_class[best] += counts[g]
        have_size[best] += sizes[g]
    return group_fold[inverse]


def dataset_plan(data, settings: dict):
    """(fold plan or None, patient key of every record) of an evaluation dataset: K folds with
    settings["folds"] = K, the layout's splits with 0."""
    groups = protocols.patient_keys(data.infos)
    k = int(settings.get("folds") or 0)
    if not k:
        return None, groups
    where = datasets.flag(settings, "folds")
    if k < ranges.MIN_FOLDS:
        raise ValueError(f"{where}={k}: {ranges.FOLDS_TEXT}")
    record_folds = stratified_group_folds(data.labels, groups, k, seed=settings["seed"],
                                          where=where)
    return fold_plan(record_folds, k), groups


def fold_plan(record_folds: np.ndarray, k: int) -> list[dict]:
    """Per fold f: record indices of its training folds, its validation fold (f + 1 mod k) and
    its test fold."""
    if k < ranges.MIN_FOLDS:
        raise ValueError(f"{k} folds: expected at least {ranges.MIN_FOLDS}")
    record_folds = np.asarray(record_folds)
    plan = []
    for f in range(k):
        val_fold = (f + 1) % k
        plan.append({"fold": f, "test": np.flatnonzero(record_folds == f),
                     "val": np.flatnonzero(record_folds == val_fold),
                     "train": np.flatnonzero((record_folds != f) & (record_folds != val_fold))})
    return plan


def _mean_std(values) -> dict:
    """Mean and sample std (ddof 1) of the defined per-fold values (None where a fold could not
    score any class)."""
    defined = [float(v) for v in values if v is not None]
    return {"mean": float(np.mean(defined)) if defined else None,
            "std": float(np.std(defined, ddof=1)) if len(defined) > 1 else None,
            "values": [None if v is None else float(v) for v in values],
            "n_folds": len(defined)}


def cross_validate(fit_predict: Callable, plan: list[dict], labels: np.ndarray, groups,
                   classes, *, label_fraction: float, seed: int, bootstrap: int):
    """One head per fold of `plan`; per-fold and pooled out-of-fold figures.

    fit_predict(train_rows, val_rows, {"test": test_rows}): a model as runs.py defines it.
    Its training rows are a seeded, stratified `label_fraction` of the fold's training records.
    Each fold's F1 thresholds are chosen on its validation fold; the pooled F1 applies each
    record's own fold's.

    Returns (run fields {"test": pooled report with the CI of its macro AUROC (patients
    resampled), "folds": [...], "fold_summary": {...}}, out-of-fold predictions {"probs",
    "labels", "rows", "ids", "fold"}).
    """
    groups = np.asarray(groups)
    entries = []
    pooled = {"probs": [], "labels": [], "rows": [], "ids": [], "fold": [], "thresholds": []}
    for part in plan:
        train = part["train"][protocols.label_fraction_subset(labels[part["train"]],
                                                              label_fraction, seed=seed)]
        out = fit_predict(train, part["val"], {"test": part["test"]})
        pred = out["tests"]["test"]
        thresholds = scoring.choose_thresholds(out["val"]["labels"], out["val"]["probs"])
        _, probs, fold_labels = scoring.per_record(pred["rows"], pred["probs"], pred["labels"])
        test = scoring.classification_report(fold_labels, probs, classes, thresholds=thresholds)
        test["ci"] = None  # the pooled figures carry the CI; the folds give the spread
        entries.append({"fold": part["fold"] + 1, "n_train": int(len(train)),
                        "n_val": int(len(part["val"])),
                        **protocols.labels_used(len(train), len(part["train"])), "test": test,
                        **out["info"]})
        n_test = len(pred["rows"])
        pooled["probs"].append(np.asarray(pred["probs"], np.float64))
        pooled["labels"].append(np.asarray(pred["labels"]))
        pooled["rows"].append(np.asarray(pred["rows"], np.int64))
        pooled["ids"].append(np.asarray(pred["ids"], dtype=str))
        pooled["fold"].append(np.full(n_test, part["fold"] + 1, np.int64))
        pooled["thresholds"].append(np.broadcast_to(thresholds, (n_test, len(classes))))
    oof = {k: np.concatenate(v) for k, v in pooled.items()}
    # Per record (a record's windows averaged; they share its fold and its thresholds).
    records, probs, record_labels, thresholds = scoring.per_record(
        oof["rows"], oof["probs"], oof["labels"], oof.pop("thresholds"))
    test = scoring.classification_report(record_labels, probs, classes, thresholds=thresholds)
    test["ci"] = scoring.bootstrap_ci(record_labels, probs, n_resamples=bootstrap, seed=seed,
                                      groups=groups[records])
    summary = {key: _mean_std([e["test"][key] for e in entries])
               for key in ("macro_auroc", "macro_auprc", "macro_f1")}
    return {"test": test, "folds": entries, "fold_summary": summary}, oof
