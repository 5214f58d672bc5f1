"""The protocol runs of one model, the same for a linear probe and for fine-tuning.

A model is given as `fit_predict(train_rows, val_rows, tests)`: train a head on the dataset
records `train_rows`, select it on `val_rows` (L2 strength, epoch), then predict each
{name: rows} of `tests` once. It returns {"val": {"probs", "labels"}, "tests": {name: {"probs",
"labels", "rows", "ids"}}, "info": {...}} where "rows" are the dataset record of each example
(a record cut into windows gives several) and "info" goes into the run's report entry.

Per lead set and label fraction, one run: on the layout's splits (train / val / test), or with
K folds (folds.py) K heads whose out-of-fold predictions are pooled. With cross_domain, one
head per source (on its train and val splits), tested in-domain and on every other source, on
the classes with a positive AND a negative among that source's training records (a class the
head never saw positive, or never saw negative, has a test AUROC of noise, or of a constant
0.5: it was scored, and entered the drop; the entry names the others in
`classes_without_train_positives` and `classes_without_train_negatives`, and a source with
none is left out, in a printed line). An out-of-domain test set leaves out the records of
patients among the head's training and validation records (protocols.source_rows), counted per
test source in `out_of_domain_left_out`. `cross_domain_head` is the protocol's one head, also
the benchmark's cross-domain cells'. A model whose probabilities are not finite stops the run
(`finite_outputs`).
Every test set's bootstrap CI resamples patients (`groups`: protocols.patient_keys).
"""
from __future__ import annotations

import numpy as np

from crema_jax.evaluate import folds, protocols, scoring
from crema_jax.inference import backbones


def init_seed(settings: dict) -> int:
    """The seed a model's random weights are drawn with (a random init's, a fresh head's):
    settings["init_seed"] where a command sets one per model (compare's --init_seed_b), else
    --seed, which also draws the folds, label subsets, training order and bootstrap."""
    return int(settings.get("init_seed", settings["seed"]))


def random_init_seed(settings: dict) -> int | None:
    """A report's model entry's `init_seed`: the seed of a random init, None for a checkpoint's
    weights."""
    return init_seed(settings) if settings["checkpoint"] == backbones.RANDOM else None


def run_name(method: str, leads: str, fraction: float, k: int) -> str:
    return f"{method} leads={leads} labels={fraction:g}" + (f" folds={k}" if k else "")


def _scores(out, name, data, settings, groups, classes=None):
    """The test report of one test set of a fit_predict output, per record (a record's windows
    averaged); its CI resamples patients."""
    pred = out["tests"][name]
    records, probs, labels = scoring.per_record(pred["rows"], pred["probs"], pred["labels"])
    return scoring.report_on_test(out["val"]["probs"], out["val"]["labels"], probs, labels,
                                 data.classes if classes is None else classes,
                                 bootstrap=settings["bootstrap"], seed=settings["seed"],
                                 groups=None if groups is None else groups[records])


def _split_run(fit_predict, data, fraction, settings, groups):
    train, val, test = (np.flatnonzero(data.splits == s) for s in protocols.SPLITS)
    subset = train[protocols.label_fraction_subset(data.labels[train], fraction,
                                                   seed=settings["seed"])]
    out = fit_predict(subset, val, {"test": test})
    pred = out["tests"]["test"]
    scores = _scores(out, "test", data, settings, groups)
    fields = {"n_train": int(len(subset)), "n_val": int(len(val)),
              **protocols.labels_used(len(subset), len(train)), "test": scores, **out["info"]}
    return fields, pred


def _kfold_run(fit_predict, data, fraction, settings, plan, groups):
    fields, oof = folds.cross_validate(fit_predict, plan, data.labels, groups, data.classes,
                                       label_fraction=fraction, seed=settings["seed"],
                                       bootstrap=settings["bootstrap"])
    sizes = {key: round(float(np.mean([f[key] for f in fields["folds"]])), 1)
             for key in ("n_train", "n_val")}  # per fold in fields["folds"]
    used = protocols.labels_used([f["n_labelled"] for f in fields["folds"]],
                                 [f["n_train_pool"] for f in fields["folds"]])
    return {**sizes, **used, **fields}, oof


def learnt_classes(train_labels) -> np.ndarray:
    """(C,) bool: the classes a head trained on these labels (n, C) could learn, those with at
    least one positive and one negative among them."""
    y = np.asarray(train_labels) > 0.5
    return y.any(0) & (~y).any(0)


def finite_outputs(fit_predict, model: str):
    """fit_predict whose output is checked: a NaN or infinite probability of the chosen head
    (validation or any test set) is an error naming the model and the count
    (scoring.check_finite), never a figure."""
    def checked(train_rows, val_rows, tests):
        out = fit_predict(train_rows, val_rows, tests)
        scoring.check_finite({f"model {model}'s {name} probabilities": pred["probs"]
                              for name, pred in [("validation", out["val"]),
                                                 *out["tests"].items()]})
        return out
    return checked


def model_runs(fit_predict, data, lead_name: str, settings: dict, *, method: str, model: str,
               plan=None, groups=None, cross_domain: bool = False):
    """(runs, cross-domain entries, predictions {"runs": {name: pred}, "cross_domain":
    {(train source, test set): pred}}) of one model on one lead set."""
    fit_predict = finite_outputs(fit_predict, model)
    k = len(plan) if plan is not None else 0
    groups = None if groups is None else np.asarray(groups)
    runs, predictions = [], {"runs": {}, "cross_domain": {}}
    for fraction in settings["label_fractions"]:
        name = run_name(method, lead_name, fraction, k)
        if k:
            fields, pred = _kfold_run(fit_predict, data, fraction, settings, plan, groups)
        else:
            fields, pred = _split_run(fit_predict, data, fraction, settings, groups)
        runs.append({"name": name, "model": model,
                     "protocol": {"leads": lead_name, "label_fraction": fraction,
                                  "train_source": "all", "folds": k}, **fields})
        predictions["runs"][name] = pred
    cross = []
    if cross_domain:
        patients = protocols.patient_keys(data.infos) if groups is None else groups
        for entry_plan in protocols.cross_domain_plan(data.sources, data.splits, patients):
            entry = _cross_domain_entry(fit_predict, data, entry_plan, settings, groups,
                                        model=model, lead_name=lead_name)
            if entry is not None:
                cross.append(entry[0])
                predictions["cross_domain"].update(entry[1])
    return runs, cross, predictions


def cross_domain_head(fit_predict, data, train, val, tests: dict) -> dict | None:
    """One head of the cross-domain protocol (its records: protocols.source_rows), trained on
    `train`, selected on `val`, predicting `tests` ({name: rows}), scored on the classes it
    could learn (learnt_classes: one it never saw positive, or never negative, has a test AUROC
    of noise, or of a constant's 0.5). {"out": fit_predict's output, "learnt": (C,) bool,
    "fields": n_train, the head's info, the classes left out by why}, or None when it can learn
    no class (then nothing is trained): the caller says so, or skips the source saying so."""
    learnt = learnt_classes(data.labels[train])
    if not learnt.any():
        return None
    out = fit_predict(train, val, tests)
    return {"out": out, "learnt": learnt,
            "fields": {"n_train": int(len(train)), **out["info"],
                       **unlearnt(data.classes, data.labels[train])}}


def _cross_domain_entry(fit_predict, data, plan: dict, settings, groups, *, model, lead_name):
    """(report entry, predictions) of one source's head (protocols.cross_domain_plan entry
    `plan`), tested in-domain and on every other source; None when it can learn no class (a
    printed line: the other sources' heads still run)."""
    source, others = plan["train_source"], list(plan["out_of_domain"])
    tests = {"in_domain": plan["in_domain_test"], **plan["out_of_domain"]}
    head = cross_domain_head(fit_predict, data, plan["train"], plan["val"], tests)
    if head is None:
        print(f"cross-domain: source {source!r} left out (model {model}, leads {lead_name}): "
              f"no class has both a positive and a negative among its {len(plan['train'])} "
              "training records")
        return None
    learnt = head["learnt"]
    classes = [c for c, ok in zip(data.classes, learnt) if ok]
    scores = {name: _scores(learnt_only(head["out"], learnt), name, data, settings, groups,
                            classes) for name in tests}
    entry = {"model": model, "leads": lead_name, "train_source": source, **head["fields"],
             "out_of_domain_left_out": plan["left_out"], "in_domain": scores["in_domain"],
             "out_of_domain": {o: scores[o] for o in others},
             "drop": {o: protocols.common_class_macro(scores["in_domain"], scores[o])
                      for o in others}}
    return entry, {(source, name): {**pred, "learnt": learnt}
                   for name, pred in head["out"]["tests"].items()}


def learnt_only(out: dict, learnt: np.ndarray) -> dict:
    """A fit_predict output with the probabilities and labels of the `learnt` classes only."""
    def cut(pred):
        return {**pred, "probs": np.asarray(pred["probs"])[:, learnt],
                "labels": np.asarray(pred["labels"])[:, learnt]}
    return {**out, "val": cut(out["val"]), "tests": {n: cut(p) for n, p in out["tests"].items()}}


def unlearnt(classes, train_labels) -> dict:
    """The classes learnt_classes leaves out, by why: {"classes_without_train_positives",
    "classes_without_train_negatives"}."""
    y = np.asarray(train_labels) > 0.5
    return {"classes_without_train_positives": [c for c, ok in zip(classes, y.any(0)) if not ok],
            "classes_without_train_negatives": [c for c, ok in zip(classes, (~y).any(0))
                                                if not ok]}
