"""Two models on the same records, folds and crops, with paired tests (`crema-jax compare`).

Model A is --checkpoint; model B is --checkpoint_b: another checkpoint, an imported ECGFounder
(Net1D), or "random": A's own architecture and data path, randomly initialised, so the two read
identical crops (--backbone_b=sit|net1d picks another family's default instead). A random model
is drawn from --seed, B's from --init_seed_b when given: with --seed fixed, the folds, label
subsets and bootstrap stay, and only B's init changes (two random inits: a calibration). A and B
that are the same model (the same weights, or the same random init) are said to be. Both
go through the same protocol runs (runs.py: the same splits or the same K folds, label
fractions, lead sets) by linear probing (features once per model and lead set) or fine-tuning.

Each run's predictions are paired record by record (a record's windows averaged, records only
one model could read left out and counted), then compared (paired.py): per class a paired
permutation test (DeLong's at paired.PERMUTATION_BELOW positives and negatives), macro AUROC
and AUPRC by a paired bootstrap over patients, and a verdict at --alpha. With
--cross_domain, each model's in-domain minus out-of-domain drop, and the paired difference of
the two drops.
"""
from __future__ import annotations

import functools
import time

import numpy as np

from crema_jax.evaluate import (datasets, finetune, folds, linear_probe, paired, report, runs,
                                scoring, texts)
from crema_jax.inference import backbones
from crema_jax.models import families
from crema_jax.runtime import mesh as mesh_lib

METHODS = ("probe", "finetune")


def load_models(settings: dict) -> dict:
    """{"A": (config, params), "B": (config, params)} (params None: random init)."""
    config_a, params_a = backbones.load_config_and_params(
        settings["checkpoint"], backbone=settings["backbone"], model_size=settings["model_size"])
    name_b = settings["backbone_b"]
    if settings["checkpoint_b"] != backbones.RANDOM:
        b = backbones.load_config_and_params(settings["checkpoint_b"], backbone=name_b,
                                             flag="--backbone_b")
    elif not name_b or name_b == families.family_of(config_a.model).name:
        b = (config_a.copy_and_resolve_references(), None)
    else:
        b = backbones.load_config_and_params(backbones.RANDOM, backbone=name_b,
                                             model_size=settings["model_size"],
                                             flag="--backbone_b")
    return {"A": (config_a, params_a), "B": b}


def own_settings(settings: dict, label: str) -> dict:
    """The settings model `label` runs with: its checkpoint, and the seed of its random weights
    (runs.init_seed: A's --seed, B's --init_seed_b when given)."""
    if label == "A":
        return {**settings, "init_seed": settings["seed"]}
    seed_b = settings["init_seed_b"]
    return {**settings, "checkpoint": settings["checkpoint_b"],
            "init_seed": settings["seed"] if seed_b is None else seed_b}


def model_text(own: dict) -> str:
    """A model as the report's title names it: its checkpoint, a random one with its seed."""
    seed = runs.random_init_seed(own)
    return own["checkpoint"] + ("" if seed is None else f" (init seed {seed})")


def same_model(models: dict, owns: dict) -> str | None:
    """One line when A and B compute the same thing (backbones.weights_digest: the same
    weights, architecture and data path; a random init's by its seed), else None: every
    difference is then 0 and no test can find one."""
    digests = {label: backbones.weights_digest(*models[label], runs.init_seed(owns[label]))
               for label in models}
    if digests["A"] != digests["B"]:
        return None
    return "note: " + texts.same_model_text(models["A"][1] is None, runs.init_seed(owns["A"]))


def _evaluate(label, config, params, data, own, method_kwargs, mesh, plan, groups):
    if own["method"] == "finetune":
        return finetune.finetune_model(config, params, data, own, method_kwargs, mesh,
                                       model=label, plan=plan, groups=groups)
    backbone = backbones.build(config, params, seed=runs.init_seed(own))
    return linear_probe.probe_model(backbone, data, own, method_kwargs, mesh, model=label,
                                    plan=plan, groups=groups)


def _record_predictions(pred: dict, n_classes: int):
    """One model's predictions record by record (scoring.per_record, shaped to its classes,
    with its folds): (records, probabilities (records, classes), fold per record or None)."""
    probs = np.asarray(pred["probs"], np.float64).reshape(-1, n_classes)
    if "fold" not in pred:
        rows, probs = scoring.per_record(pred["rows"], probs)
        return rows, probs, None
    rows, probs, fold = scoring.per_record(pred["rows"], probs, pred["fold"])
    return rows, probs, fold.astype(np.int64)   # a record's examples share its fold


def common_records(preds: dict, n_classes: int) -> dict:
    """The records every model of {name: predictions} predicted: {"rows" (sorted), "probs":
    {name: (records, classes)}, "fold" (the first model's, or None), "unpaired": {name: how
    many of its records the others lack}}."""
    per = {name: _record_predictions(pred, n_classes) for name, pred in preds.items()}
    rows = functools.reduce(np.intersect1d, [r for r, _, _ in per.values()])
    first_rows, _, fold = next(iter(per.values()))
    return {"rows": rows,
            "probs": {name: probs[np.searchsorted(r, rows)] for name, (r, probs, _) in per.items()},
            "fold": None if fold is None else fold[np.searchsorted(first_rows, rows)],
            "unpaired": {name: int(len(r) - len(rows)) for name, (r, _, _) in per.items()}}


def pair(pred_a: dict, pred_b: dict, n_classes: int) -> dict:
    """The records both models predicted, their two probabilities, and how many were not."""
    common = common_records({"A": pred_a, "B": pred_b}, n_classes)
    return {"rows": common["rows"], "a": common["probs"]["A"], "b": common["probs"]["B"],
            "fold": common["fold"], "unpaired": common["unpaired"]}


def compare_runs(results: dict, data, groups, settings: dict):
    """(comparisons, cross-domain comparisons, paired predictions of each run)."""
    comparisons, drops, pairs = [], [], {}
    n_classes, alpha = len(data.classes), settings["alpha"]
    kwargs = dict(alpha=alpha, n_resamples=settings["bootstrap"], seed=settings["seed"])
    for run in results["A"]["runs"]:
        p = pair(results["A"]["predictions"]["runs"][run["name"]],
                 results["B"]["predictions"]["runs"][run["name"]], n_classes)
        test = paired.compare_predictions(data.labels[p["rows"]], p["a"], p["b"], data.classes,
                                          groups=groups[p["rows"]], **kwargs)
        comparisons.append({"run": run["name"], "protocol": run["protocol"],
                            "unpaired": p["unpaired"], **test})
        pairs[run["name"]] = p
    cross_a = results["A"]["predictions"]["cross_domain"]
    cross_b = results["B"]["predictions"]["cross_domain"]
    for source, test_set in cross_a:
        if test_set == "in_domain" or (source, test_set) not in cross_b:
            continue
        sets, learnt = [], cross_a[(source, "in_domain")]["learnt"]  # runs.model_runs
        for name in ("in_domain", test_set):
            p = pair(cross_a[(source, name)], cross_b[(source, name)], n_classes)
            sets.append({"labels": data.labels[p["rows"]][:, learnt], "a": p["a"][:, learnt],
                         "b": p["b"][:, learnt], "groups": groups[p["rows"]]})
        classes = [c for c, ok in zip(data.classes, learnt) if ok]
        drops.append({"train_source": source, "test_source": test_set,
                      **paired.paired_drop_difference(sets[0], sets[1], classes, **kwargs)})
    return comparisons, drops, pairs


def run_compare(settings: dict, method_kwargs: dict) -> dict:
    """Both models through every protocol of `settings`, paired; writes report.json/.md,
    paired_differences.png and predictions.npz (both models' paired probabilities)."""
    start = time.time()
    if settings["method"] not in METHODS:
        raise ValueError(f"--method={settings['method']!r}: expected one of {METHODS}")
    with report.claimed_workdir(
        settings["workdir"], inputs=[settings["root"], settings["cache_dir"]],
        checkpoints=[settings["checkpoint"], settings["checkpoint_b"]]) as workdir:
        models = load_models(settings)
        owns = {label: own_settings(settings, label) for label in models}
        same = same_model(models, owns)
        if same:
            print(same, flush=True)
        data = datasets.load_dataset(settings)
        plan, groups = folds.dataset_plan(data, settings)
        mesh = mesh_lib.make_mesh()
        results = {label: _evaluate(label, *models[label], data, owns[label], method_kwargs,
                                    mesh, plan, groups) for label in models}
        comparisons, drops, pairs = compare_runs(results, data, groups, settings)
        descriptions = {label: results[label]["model"] for label in results}
        descriptions["B"]["same_as_A"] = same is not None
        out = report.new_report(
            title=f"Compare ({settings['method']}): A = {model_text(owns['A'])} vs "
                  f"B = {model_text(owns['B'])}",
            command="compare", settings={**settings, **method_kwargs}, data=data,
            models=descriptions, runs=results["A"]["runs"] + results["B"]["runs"],
            cross_domain=results["A"]["cross_domain"] + results["B"]["cross_domain"],
            record_folds=plan, comparisons=comparisons, cross_domain_comparisons=drops,
            seconds=time.time() - start)
        head = pairs[comparisons[0]["run"]]
        arrays = {"record_id": np.asarray([data.infos[r].record_id for r in head["rows"]]),
                  "row": head["rows"], "labels": data.labels[head["rows"]],
                  "probs_a": head["a"], "probs_b": head["b"], "classes": np.asarray(data.classes)}
        if head["fold"] is not None:
            arrays["fold"] = head["fold"]
        report.write_all(out, workdir, predictions=arrays, paired=True)
        return out
