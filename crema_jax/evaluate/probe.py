"""`crema-jax probe`: linear probing of frozen features, with the evaluation protocols.

    crema-jax probe --checkpoint=WORKDIR_OF_PRETRAIN --layout=wfdb_folder --root=DATA \
        --workdir=/tmp/probe --label_fractions=0.01,0.1,1.0 --lead_sets=12,limb6,I --cross_domain

Features are extracted once per lead set (3 crops per ECG, averaged), then every protocol trains
a head on them: label fractions of the training split, and (with --cross_domain, on the first
lead set) one head per source tested in-domain and on every other source. The test split is
scored once per run. Multi-process runs are not supported (one process, all its devices).
Baselines: --checkpoint=random --model_size=... (random SiT); --backbone=net1d with an imported
ECGFounder checkpoint.
"""
from __future__ import annotations

import time

import numpy as np
from absl import flags, logging

from crema_jax.evaluate import cli, features, linear_probe, metrics, protocols, report

_L2_GRID = cli.define(flags.DEFINE_list, "l2_grid",
                      [str(v) for v in linear_probe.DEFAULT_L2_GRID],
                      "L2 strengths tried; the best validation macro AUROC wins.")
_OPTIMIZER = cli.define(flags.DEFINE_enum, "probe_optimizer", "lbfgs",
                        list(linear_probe.OPTIMIZERS), "Full-batch optimizer of the linear head.")
_STEPS = cli.define(flags.DEFINE_integer, "probe_steps", 200, "Full-batch optimizer steps.")


def score_head(probs_val, labels_val, probs_test, labels_test, classes, *, bootstrap: int,
               seed: int) -> dict:
    """Test metrics with F1 thresholds chosen on validation, plus the bootstrap CI."""
    thresholds = metrics.choose_thresholds(labels_val, probs_val)
    test = metrics.classification_report(labels_test, probs_test, classes, thresholds=thresholds)
    test["ci"] = metrics.bootstrap_ci(labels_test, probs_test, n_resamples=bootstrap, seed=seed)
    return test


def fit_and_score(feats, labels, train, val, tests: dict, classes, *, label_type, settings,
                  probe_kwargs) -> tuple[dict, dict]:
    """Train a head on `train` rows (select L2 on `val`); score every {name: rows} of `tests`."""
    head = linear_probe.fit_linear_probe(feats[train], labels[train], feats[val], labels[val],
                                         label_type=label_type, **probe_kwargs)
    probs_val = linear_probe.predict_proba(head, feats[val])
    scores, probs = {}, {}
    for name, rows in tests.items():
        probs[name] = linear_probe.predict_proba(head, feats[rows])
        scores[name] = score_head(probs_val, labels[val], probs[name], labels[rows], classes,
                                  bootstrap=settings["bootstrap"], seed=settings["seed"])
    selection = {"l2": head.l2, "val_macro_auroc_by_l2": {str(k): v for k, v in
                                                          head.val_auroc_by_l2.items()}}
    return {"scores": scores, "selection": selection}, probs


def run_probe(settings: dict, probe_kwargs: dict) -> dict:
    start = time.time()
    workdir = cli.workdir_path(settings["workdir"])
    backbone = features.load_backbone(settings["backbone"], settings["checkpoint"],
                                      model_size=settings["model_size"], seed=settings["seed"])
    data = cli.load_dataset(settings["layout"], settings["root"], label_set=settings["label_set"],
                            split_fractions=settings["split_fractions"],
                            min_positives=settings["min_positives"],
                            label_type=settings["label_type"], seed=settings["seed"],
                            layout_options=settings["layout_options"],
                            cache_dir=settings.get("cache_dir", ""))
    mesh = features.data_mesh()
    feature_fn = features.make_feature_fn(backbone, mesh)
    batch_size = features.round_batch(settings["batch_size"], mesh)
    runs, cross, headline = [], [], None
    from crema_jax.data.pipeline import make_eval_dataset
    for lead_name in settings["lead_sets"]:
        data_cfg = cli.eval_data_config(backbone.config, backbone.name,
                                        protocols.lead_set(lead_name), batch_size=batch_size,
                                        num_workers=settings["num_workers"])
        t0 = time.time()
        batches = make_eval_dataset(data_cfg, source=cli.make_source(data, data_cfg))
        out = features.extract(feature_fn, batches)
        logging.info("features (%s leads): %d ECGs in %.1fs", lead_name, len(out["index"]),
                     time.time() - t0)
        rows = out["index"]  # records that could be read, as rows of `data`
        feats = out["features"].mean(1)  # average the crops' features (see features.py)
        labels, splits, sources = data.labels[rows], data.splits[rows], data.sources[rows]
        train, val, test = (np.flatnonzero(splits == s) for s in protocols.SPLITS)
        for fraction in settings["label_fractions"]:
            subset = train[protocols.label_fraction_subset(labels[train], fraction,
                                                           seed=settings["seed"])]
            result, probs = fit_and_score(feats, labels, subset, val, {"test": test},
                                          data.classes, label_type=data.label_type,
                                          settings=settings, probe_kwargs=probe_kwargs)
            runs.append({"name": f"probe leads={lead_name} labels={fraction:g}",
                         "protocol": {"leads": lead_name, "label_fraction": fraction,
                                      "train_source": "all"},
                         "n_train": int(len(subset)), "n_val": int(len(val)),
                         "test": result["scores"]["test"], "selection": result["selection"]})
            if headline is None:
                ids = [data.infos[r].record_id for r in rows[test]]
                headline = (labels[test], probs["test"], feats, labels, sources, ids)
        if settings["cross_domain"] and lead_name == settings["lead_sets"][0]:
            cross = cross_domain(feats, labels, splits, sources, data.classes, data.label_type,
                                 settings, probe_kwargs)
    result = {
        "title": f"Linear probe: {settings['backbone']} {settings['checkpoint']}",
        "command": "probe", "settings": {**settings, **probe_kwargs},
        "label_type": data.label_type, "classes": data.classes, "class_display": data.display,
        "records": {s: int(np.sum(data.splits == s)) for s in protocols.SPLITS},
        "records_read": int(len(headline[3])),
        "feature_averaging": "mean of the crops' features",
        "headline": {"macro_auroc": runs[0]["test"]["macro_auroc"], "ci": runs[0]["test"]["ci"],
                     "run": runs[0]["name"]},
        "runs": runs, "cross_domain": cross, "seconds": round(time.time() - start, 1),
    }
    write_outputs(result, workdir, headline, data.classes,
                  [data.display.get(c, c) for c in data.classes])
    return result


def cross_domain(feats, labels, splits, sources, classes, label_type, settings, probe_kwargs):
    """One head per source; in-domain test split vs every record of each other source."""
    entries = []
    for plan in protocols.cross_domain_plan(sources, splits):
        tests = {"in_domain": plan["in_domain_test"], **plan["out_of_domain"]}
        result, _ = fit_and_score(feats, labels, plan["train"], plan["val"], tests, classes,
                                  label_type=label_type, settings=settings,
                                  probe_kwargs=probe_kwargs)
        scores = result["scores"]
        entries.append({
            "train_source": plan["train_source"], "n_train": int(len(plan["train"])),
            "in_domain": scores["in_domain"],
            "out_of_domain": {o: scores[o] for o in plan["out_of_domain"]},
            "drop": {o: protocols.common_class_macro(scores["in_domain"], scores[o])
                     for o in plan["out_of_domain"]},
        })
    return entries


def write_outputs(result: dict, workdir, headline, classes, readable) -> dict:
    test_labels, test_probs, feats, labels, sources, ids = headline
    groups = {"label": report.primary_label(labels, readable), "source": list(sources)}
    return report.write_all(result, workdir,
                            roc=(test_labels, test_probs, readable, result["runs"][0]["name"]),
                            embeddings=(feats, groups, "frozen features (PCA)"),
                            predictions={"record_id": ids, "labels": test_labels,
                                         "probs": test_probs, "classes": classes})


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}")
    settings = cli.flag_values()
    probe_kwargs = {"l2_grid": tuple(float(v) for v in _L2_GRID.value),
                    "optimizer": _OPTIMIZER.value, "steps": _STEPS.value}
    result = run_probe(settings, probe_kwargs)
    print(report.markdown(result))
    print(f"wrote {settings['workdir']}/report.json, report.md, roc.png, embeddings_pca.png")
