"""K-fold cross-validation, checked by counting: folds are disjoint, cover every record once, keep
a patient's records together and are stratified; pooled out-of-fold figures against
scikit-learn."""
import re
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from crema_jax.evaluate import folds, protocols


def _multilabel(rng, n, prevalences):
    return (rng.random((n, len(prevalences))) < prevalences).astype(np.float32)


def _class_counts(record_folds, labels, k):
    """(C, k) positives of each class in each fold."""
    return np.stack([np.bincount(record_folds[labels[:, c] > 0.5], minlength=k)
                     for c in range(labels.shape[1])])


@pytest.mark.parametrize("k", [3, 5, 10])
def test_plan_tests_every_record_once_and_never_trains_on_its_test_fold(k):
    rng = np.random.default_rng(k)
    labels = _multilabel(rng, 103, [0.4, 0.1])
    record_folds = folds.stratified_group_folds(labels, np.arange(103), k, seed=0)
    plan = folds.fold_plan(record_folds, k)
    tested = np.concatenate([part["test"] for part in plan])
    np.testing.assert_array_equal(np.sort(tested), np.arange(103))  # each record exactly once
    for f, part in enumerate(plan):
        sets = [set(part[key].tolist()) for key in ("train", "val", "test")]
        assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
        assert set().union(*sets) == set(range(103))
        np.testing.assert_array_equal(part["val"], plan[(f + 1) % k]["test"])


def test_multiclass_folds_hold_floor_or_ceil_of_every_class_and_equal_sizes():
    rng = np.random.default_rng(0)
    n, k = 211, 5
    classes = rng.choice(4, size=n, p=[0.55, 0.3, 0.1, 0.05])
    labels = np.eye(4, dtype=np.float32)[classes]
    record_folds = folds.stratified_group_folds(labels, np.arange(n), k, seed=3)
    counts = _class_counts(record_folds, labels, k)
    totals = labels.sum(0)
    for c in range(4):
        assert set(counts[c]) <= {np.floor(totals[c] / k), np.ceil(totals[c] / k)}, counts[c]
    sizes = np.bincount(record_folds, minlength=k)
    assert sizes.max() - sizes.min() <= 1
    # Unstratified folds of the same sizes miss this by far (the test can fail).
    shuffled = rng.permutation(n) % k
    assert np.abs(_class_counts(shuffled, labels, k) - totals[:, None] / k).max() >= 1


def test_multilabel_folds_are_stratified_for_every_class():
    rng = np.random.default_rng(1)
    n, k = 300, 5
    labels = _multilabel(rng, n, [0.5, 0.3, 0.1, 0.05, 0.03, 0.2])
    record_folds = folds.stratified_group_folds(labels, np.arange(n), k, seed=0)
    deviation = np.abs(_class_counts(record_folds, labels, k) - labels.sum(0)[:, None] / k)
    assert deviation.max() < 1  # every class: floor or ceil of its share in every fold
    sizes = np.bincount(record_folds, minlength=k)
    assert sizes.max() - sizes.min() <= 1


def test_patients_stay_together_and_folds_are_stratified_by_patient():
    rng = np.random.default_rng(2)
    per_patient = rng.integers(1, 4, size=120)                   # 1-3 records per patient
    patient = np.repeat(np.arange(120), per_patient)
    order = rng.permutation(len(patient))                        # records in any order
    patient = patient[order]
    infos = [SimpleNamespace(record_id=f"r{i}", meta={"patient_id": f"{p}"})
             for i, p in enumerate(patient)]
    labels = _multilabel(rng, len(patient), [0.4, 0.15, 0.05])
    k = 4
    keys = protocols.patient_keys(infos)
    record_folds = folds.stratified_group_folds(labels, keys, k, seed=5)
    for p in np.unique(patient):
        assert len(set(record_folds[patient == p])) == 1
    plan = folds.fold_plan(record_folds, k)
    for part in plan:
        assert not set(patient[part["train"]]) & set(patient[part["test"]])
    # Stratified up to one patient's records (at most 3) per class and fold.
    deviation = np.abs(_class_counts(record_folds, labels, k) - labels.sum(0)[:, None] / k)
    assert deviation.max() < 3


def test_patient_keys_fall_back_to_the_record_id():
    infos = [SimpleNamespace(record_id="a1", meta={"patient_id": "7"}),
             SimpleNamespace(record_id="a2", meta={"patient_id": "7"}),
             SimpleNamespace(record_id="7", meta={"patient_id": None}),
             SimpleNamespace(record_id="b", meta={})]
    keys = protocols.patient_keys(infos)
    assert keys[0] == keys[1] and len(set(keys)) == 3   # record "7" is not patient "7"


def test_folds_are_seeded():
    labels = _multilabel(np.random.default_rng(3), 80, [0.3, 0.2])
    a = folds.stratified_group_folds(labels, np.arange(80), 5, seed=1)
    np.testing.assert_array_equal(a, folds.stratified_group_folds(labels, np.arange(80), 5,
                                                                  seed=1))
    assert not np.array_equal(a, folds.stratified_group_folds(labels, np.arange(80), 5, seed=2))


def test_bad_fold_counts_name_the_flag():
    labels = np.ones((4, 1), np.float32)
    # The folds' own range is fold_plan's: 2 folds had been accepted here ("2 <= folds").
    for k in (2, 5):
        with pytest.raises(ValueError, match=re.escape(f"--folds={k}: expected 3 to 4, the "
                                                       "number of patients")):
            folds.stratified_group_folds(labels, np.arange(4), k)
    data = SimpleNamespace(infos=[SimpleNamespace(record_id=str(i), meta={}) for i in range(4)],
                           labels=labels)
    with pytest.raises(ValueError, match=re.escape(
            "--folds=2: expected 0 (the layout's splits) or at least 3 (a test, a validation and "
            "a training fold)")):
        folds.dataset_plan(data, {"folds": 2, "seed": 0})
    # More folds than patients: the range the command accepts (it had said "2 <= folds").
    with pytest.raises(ValueError, match=re.escape("--folds=60: expected 3 to 4, the number "
                                                   "of patients")):
        folds.dataset_plan(data, {"folds": 60, "seed": 0})
    with pytest.raises(ValueError, match=re.escape("datasets['d'].folds=60: expected 3 to 4")):
        folds.dataset_plan(data, {"folds": 60, "seed": 0, "flag_prefix": "datasets['d']."})


def test_cross_validate_pools_out_of_fold_predictions_like_sklearn():
    rng = np.random.default_rng(4)
    n, k = 90, 3
    labels = _multilabel(rng, n, [0.4, 0.25])
    labels[:6] = [[1, 0], [0, 1], [1, 1], [0, 0], [1, 0], [0, 1]]
    groups = np.array([f"p{i // 2}" for i in range(n)])
    record_folds = folds.stratified_group_folds(labels, groups, k, seed=0)
    plan = folds.fold_plan(record_folds, k)
    score = labels + rng.normal(size=labels.shape)          # a fixed "model" per record
    calls = []

    def fit_predict(train, val, tests):
        calls.append((train, val))
        rows = tests["test"]
        return {"val": {"probs": score[val], "labels": labels[val]},
                "tests": {"test": {"probs": score[rows], "labels": labels[rows], "rows": rows,
                                   "ids": [f"r{r}" for r in rows]}},
                "info": {"selection": {"l2": 0.1}}}

    fields, oof = folds.cross_validate(fit_predict, plan, labels, groups, ["x", "y"],
                                       label_fraction=1.0, seed=0, bootstrap=100)
    np.testing.assert_array_equal(np.sort(oof["rows"]), np.arange(n))
    np.testing.assert_array_equal(oof["fold"], record_folds[oof["rows"]] + 1)
    for (train, val), part in zip(calls, plan):
        np.testing.assert_array_equal(train, part["train"])
    pooled = fields["test"]
    assert pooled["macro_auroc"] == pytest.approx(
        roc_auc_score(oof["labels"], oof["probs"], average="macro"), abs=1e-12)
    assert pooled["macro_auprc"] == pytest.approx(
        average_precision_score(oof["labels"], oof["probs"], average="macro"), abs=1e-12)
    per_fold = []
    for part, entry in zip(plan, fields["folds"]):
        rows = part["test"]
        per_fold.append(roc_auc_score(labels[rows], score[rows], average="macro"))
        assert entry["test"]["macro_auroc"] == pytest.approx(per_fold[-1], abs=1e-12)
        assert entry["selection"] == {"l2": 0.1} and entry["n_val"] == len(part["val"])
    summary = fields["fold_summary"]["macro_auroc"]
    assert summary["mean"] == pytest.approx(np.mean(per_fold), abs=1e-12)
    assert summary["std"] == pytest.approx(np.std(per_fold, ddof=1), abs=1e-12)
    # Pooled F1: each record thresholded at its own fold's validation thresholds.
    predicted = np.zeros_like(labels, bool)
    for part in plan:
        val, rows = part["val"], part["test"]
        for c in range(2):
            t = folds.scoring.best_threshold(labels[val, c], score[val, c])
            predicted[rows, c] = score[rows, c] >= t
    assert pooled["macro_f1"] == pytest.approx(f1_score(labels, predicted, average="macro"),
                                               abs=1e-12)
    # The CI resamples patients: a patient's records are drawn together (numpy, sklearn),
    # the records in their order (scoring.per_record: sorted; one example each here).
    order = np.argsort(oof["rows"])
    oof = {k: np.asarray(v)[order] for k, v in oof.items()}
    patients = groups[oof["rows"]]
    members = {}
    for i, g in enumerate(patients):
        members.setdefault(g, []).append(i)
    members = list(members.values())
    draws = np.random.default_rng(0)
    values = []
    for _ in range(100):
        idx = np.concatenate([members[g] for g in draws.integers(0, len(members), len(members))])
        cols = [c for c in range(2) if 0 < oof["labels"][idx, c].sum() < len(idx)]
        values.append(np.mean([roc_auc_score(oof["labels"][idx, c], oof["probs"][idx, c])
                               for c in cols]))
    assert pooled["ci"]["low"] == pytest.approx(np.percentile(values, 2.5), abs=1e-12)
    assert pooled["ci"]["high"] == pytest.approx(np.percentile(values, 97.5), abs=1e-12)
