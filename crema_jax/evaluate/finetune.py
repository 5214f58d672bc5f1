"""`crema-jax finetune`: full fine-tuning of the SiT encoder under the evaluation protocols.

    crema-jax finetune --checkpoint=PRETRAIN_WORKDIR --layout=ptbxl --root=/data/ptbxl \
        --label_set=superclass --workdir=/tmp/ft --epochs=50 --patience=10

Per protocol run (lead set x label fraction, and per source with --cross_domain): a fresh head on
the checkpoint's encoder, ST-MEM's fine-tuning recipe (finetuning.py), the best epoch by
validation macro AUROC, then the test split scored ONCE with that epoch's parameters.

Supervised-from-scratch baseline: `--checkpoint=random --model_size=...` (the same recipe from a
random initialisation is exactly a supervised model trained from scratch).
"""
from __future__ import annotations

import math
import time

import numpy as np
from absl import flags, logging

from crema_jax.evaluate import cli, features, finetuning, protocols, report
from crema_jax.evaluate.probe import score_head

_EPOCHS = cli.define(flags.DEFINE_integer, "epochs", 30, "Maximum fine-tuning epochs.")
_BASE_LR = cli.define(flags.DEFINE_float, "base_lr", 1e-3, "Peak lr = base_lr x batch / 256 "
                      "(ST-MEM fine-tuning).")
_WEIGHT_DECAY = cli.define(flags.DEFINE_float, "weight_decay", 0.05, "AdamW weight decay.")
_LAYER_DECAY = cli.define(flags.DEFINE_float, "layer_decay", 0.75, "Layer-wise lr decay (1 = off).")
_DROP_PATH = cli.define(flags.DEFINE_float, "drop_path", 0.1, "Stochastic depth (max rate).")
_LABEL_SMOOTHING = cli.define(flags.DEFINE_float, "label_smoothing", 0.0, "Label smoothing.")
_WARMUP = cli.define(flags.DEFINE_float, "warmup_epochs", 1.0, "Linear lr warm-up in epochs.")
_PATIENCE = cli.define(flags.DEFINE_integer, "patience", 10, "Early stopping: epochs without a "
                       "better validation macro AUROC (0 = never stop early).")
_AUGMENT = cli.define(flags.DEFINE_list, "augment", ["config"], "Training augmentations: "
                      "'config' = the checkpoint's data.augment.names, 'none', or names "
                      "(amplitude_scale,baseline_wander,gaussian_noise,time_shift,lead_drop).")
_STEPS_PER_EPOCH = cli.define(flags.DEFINE_integer, "steps_per_epoch", 0, "0 = one pass over "
                              "the training records per epoch.")


def _eval_batches(data, data_cfg, rows):
    """The split's evaluation batches, read once and kept in memory for every epoch."""
    from crema_jax.data.pipeline import make_eval_dataset
    batches = list(make_eval_dataset(data_cfg, source=cli.make_source(data, data_cfg, rows)))
    for batch in batches:  # the source's index is a position in `rows`: map back to records
        batch["index"] = np.asarray(rows)[np.asarray(batch["index"])]
    return batches


def finetune_once(model_cfg, params, data, data_cfg, mesh, train_rows, val_rows, tests: dict,
                  settings, ft) -> dict:
    """One fine-tuning run; scores each {name: rows} of `tests` with the best epoch's params."""
    batch_size = data_cfg.batch_size
    model = finetuning.sit_classifier(model_cfg, params, len(data.classes),
                                      drop_path=ft["drop_path"], seed=settings["seed"])
    train_iter = finetuning.train_batches(data_cfg, cli.make_source(data, data_cfg, train_rows),
                                          batch_size=batch_size, seed=settings["seed"])
    steps = ft["steps_per_epoch"] or max(1, math.ceil(len(train_rows) / batch_size))
    val_batches = _eval_batches(data, data_cfg, val_rows)
    best, history, best_epoch, evaluate = finetuning.fit(
        model, mesh=mesh, train_iter=train_iter, val_batches=val_batches,
        label_type=data.label_type, epochs=ft["epochs"], steps_per_epoch=steps,
        peak_lr=ft["base_lr"] * batch_size / 256, weight_decay=ft["weight_decay"],
        layer_decay=ft["layer_decay"], warmup_epochs=ft["warmup_epochs"],
        label_smoothing=ft["label_smoothing"], patience=ft["patience"], seed=settings["seed"],
        log=logging.info)
    probs_val, labels_val, _ = finetuning.predict(evaluate, best, model.rest, val_batches,
                                                  data.label_type)
    scores, outputs = {}, {}
    for name, rows in tests.items():  # each test set is evaluated once, on the best epoch
        batches = _eval_batches(data, data_cfg, rows)
        probs, labels, index = finetuning.predict(evaluate, best, model.rest, batches,
                                                  data.label_type)
        scores[name] = score_head(probs_val, labels_val, probs, labels, data.classes,
                                  bootstrap=settings["bootstrap"], seed=settings["seed"])
        outputs[name] = {"probs": probs, "labels": labels, "index": index, "batches": batches}
    return {"scores": scores, "history": history, "best_epoch": best_epoch, "outputs": outputs,
            "model": model, "best": best}


def _embeddings(model, best, batches, mesh):
    """Pooled features of the fine-tuned encoder (crops averaged) for the PCA plot."""
    backbone = features.Backbone("sit", model.graphdef, (best, model.rest), None,
                                 features._sit_apply, 0)
    out = features.extract(features.make_feature_fn(backbone, mesh), batches)
    return out["features"].mean(1)


def load_config_and_params(checkpoint: str, model_size: str):
    """(config, params) of a checkpoint, or the default config at model_size and None (random)."""
    if checkpoint == features.RANDOM:
        from crema_jax.train.config import default_config
        config = default_config()
        config.model.size = model_size
        return config, None
    from crema_jax.train.checkpoint import load_model_checkpoint
    params, config, _ = load_model_checkpoint(checkpoint)
    return config, params


def run_finetune(settings: dict, ft: dict) -> dict:
    start = time.time()
    workdir = cli.workdir_path(settings["workdir"])
    if settings["backbone"] != "sit":
        raise ValueError("crema-jax finetune: --backbone=sit only; probe Net1D features with "
                         "`crema-jax probe --backbone=net1d`")
    config, params = load_config_and_params(settings["checkpoint"], settings["model_size"])
    model_cfg = config.model
    data = cli.load_dataset(settings["layout"], settings["root"], label_set=settings["label_set"],
                            split_fractions=settings["split_fractions"],
                            min_positives=settings["min_positives"],
                            label_type=settings["label_type"], seed=settings["seed"],
                            layout_options=settings["layout_options"],
                            cache_dir=settings.get("cache_dir", ""))
    mesh = features.data_mesh()
    batch_size = features.round_batch(settings["batch_size"], mesh)
    splits = data.splits
    train, val, test = (np.flatnonzero(splits == s) for s in protocols.SPLITS)
    runs, cross, headline = [], [], None
    for lead_name in settings["lead_sets"]:
        data_cfg = cli.eval_data_config(config, "sit", protocols.lead_set(lead_name),
                                        batch_size=batch_size, num_workers=settings["num_workers"])
        if ft["augment"] != ["config"]:
            data_cfg.augment.names = tuple(a for a in ft["augment"] if a != "none")
        for fraction in settings["label_fractions"]:
            subset = train[protocols.label_fraction_subset(data.labels[train], fraction,
                                                           seed=settings["seed"])]
            out = finetune_once(model_cfg, params, data, data_cfg, mesh, subset, val,
                                {"test": test}, settings, ft)
            runs.append({"name": f"finetune leads={lead_name} labels={fraction:g}",
                         "protocol": {"leads": lead_name, "label_fraction": fraction,
                                      "train_source": "all"},
                         "n_train": int(len(subset)), "n_val": int(len(val)),
                         "test": out["scores"]["test"], "best_epoch": out["best_epoch"],
                         "history": out["history"]})
            if headline is None:
                headline = out
        if settings["cross_domain"] and lead_name == settings["lead_sets"][0]:
            for plan in protocols.cross_domain_plan(data.sources, splits):
                tests = {"in_domain": plan["in_domain_test"], **plan["out_of_domain"]}
                out = finetune_once(model_cfg, params, data, data_cfg, mesh, plan["train"],
                                    plan["val"], tests, settings, ft)
                s = out["scores"]
                cross.append({
                    "train_source": plan["train_source"], "n_train": int(len(plan["train"])),
                    "best_epoch": out["best_epoch"], "in_domain": s["in_domain"],
                    "out_of_domain": {o: s[o] for o in plan["out_of_domain"]},
                    "drop": {o: protocols.common_class_macro(s["in_domain"], s[o])
                             for o in plan["out_of_domain"]}})
    is_random = settings["checkpoint"] == features.RANDOM
    result = {
        "title": ("Supervised from scratch (random init)" if is_random else "Fine-tuning")
        + f": sit {settings['checkpoint']}",
        "command": "finetune", "settings": {**settings, **ft},
        "label_type": data.label_type, "classes": data.classes, "class_display": data.display,
        "records": {s: int(np.sum(splits == s)) for s in protocols.SPLITS},
        "prediction_averaging": "mean of the crops' logits",
        "headline": {"macro_auroc": runs[0]["test"]["macro_auroc"], "ci": runs[0]["test"]["ci"],
                     "run": runs[0]["name"]},
        "runs": runs, "cross_domain": cross, "seconds": round(time.time() - start, 1),
    }
    test_out = headline["outputs"]["test"]
    embeddings = _embeddings(headline["model"], headline["best"], test_out["batches"], mesh)
    readable = [data.display.get(c, c) for c in data.classes]
    groups = {"label": report.primary_label(test_out["labels"], readable),
              "source": list(data.sources[test_out["index"]])}
    report.write_all(result, workdir,
                     roc=(test_out["labels"], test_out["probs"], readable, runs[0]["name"]),
                     embeddings=(embeddings, groups, "fine-tuned features, test split (PCA)"),
                     predictions={"record_id": [data.infos[i].record_id for i in test_out["index"]],
                                  "labels": test_out["labels"], "probs": test_out["probs"],
                                  "classes": data.classes})
    return result


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"unexpected arguments {argv[1:]}")
    settings = cli.flag_values()
    ft = {"epochs": _EPOCHS.value, "base_lr": _BASE_LR.value,
          "weight_decay": _WEIGHT_DECAY.value, "layer_decay": _LAYER_DECAY.value,
          "drop_path": _DROP_PATH.value, "label_smoothing": _LABEL_SMOOTHING.value,
          "warmup_epochs": _WARMUP.value, "patience": _PATIENCE.value,
          "augment": list(_AUGMENT.value), "steps_per_epoch": _STEPS_PER_EPOCH.value}
    result = run_finetune(settings, ft)
    print(report.markdown(result))
    print(f"wrote {settings['workdir']}/report.json, report.md, roc.png, embeddings_pca.png")
