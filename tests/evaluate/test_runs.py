"""The protocol runs of one model (runs.py) with a model whose scores are fixed per record:
split runs, label fractions and cross-domain drops against scikit-learn, and CIs that resample
patients, re-drawn here."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from crema_jax.evaluate import protocols, runs


def _dataset(rng, n=120):
    infos = [SimpleNamespace(record_id=f"r{i:03d}", source="g" if i % 3 else "n", labels=(),
                             meta={"patient_id": f"p{i // 2}" if i % 3 else None})
             for i in range(n)]
    labels = (rng.random((n, 2)) < [0.4, 0.3]).astype(np.float32)
    splits = np.asarray(protocols.resplit(infos, (0.6, 0.2, 0.2), seed=0))
    return SimpleNamespace(infos=infos, labels=labels, splits=splits, classes=["x", "y"],
                           sources=np.asarray([i.source for i in infos]))


def _fixed_model(data, score):
    def fit_predict(train, val, tests):
        return {"val": {"probs": score[val], "labels": data.labels[val]},
                "tests": {name: {"probs": score[rows], "labels": data.labels[rows],
                                 "rows": np.asarray(rows), "ids": [f"r{r}" for r in rows]}
                          for name, rows in tests.items()},
                "info": {"selection": {"l2": 1.0}}}
    return fit_predict


def _macro(labels, probs):
    ok = [c for c in range(labels.shape[1]) if 0 < labels[:, c].sum() < len(labels)]
    return np.mean([roc_auc_score(labels[:, c], probs[:, c]) for c in ok])


def _patient_bootstrap(labels, probs, groups, n, seed):
    members = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    members = list(members.values())
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        idx = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
        values.append(_macro(labels[idx], probs[idx]))
    return np.percentile(values, [2.5, 97.5])


def test_split_runs_and_cross_domain_drops_with_patient_resampled_cis():
    rng = np.random.default_rng(0)
    data = _dataset(rng)
    score = data.labels + rng.normal(size=data.labels.shape)
    groups = protocols.patient_keys(data.infos)
    settings = {"label_fractions": [1.0, 0.1], "seed": 0, "bootstrap": 100}
    out_runs, cross, preds = runs.model_runs(_fixed_model(data, score), data, "12", settings,
                                             method="probe", model="A", groups=groups,
                                             cross_domain=True)
    test = np.flatnonzero(data.splits == "test")
    full, tenth = out_runs
    assert full["name"] == "probe leads=12 labels=1" and full["protocol"]["folds"] == 0
    assert full["n_train"] == int(np.sum(data.splits == "train"))
    assert tenth["n_train"] == int(np.ceil(0.1 * full["n_train"]))
    assert full["test"]["macro_auroc"] == pytest.approx(_macro(data.labels[test], score[test]),
                                                        abs=1e-12)
    low, high = _patient_bootstrap(data.labels[test], score[test], groups[test], 100, 0)
    assert (full["test"]["ci"]["low"], full["test"]["ci"]["high"]) == pytest.approx(
        (low, high), abs=1e-12)
    np.testing.assert_array_equal(preds["runs"][full["name"]]["rows"], test)
    by_source = {e["train_source"]: e for e in cross}
    assert set(by_source) == {"g", "n"}
    g_test = np.flatnonzero((data.sources == "g") & (data.splits == "test"))
    n_all = np.flatnonzero(data.sources == "n")
    drop = by_source["g"]["drop"]["n"]
    assert drop["in_domain"] == pytest.approx(_macro(data.labels[g_test], score[g_test]),
                                              abs=1e-12)
    assert drop["out_of_domain"] == pytest.approx(_macro(data.labels[n_all], score[n_all]),
                                                  abs=1e-12)
    np.testing.assert_array_equal(preds["cross_domain"][("g", "n")]["rows"], n_all)


def _cross_domain_with_ys_training_labels_of_n_set_to(value, seed):
    """A cross-domain probe run where every training record of source n has class y = value."""
    rng = np.random.default_rng(seed)
    data = _dataset(rng)
    n_train = (data.sources == "n") & (data.splits == "train")
    data.labels[n_train, 1] = value
    score = data.labels + rng.normal(size=data.labels.shape)
    settings = {"label_fractions": [1.0], "seed": 0, "bootstrap": 20}
    _, cross, preds = runs.model_runs(_fixed_model(data, score), data, "12", settings,
                                      method="probe", model="A",
                                      groups=protocols.patient_keys(data.infos),
                                      cross_domain=True)
    return data, score, cross, preds


def test_a_class_without_positives_in_a_sources_training_records_is_not_scored():
    """Source n's training records hold no positive of class y: its head never learnt y, so y's
    test AUROC (noise; 0.889 in one report) leaves n's in-domain, out-of-domain and drop
    figures, named in the entry; source g still scores both classes."""
    data, score, cross, preds = _cross_domain_with_ys_training_labels_of_n_set_to(0.0, seed=1)
    by_source = {e["train_source"]: e for e in cross}
    n_entry, g_entry = by_source["n"], by_source["g"]
    assert n_entry["classes_without_train_positives"] == ["y"]
    assert g_entry["classes_without_train_positives"] == []
    assert list(n_entry["out_of_domain"]["g"]["per_class"]) == ["x"]
    g_all = np.flatnonzero(data.sources == "g")
    assert n_entry["out_of_domain"]["g"]["macro_auroc"] == pytest.approx(
        roc_auc_score(data.labels[g_all, 0], score[g_all, 0]), abs=1e-12)
    assert n_entry["drop"]["g"]["classes"] == ["x"]
    np.testing.assert_array_equal(preds["cross_domain"][("n", "g")]["learnt"], [True, False])
    assert g_entry["out_of_domain"]["n"]["macro_auroc"] == pytest.approx(
        _macro(data.labels[data.sources == "n"], score[data.sources == "n"]), abs=1e-12)


def test_a_source_with_no_class_to_learn_is_left_out_saying_so(capsys):
    """Source n's training records hold no class with both a positive and a negative: its head
    is not trained (it had been skipped unsaid); the run says so in one line, and source g's
    head still runs."""
    rng = np.random.default_rng(2)
    data = _dataset(rng)
    n_train = (data.sources == "n") & (data.splits == "train")
    data.labels[n_train] = 0.0
    score = data.labels + rng.normal(size=data.labels.shape)
    seen = []
    settings = {"label_fractions": [1.0], "seed": 0, "bootstrap": 20}
    _, cross, preds = runs.model_runs(_counting_model(data, score, seen), data, "12", settings,
                                      method="probe", model="A",
                                      groups=protocols.patient_keys(data.infos),
                                      cross_domain=True)
    assert [e["train_source"] for e in cross] == ["g"]
    assert sorted(preds["cross_domain"]) == [("g", "in_domain"), ("g", "n")]
    # Two heads: the split run's (every source) and g's; none on n's training records alone.
    assert len(seen) == 2 and not any(
        np.array_equal(rows, np.flatnonzero(n_train)) for rows in seen)
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"cross-domain: source 'n' left out (model A, leads 12): no class has both a positive "
        f"and a negative among its {int(n_train.sum())} training records")


def test_a_record_cut_into_windows_is_scored_once_its_windows_averaged():
    """ST-MEM's data path cuts a long record into windows: the run's AUROC was per window
    while its paired comparison was per record (two figures for one model, one report)."""
    rng = np.random.default_rng(2)
    data = _dataset(rng)
    windows = rng.normal(size=(len(data.labels), 3, 2)) + data.labels[:, None, :]

    def fit_predict(train, val, tests):
        def examples(rows):   # three windows a record, in window order
            rows = np.repeat(np.asarray(rows), 3)
            probs = windows[rows, np.tile(np.arange(3), len(rows) // 3)]
            return {"probs": probs, "labels": data.labels[rows], "rows": rows,
                    "ids": [f"r{r}#{w}" for r, w in zip(rows, np.tile(np.arange(3),
                                                                      len(rows) // 3))]}
        return {"val": examples(val), "tests": {n: examples(r) for n, r in tests.items()},
                "info": {}}

    settings = {"label_fractions": [1.0], "seed": 0, "bootstrap": 20}
    (run,), _, preds = runs.model_runs(fit_predict, data, "12", settings, method="probe",
                                       model="A", groups=protocols.patient_keys(data.infos))
    test = np.flatnonzero(data.splits == "test")
    assert run["test"]["n"] == len(test) and len(preds["runs"][run["name"]]["rows"]) == 3 * len(
        test)
    assert run["test"]["macro_auroc"] == pytest.approx(
        _macro(data.labels[test], windows[test].mean(1)), abs=1e-12)


def test_a_heads_counts_are_the_records_it_read():
    """A record the backbone could not read (too short for its windows) was still counted in
    the run's n_train and n_val: a model reading 11 of 16 training records said 16."""
    from crema_jax.evaluate import frozen_features

    rng = np.random.default_rng(3)
    data = _dataset(rng, n=30)
    data.label_type = "multilabel"
    readable = np.asarray([r for r in range(30) if r % 5])          # every fifth unreadable
    rows = np.repeat(readable, 2)                                     # two windows each
    features = frozen_features.Features(rng.normal(size=(len(rows), 1, 4)), rows,
                                        [f"r{r}" for r in rows], None)
    head = SimpleNamespace(l2=1.0, chosen_by="val_macro_auroc", val_auroc_by_l2={1.0: 0.5})
    fit_predict = frozen_features.head_fit_predict(
        features, data, {}, fit=lambda *a, **k: head,
        predict=lambda h, x: np.full((len(x), 2), 0.5))
    train, val = np.arange(0, 20), np.arange(20, 30)
    out = fit_predict(train, val, {"test": val})
    assert out["info"]["n_train"] == 16 and out["info"]["n_val"] == 8
    settings = {"label_fractions": [1.0], "seed": 0, "bootstrap": 5}
    (run,), _, _ = runs.model_runs(fit_predict, data, "12", settings, method="probe", model="A")
    assigned = np.flatnonzero(data.splits == "train")
    assert run["n_train"] == int(np.sum(assigned % 5 != 0)) < len(assigned)


def test_a_class_without_negatives_in_a_sources_training_records_is_not_scored():
    """Every training record of source n is positive for y (NSR in all PTB-XL records of the
    sample): its head never saw a negative, its constant output put 0.5 into the out-of-domain
    macro AUROC. Now y leaves n's figures like a class never seen positive, named apart."""
    data, score, cross, preds = _cross_domain_with_ys_training_labels_of_n_set_to(1.0, seed=4)
    n_entry = {e["train_source"]: e for e in cross}["n"]
    assert n_entry["classes_without_train_negatives"] == ["y"]
    assert n_entry["classes_without_train_positives"] == []
    g_all = np.flatnonzero(data.sources == "g")
    assert list(n_entry["out_of_domain"]["g"]["per_class"]) == ["x"]
    assert n_entry["out_of_domain"]["g"]["macro_auroc"] == pytest.approx(
        roc_auc_score(data.labels[g_all, 0], score[g_all, 0]), abs=1e-12)
    np.testing.assert_array_equal(preds["cross_domain"][("n", "g")]["learnt"], [True, False])


def test_a_model_with_a_non_finite_probability_stops_the_run_naming_it():
    rng = np.random.default_rng(5)
    data = _dataset(rng)
    score = data.labels + rng.normal(size=data.labels.shape)
    score[np.flatnonzero(data.splits == "test")[:3], 0] = np.nan
    settings = {"label_fractions": [1.0], "seed": 0, "bootstrap": 20}
    n_test = int(np.sum(data.splits == "test"))
    with pytest.raises(ValueError, match=rf"^model B's test probabilities: 3 of {2 * n_test} "
                                         "scores are NaN or infinite"):
        runs.model_runs(_fixed_model(data, score), data, "12", settings, method="probe",
                        model="B")


def _counting_model(data, score, seen):
    """_fixed_model that also records the training rows of each head it fits."""
    inner = _fixed_model(data, score)

    def fit_predict(train, val, tests):
        seen.append(np.asarray(train))
        return inner(train, val, tests)
    return fit_predict


def test_a_small_label_fraction_says_what_it_used():
    """27 training records, ten classes of one positive each (records 0-9) and 17 records with
    no label: 0.1 asks for ceil(2.7) = 3 records, but one positive of every class comes first,
    so all ten positives train: used 10 of 27. The runs say so, counted from the rows the head
    was given and the splits set here."""
    n = 40
    labels = np.zeros((n, 10), np.float32)
    labels[np.arange(10), np.arange(10)] = 1
    splits = np.asarray(["train"] * 27 + ["val"] * 6 + ["test"] * 7)
    labels[27:] = np.eye(10, dtype=np.float32)[np.arange(13) % 10]  # val and test: every class
    data = SimpleNamespace(infos=[SimpleNamespace(record_id=f"r{i}") for i in range(n)],
                           labels=labels, splits=splits, classes=[f"c{c}" for c in range(10)],
                           sources=np.asarray(["g"] * n))
    seen = []
    score = np.random.default_rng(0).random(labels.shape)
    out_runs, _, _ = runs.model_runs(_counting_model(data, score, seen), data, "12",
                                     {"label_fractions": [0.1, 1.0], "seed": 0, "bootstrap": 10},
                                     method="probe", model="A")
    tenth, full = out_runs
    assert sorted(seen[0].tolist()) == list(range(10))    # every positive, no unlabelled one
    assert (tenth["n_labelled"], tenth["n_train_pool"]) == (len(seen[0]), 27)
    assert tenth["label_fraction_used"] == pytest.approx(10 / 27, abs=1e-12)
    assert (full["n_labelled"], full["n_train_pool"], full["label_fraction_used"]) == (27, 27, 1)
    # One head's counts are whole numbers: report.json had said 27.0 of 27.0.
    assert json.dumps({k: full[k] for k in ("n_labelled", "n_train_pool")}) == \
        '{"n_labelled": 27, "n_train_pool": 27}'


def test_k_fold_label_fractions_say_what_each_fold_used():
    """Three folds of 12 records (fold f tests, f + 1 selects, the third trains: 12 records a
    fold, six of each class); the fractions used are the heads' training rows counted here
    over the pool."""
    from crema_jax.evaluate import folds

    rng = np.random.default_rng(2)
    n = 36
    labels = np.eye(2, dtype=np.float32)[np.arange(n) // 3 % 2]  # one class a record, both
    data = SimpleNamespace(infos=[SimpleNamespace(record_id=f"r{i}") for i in range(n)],
                           labels=labels, splits=np.full(n, "train"), classes=["x", "y"],
                           sources=np.asarray(["g"] * n))
    plan = folds.fold_plan(np.arange(n) % 3, 3)
    seen = []
    (run,), _, _ = runs.model_runs(_counting_model(data, rng.random((n, 2)), seen), data, "12",
                                   {"label_fractions": [0.05], "seed": 0, "bootstrap": 10},
                                   method="probe", model="A", plan=plan,
                                   groups=np.arange(n).astype(str))
    drawn = [len(rows) for rows in seen]
    assert [(f["n_labelled"], f["n_train_pool"]) for f in run["folds"]] == [(d, 12) for d in
                                                                            drawn]
    assert all(type(f["n_labelled"]) is int for f in run["folds"])   # a fold's head: whole
    assert type(run["n_train_pool"]) is float                         # the mean over folds
    assert all(d >= 2 for d in drawn)  # a positive of each class, though 0.05 x 12 is one
    assert run["n_labelled"] == round(np.mean(drawn), 1) and run["n_train_pool"] == 12
    assert run["label_fraction_used"] == pytest.approx(sum(drawn) / 36, abs=1e-12)
