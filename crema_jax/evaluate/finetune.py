"""Full fine-tuning of the SiT encoder with a classification head, under the evaluation protocols
(`crema-jax finetune`).

Recipe (ST-MEM's fine-tuning, docs/reference/stmem.md): AdamW, lr = base_lr x batch / 256 with
linear warm-up then cosine, weight decay 0.05, layer-wise learning-rate decay (embeddings get
decay^(depth+1), block i decay^(depth-i), `norm` and `head` the full rate), stochastic depth,
optional label smoothing; the ST-MEM augmentations come from config.data.augment.

Loss by label type: multi-label BCE (sigmoid per class) or multi-class softmax cross-entropy.
Validation every epoch on the evaluation crops, with LOGITS averaged over crops (ST-MEM averages
predictions); the best epoch on validation is kept (scoring.validation_key: macro AUROC, then
validation loss, which chooses alone when no class is scorable; early stopping with patience).

Per run of runs.py (lead set x label fraction, on the splits or per fold; per source with
cross_domain): a fresh head on the checkpoint's encoder, the recipe above, the best epoch on
validation, then each test set scored ONCE with that epoch's parameters.
Supervised-from-scratch baseline: checkpoint "random" (the same recipe from a random init).
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx

from crema_jax.data.pipeline import batch as batch_lib
from crema_jax.data.pipeline import datasets as pipeline
from crema_jax.evaluate import datasets, folds, plots, protocols, ranges, report, runs, scoring
from crema_jax.inference import backbones
from crema_jax.models import families, resolve_size, sit
from crema_jax.runtime import mesh as mesh_lib
from crema_jax.runtime import optimizer as optim_lib
from crema_jax.train import step as step_lib


# ------------------------------------------------------------------- the recipe's optimizer
def make_optimizer(params, *, peak_lr: float, weight_decay: float, layer_decay: float,
                   depth: int, warmup_steps: int, total_steps: int, betas=(0.9, 0.999)):
    """(optax transformation, schedule): the one AdamW of crema_jax (runtime/optimizer.py) with
    the SiT's layer-wise lr multipliers (models/sit.py layer_decay_scales)."""
    schedule = optim_lib.warmup_cosine(peak_lr, warmup_steps=warmup_steps,
                                       total_steps=total_steps)
    tx = optim_lib.adamw(schedule, betas=betas, weight_decay=weight_decay,
                         lr_scales=sit.layer_decay_scales(params, depth, layer_decay))
    return tx, schedule


# ------------------------------------------------------------------- losses
def loss_fn(logits, labels, *, label_type: str, label_smoothing: float = 0.0):
    """Mean loss per record. Label smoothing moves targets towards uniform (multiclass) or 0.5
    (multilabel: y(1-e) + e/2, the binary analogue)."""
    if label_type == "multiclass":
        k = labels.shape[-1]
        targets = labels * (1 - label_smoothing) + label_smoothing / k
        return jnp.mean(optax.softmax_cross_entropy(logits, targets))
    targets = labels * (1 - label_smoothing) + label_smoothing / 2
    return jnp.mean(jnp.sum(optax.sigmoid_binary_cross_entropy(logits, targets), -1))


# ------------------------------------------------------------------- training batches
def train_batches(data_cfg, source, *, batch_size: int, seed: int, seen: set | None = None):
    """Endless shuffled training batches (B, 1 crop, L, N, P) with labels.

    The pretraining pipeline with ONE view supplies the random crop and the configured
    augmentations (its masks are simply not used); labels are looked up by record index.
    `seen` gathers the source records the batches held (a record that fails to read never
    does).
    """
    cfg = data_cfg.copy_and_resolve_references()
    with cfg.unlocked():
        cfg.num_views = 1
        cfg.num_epochs = None
        cfg.batch_size = int(batch_size)
        cfg.seed = int(seed)
    labels = np.asarray(source.labels, np.float32)
    for batch in pipeline.make_pretrain_dataset(cfg, source=source):
        if seen is not None:
            seen.update(np.asarray(source.record_rows)[np.asarray(batch["index"])].tolist())
        yield {"patches": batch["patches"], "patch_valid": batch["patch_valid"],
               "lead_indices": batch["lead_indices"], "labels": labels[batch["index"]]}


# ------------------------------------------------------------------- steps
@dataclasses.dataclass
class Model:
    """A classifier as pure pieces: runner.logits(graphdef, (params, rest), batch, rng) ->
    (B, C crops, classes); `depth` drives the layer-wise lr decay."""
    graphdef: object
    params: object  # trainable nnx.Param state
    rest: object    # everything else (fixed position tables)
    runner: object  # the inference.backbones runner whose model path it shares
    depth: int


def make_steps(model: Model, tx, schedule, mesh, *, label_type: str, label_smoothing: float):
    """(train step, eval step): the train step is crema_jax's one step (train/step.py) on the
    classification loss; the eval step gives per-crop logits (B, C, classes)."""
    def loss_of(params, rest, batch, rng):
        logits = model.runner.logits(model.graphdef, (params, rest), batch, rng)[:, 0]
        return loss_fn(logits, batch["labels"], label_type=label_type,
                       label_smoothing=label_smoothing), {}

    replicated = mesh_lib.replicated(mesh)
    state_sharding = {"params": replicated, "fixed": replicated, "opt_state": replicated,
                      "step": replicated}
    train = step_lib.make_jitted_step(state_sharding, mesh_lib.batch_sharding(mesh), replicated,
                                      loss_of=loss_of, tx=tx, schedule=schedule)
    evaluate = jax.jit(lambda params, rest, batch: model.runner.logits(
        model.graphdef, (params, rest), batch), out_shardings=mesh_lib.batch_sharding(mesh))
    return train, evaluate


def crop_probabilities(logits, label_type: str, crop_average: str):
    """(B, C crops, classes) logits -> (B, classes): probabilities of the crops' mean logits
    ("embedding", ours) or the mean of the crops' probabilities ("probability", ST-MEM)."""
    if crop_average == "probability":
        return backbones.probabilities(logits, label_type).mean(1)
    if crop_average != "embedding":
        raise ValueError(f"data.eval_crop_average={crop_average!r}: expected 'embedding' or "
                         "'probability'")
    return backbones.probabilities(logits.mean(1), label_type)


def predict(evaluate, params, rest, batches: Iterable[dict], label_type: str,
            crop_average: str = "embedding"):
    """(probabilities (n, classes), labels (n, classes), index (n,)) over evaluation batches."""
    out = backbones.run(lambda batch: evaluate(
        params, rest, batch_lib.device_part(batch, batch_lib.EVAL_KEYS)), batches)
    probs = np.asarray(crop_probabilities(out["outputs"], label_type, crop_average))
    return probs, out["labels"], out["index"]


def fit(model: Model, *, mesh, train_iter, val_batches: list, label_type: str, epochs: int,
        steps_per_epoch: int, peak_lr: float, weight_decay: float, layer_decay: float,
        warmup_epochs: float, label_smoothing: float, patience: int, seed: int,
        crop_average: str = "embedding", log=print):
    """Train, validate each epoch, keep the best epoch on validation (scoring.validation_key:
    macro AUROC, then validation loss). Returns (best params (host), history list, best
    epoch, what chose it (scoring.chosen_by), the jitted eval step)."""
    tx, schedule = make_optimizer(model.params, peak_lr=peak_lr, weight_decay=weight_decay,
                                  layer_decay=layer_decay, depth=model.depth,
                                  warmup_steps=int(round(warmup_epochs * steps_per_epoch)),
                                  total_steps=epochs * steps_per_epoch)
    train, evaluate = make_steps(model, tx, schedule, mesh, label_type=label_type,
                                 label_smoothing=label_smoothing)
    replicated = mesh_lib.replicated(mesh)
    # Host copies on the devices: the step donates its state, model.rest must survive it.
    params, rest = (jax.device_put(jax.device_get(t), replicated) for t in (model.params,
                                                                              model.rest))
    state = {"params": params, "fixed": rest,
             "opt_state": jax.jit(tx.init, out_shardings=replicated)(params),
             "step": jax.device_put(np.int32(0), replicated)}
    rng = jax.random.key(seed)
    best = {"key": None, "params": jax.device_get(params), "epoch": 0, "chosen_by": None}
    history, since_best = [], 0
    for epoch in range(1, epochs + 1):
        losses = []
        for _ in range(steps_per_epoch):
            batch = next(train_iter)
            state, step_metrics = train(state, {k: batch[k] for k in _TRAIN_KEYS}, rng)
            losses.append(step_metrics["loss"])
        probs, labels, _ = predict(evaluate, state["params"], state["fixed"], val_batches,
                                   label_type, crop_average)
        val = scoring.validation_key(labels, probs, label_type)
        train_loss = float(np.mean(jax.device_get(losses)))
        if not math.isfinite(train_loss):  # it had gone on to a report of NaNs, then a
            raise ValueError(                # PCA traceback ("SVD did not converge")
                f"fine-tuning diverged: the training loss was {train_loss} in epoch {epoch} "
                f"(peak learning rate {peak_lr:g}); no report written: lower --base_lr")
        history.append({"epoch": epoch, "train_loss": train_loss,
                        "val_macro_auroc": val["macro_auroc"], "val_loss": val["loss"]})
        auroc = val["macro_auroc"]
        log(f"epoch {epoch}/{epochs}: train loss {train_loss:.4f}, val macro AUROC "
            f"{'n/a (no class scorable)' if auroc is None else f'{auroc:.4f}'}, "
            f"val loss {val['loss']:.4f}")
        if best["key"] is None or val["key"] > best["key"]:
            best = {"key": val["key"], "params": jax.device_get(state["params"]),
                    "epoch": epoch, "chosen_by": scoring.chosen_by(val)}
            since_best = 0
        else:
            since_best += 1
            if patience and since_best >= patience:
                log(f"early stop: no validation improvement in {patience} epochs")
                break
    return best["params"], history, best["epoch"], best["chosen_by"], evaluate


_TRAIN_KEYS = ("patches", "patch_valid", "lead_indices", "labels")


def classifier(config, params: dict | None, num_classes: int, *, drop_path: float,
               seed: int) -> Model:
    """A SiT encoder with a fresh `head` of num_classes, loaded from a checkpoint (or random)."""
    runner = backbones.RUNNERS[families.SIT.name]
    graphdef, state = runner.build(config, params, seed=seed, num_classes=int(num_classes),
                                   drop_path=float(drop_path))
    params_state, rest = nnx.split_state(state, nnx.Param, ...)
    return Model(graphdef, params_state, rest, runner, resolve_size(config.model)["depth"])


# ------------------------------------------------------------------- the protocols
def _eval_batches(data, data_cfg, rows):
    """The split's evaluation batches, read once and kept in memory for every epoch."""
    source = datasets.make_source(data, data_cfg, rows)
    batches = list(pipeline.make_eval_dataset(data_cfg, source=source))
    for batch in batches:  # the source's examples -> its records -> rows of `data`
        batch["index"] = np.asarray(rows)[source.record_rows[np.asarray(batch["index"])]]
    return batches


def _records_in(batches) -> int:
    """How many records the evaluation batches hold (padding left out)."""
    rows = [np.asarray(b["index"])[np.asarray(b["valid"], bool)] for b in batches]
    return int(len(np.unique(np.concatenate(rows)))) if rows else 0


def finetune_fit_predict(config, params, data, data_cfg, mesh, settings, ft, keep: dict):
    """Fine-tuning as a runs.py model: each call a fresh head on the checkpoint's encoder, the
    recipe `ft`, the best epoch on validation, then each test set predicted ONCE
    with that epoch's parameters. The first call's model and test batches stay in `keep` (the
    report's embedding plot)."""
    batch_size = data_cfg.batch_size

    def fit_predict(train_rows, val_rows, tests):
        model = classifier(config, params, len(data.classes), drop_path=ft["drop_path"],
                           seed=runs.init_seed(settings))
        trained_on: set = set()
        train_iter = train_batches(data_cfg, datasets.make_source(data, data_cfg, train_rows),
                                   batch_size=batch_size, seed=settings["seed"], seen=trained_on)
        steps = ft["steps_per_epoch"] or max(1, math.ceil(len(train_rows) / batch_size))
        problem = ranges.finetune_steps_problem(ft, "", steps, f"{steps} steps per epoch (one "
                                                f"pass over {len(train_rows)} training records "
                                                f"at batch {batch_size})")
        if problem:  # the flags' own product was checked with them; this one needs the data
            raise ValueError(problem)
        val_batches = _eval_batches(data, data_cfg, val_rows)
        best, history, best_epoch, chosen_by, evaluate = fit(
            model, mesh=mesh, train_iter=train_iter, val_batches=val_batches,
            label_type=data.label_type, epochs=ft["epochs"], steps_per_epoch=steps,
            peak_lr=ft["base_lr"] * batch_size / 256, weight_decay=ft["weight_decay"],
            layer_decay=ft["layer_decay"], warmup_epochs=ft["warmup_epochs"],
            label_smoothing=ft["label_smoothing"], patience=ft["patience"],
            seed=settings["seed"], crop_average=data_cfg.eval_crop_average, log=logging.info)
        probs_val, labels_val, _ = predict(evaluate, best, model.rest, val_batches,
                                           data.label_type, data_cfg.eval_crop_average)
        out = {"val": {"probs": probs_val, "labels": labels_val}, "tests": {},
               "info": {"best_epoch": best_epoch, "chosen_by": chosen_by, "history": history,
                        # The records read (as the probe counts them), not those assigned: a
                        # record that fails to read is never trained or selected on.
                        "n_train": len(trained_on), "n_val": _records_in(val_batches)}}
        for name, rows in tests.items():
            batches = _eval_batches(data, data_cfg, rows)
            probs, labels, index = predict(evaluate, best, model.rest, batches, data.label_type,
                                           data_cfg.eval_crop_average)
            out["tests"][name] = {"probs": probs, "labels": labels, "rows": index,
                                  "ids": [data.infos[r].record_id for r in index]}
            keep.setdefault("embedding", (model, best, batches))
        return out

    return fit_predict


def _embeddings(model, best, batches, mesh):
    """Pooled features of the fine-tuned encoder (crops averaged) for the PCA plot."""
    backbone = backbones.Backbone(model.runner, model.graphdef, (best, model.rest), None, 0)
    out = backbones.run(backbones.make_apply(backbone, mesh), batches)
    return out["outputs"].mean(1), out["index"]


# The recipe fields that follow the checkpoint's data path when a flag leaves them unset
# (None): ST-MEM's configs fine-tune plain AdamW on all parameters with no layer-wise decay and
# no drop-path (docs/reference/stmem.md, its data path, step 6); ours decays the lr by layer (0.75)
# and drops paths (0.1), the MAE fine-tuning recipe. Net1D is not fine-tuned here.
RECIPE_BY_DATA_PATH = {"crema": {"layer_decay": 0.75, "drop_path": 0.1},
                       "stmem": {"layer_decay": 1.0, "drop_path": 0.0}}


def resolve_recipe(ft: dict, data_path: str) -> dict:
    """`ft` with its unset (None) fields taken from the data path's recipe."""
    defaults = RECIPE_BY_DATA_PATH.get(data_path, RECIPE_BY_DATA_PATH["crema"])
    return {**ft, **{k: v for k, v in defaults.items() if ft.get(k) is None}}


def prediction_averaging(data_cfg) -> str:
    return ("mean of the crops' probabilities" if _averaged(data_cfg) == "probability"
            else "mean of the crops' logits")


def _averaged(data_cfg) -> str:
    """What fine-tuning averages over a record's crops: its head has no embedding to average."""
    return "probability" if data_cfg.eval_crop_average == "probability" else "logit"


def lead_setup(config, lead_name: str, settings: dict, ft: dict, mesh):
    """(evaluation data section for one lead set, the recipe with its unset fields taken from
    the data path): the checkpoint's crops, and the recipe's training augmentations."""
    data_cfg = backbones.eval_data_config(config, protocols.lead_set(lead_name),
                                          batch_size=mesh_lib.round_batch(settings["batch_size"],
                                                                          mesh),
                                          num_workers=settings["num_workers"],
                                          preset=settings["preset"])
    ft = resolve_recipe(ft, data_cfg.preset)
    if ft["augment"] != ["config"]:
        data_cfg.augment.names = tuple(a for a in ft["augment"] if a != "none")
    return data_cfg, ft


def finetune_model(config, params, data, settings: dict, ft: dict, mesh, *, model: str,
                   plan=None, groups=None) -> dict:
    """Every protocol of `settings` for one SiT checkpoint (or 'random': supervised from
    scratch). Unset recipe fields follow the data path (resolve_recipe). Returns {"runs",
    "cross_domain", "predictions", "embedding", "model", "recipe" (the recipe used)}."""
    family = families.family_of(config.model)
    if not family.fine_tunable:
        raise ValueError(f"finetune trains SiT encoders only; probe {family.title} features "
                         "with `crema-jax probe` instead")
    out = {"runs": [], "cross_domain": [], "predictions": {"runs": {}, "cross_domain": {}}}
    keep = {}
    for lead_name in settings["lead_sets"]:
        data_cfg, ft = lead_setup(config, lead_name, settings, ft, mesh)
        first = lead_name == settings["lead_sets"][0]
        if first:
            out["recipe"] = ft
            print(f"model {model}: " + backbones.describe_data_path(
                data_cfg, settings["preset"], averaging=_averaged(data_cfg))
                  + f"; layer decay {ft['layer_decay']:g}, drop-path {ft['drop_path']:g}",
                  flush=True)
            out["model"] = {"checkpoint": settings["checkpoint"], "backbone": family.name,
                            "init_seed": runs.random_init_seed(settings),
                            "data_path": data_cfg.preset,
                            "data": backbones.data_path_summary(
                                data_cfg, averaging=_averaged(data_cfg)),
                            "crop_averaging": prediction_averaging(data_cfg),
                            "recipe": {k: ft[k] for k in ("layer_decay", "drop_path")}}
        fit_predict = finetune_fit_predict(config, params, data, data_cfg, mesh, settings, ft,
                                           keep)
        new_runs, cross, preds = runs.model_runs(
            fit_predict, data, lead_name, settings, method="finetune", model=model, plan=plan,
            groups=groups, cross_domain=settings["cross_domain"] and first)
        out["runs"] += new_runs
        out["cross_domain"] += cross
        for key in preds:
            out["predictions"][key].update(preds[key])
    out["embedding"] = _embeddings(*keep["embedding"], mesh)
    return out


def run_finetune(settings: dict, ft: dict) -> dict:
    """Every protocol of `settings` (the finetune command's flags) with the recipe `ft`; writes
    report.json/.md, roc.png, embeddings_pca.png and predictions.npz to the workdir."""
    start = time.time()
    with report.claimed_workdir(settings["workdir"], checkpoints=[settings["checkpoint"]],
                                  inputs=[settings["root"], settings["cache_dir"]]) as workdir:
        config, params = backbones.load_config_and_params(
            settings["checkpoint"], backbone=settings["backbone"] or families.SIT.name,
            model_size=settings["model_size"])
        data = datasets.load_dataset(settings)
        plan, groups = folds.dataset_plan(data, settings)
        result = finetune_model(config, params, data, settings, ft, mesh_lib.make_mesh(),
                                model="A", plan=plan, groups=groups)
        is_random = settings["checkpoint"] == backbones.RANDOM
        out = report.new_report(
            title=("Supervised from scratch (random init)" if is_random else "Fine-tuning")
            + f": {families.SIT.name} {settings['checkpoint']}", command="finetune",
            settings={**settings, **result["recipe"]},
            data=data, models={"A": result["model"]}, runs=result["runs"],
            cross_domain=result["cross_domain"], record_folds=plan, seconds=time.time() - start)
        head = result["predictions"]["runs"][out["headline"]["run"]]
        readable = [data.display.get(c, c) for c in data.classes]
        features, rows = result["embedding"]
        groups_ = {"label": plots.primary_label(data.labels[rows], readable),
                   "source": list(data.sources[rows])}
        report.write_all(out, workdir,
                         roc=report.headline_roc(head, readable, out["headline"]["run"]),
                         embeddings=(features, groups_, "fine-tuned features, a test set (PCA)"),
                         predictions=report.prediction_arrays(head, data.classes))
        return out
