"""Linear probing: a linear head on frozen, standardised features, and the probe protocols.

The head is trained full-batch (features fit in memory: 100k ECGs x 768 floats is 300 MB) with
L-BFGS (default; the objective is convex, so it converges to the regularised optimum) or Adam.
All L2 strengths of the grid are trained at once with `jax.vmap`, and the one with the best
validation macro AUROC is kept (scoring.validation_key: validation loss breaks ties, and
chooses alone when no class is scorable on validation; the report says so).

Objective: mean over records of BCE (multilabel) or softmax cross-entropy (multiclass)
+ l2/2 * ||W||^2 (bias not penalised). This equals scikit-learn's LogisticRegression with
C = 1 / (l2 * n_train), which the tests use as the independent reference.

`probe_model` (the body of `crema-jax probe`, and of `compare` for each model): features are
extracted once per lead set (the backbone's evaluation crops, averaged; frozen_features.py, with
the training rows and data loss every head on them shares), then every protocol of
runs.py trains a head on them (label fractions, on the splits or K folds, and cross-domain).
Multi-process runs are not supported (one process, all its devices).
"""
from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from crema_jax.evaluate import (datasets, folds, frozen_features, plots, ranges, report, runs,
                                scoring)
from crema_jax.inference import backbones
from crema_jax.runtime import mesh as mesh_lib


@dataclasses.dataclass(frozen=True)
class LinearProbe:
    kernel: np.ndarray  # (D, C), acting on standardised features
    bias: np.ndarray  # (C,)
    mean: np.ndarray  # (D,) feature mean of the training split
    std: np.ndarray  # (D,) feature std of the training split (1 where constant)
    label_type: str
    l2: float
    val_auroc_by_l2: dict  # l2 -> validation macro AUROC (None when undefined)
    chosen_by: str = scoring.BY_AUROC  # what chose the L2 (scoring.chosen_by)


def _logits(params, x):
    return x @ params["kernel"] + params["bias"]


def _objective(params, x, y, w, l2, label_type):
    """Weighted mean data loss (w = 0 on padding rows) + l2/2 ||W||^2."""
    data = frozen_features.weighted_data_loss(_logits(params, x), y, w, label_type)
    return data + 0.5 * l2 * jnp.sum(params["kernel"] ** 2)


def _fit_one(x, y, w, l2, *, label_type: str, optimizer: str, steps: int, learning_rate: float):
    """Minimise the objective from zero weights for a fixed number of full-batch steps."""
    params = {"kernel": jnp.zeros((x.shape[1], y.shape[1]), jnp.float32),
              "bias": jnp.zeros((y.shape[1],), jnp.float32)}
    value_fn = lambda p: _objective(p, x, y, w, l2, label_type)  # noqa: E731
    if optimizer == "lbfgs":
        tx = optax.lbfgs()
        value_and_grad = optax.value_and_grad_from_state(value_fn)
    elif optimizer == "adam":
        tx = optax.adam(learning_rate)
        value_and_grad = jax.value_and_grad(value_fn)
    else:  # a name of ranges.PROBE_OPTIMIZERS without its code here must not run Adam
        raise ValueError(f"probe optimizer {optimizer!r}: expected one of "
                         f"{ranges.PROBE_OPTIMIZERS}, each with its code in _fit_one")

    def step(carry, _):
        p, state = carry
        if optimizer == "lbfgs":
            value, grad = value_and_grad(p, state=state)
            updates, state = tx.update(grad, state, p, value=value, grad=grad, value_fn=value_fn)
        else:
            value, grad = value_and_grad(p)
            updates, state = tx.update(grad, state, p)
        return (optax.apply_updates(p, updates), state), value

    (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=steps)
    return params


@functools.partial(jax.jit, static_argnames=("label_type", "optimizer", "steps"))
def _fit_grid(x, y, w, l2s, learning_rate, *, label_type, optimizer, steps):
    """All L2 values at once. Jitted at module level so one compile serves every protocol run
    with the same padded shapes."""
    return jax.vmap(lambda l2: _fit_one(x, y, w, l2, label_type=label_type, optimizer=optimizer,
                                        steps=steps, learning_rate=learning_rate))(l2s)


def fit_linear_probe(x_train, y_train, x_val, y_val, *, label_type: str = "multilabel",
                     l2_grid=ranges.PROBE_DEFAULTS["l2_grid"],
                     optimizer: str = ranges.PROBE_DEFAULTS["optimizer"],
                     steps: int = ranges.PROBE_DEFAULTS["steps"],
                     learning_rate: float = 1e-2) -> LinearProbe:
    """Train one head per L2 value on standardised features; keep the best on validation.

    Features are (n, D), or (n, C, D) for C crops per example (ST-MEM's protocol): every crop is
    then a training row with its example's labels, and an example's validation probabilities
    are the mean of its crops' (as `predict_proba`)."""
    x_train, y_train = frozen_features.crop_rows(x_train, y_train)
    if optimizer not in ranges.PROBE_OPTIMIZERS:
        raise ValueError(f"--probe_optimizer={optimizer!r}: expected one of "
                         f"{ranges.PROBE_OPTIMIZERS}")
    if label_type not in ("multilabel", "multiclass"):
        raise ValueError(f"label_type={label_type!r}: expected 'multilabel' or 'multiclass'")
    xt, yt, w, mean, std = frozen_features.training_rows(x_train, y_train)
    xv = (np.asarray(x_val, np.float32) - mean) / std
    all_params = jax.device_get(_fit_grid(
        jnp.asarray(xt), jnp.asarray(yt), jnp.asarray(w), jnp.asarray(l2_grid, jnp.float32),
        jnp.float32(learning_rate), label_type=label_type, optimizer=optimizer, steps=steps))
    xv = xv if xv.ndim == 3 else xv[:, None]
    val_logits = np.einsum("ncd,gdk->gnck", xv, all_params["kernel"]) \
        + all_params["bias"][:, None, None, :]
    candidates = [scoring.validation_key(np.asarray(y_val),
                                         backbones.probabilities(val_logits[g], label_type).mean(1),
                                         label_type) for g in range(len(l2_grid))]
    best = scoring.best_on_validation(candidates)
    return LinearProbe(kernel=np.asarray(all_params["kernel"][best]),
                       bias=np.asarray(all_params["bias"][best]), mean=mean, std=std,
                       label_type=label_type, l2=float(l2_grid[best]),
                       val_auroc_by_l2={float(l2): c["macro_auroc"]
                                        for l2, c in zip(l2_grid, candidates)},
                       chosen_by=scoring.chosen_by(candidates[best]))


def predict_proba(probe: LinearProbe, features: np.ndarray) -> np.ndarray:
    """Class probabilities (sigmoid or softmax) for raw (unstandardised) features (n, D); for
    (n, C, D) crops, the mean of the crops' probabilities (ST-MEM's averaging)."""
    x = (np.asarray(features, np.float32) - probe.mean) / probe.std
    probs = backbones.probabilities(x @ probe.kernel + probe.bias, probe.label_type)
    return probs.mean(1) if probs.ndim == 3 else probs


# ------------------------------------------------------------------------------ the protocols
def head_fit_predict(features: frozen_features.Features, data, probe_kwargs: dict):
    """frozen_features.head_fit_predict with the linear probe as the head."""
    return frozen_features.head_fit_predict(features, data, probe_kwargs,
                                            fit=fit_linear_probe, predict=predict_proba)


def crop_averaging(data_cfg) -> str:
    return ("mean of the crops' probabilities" if data_cfg.eval_crop_average == "probability"
            else "mean of the crops' features")


def probe_model(backbone, data, settings: dict, probe_kwargs: dict, mesh, *, model: str,
                plan=None, groups=None) -> dict:
    """Every protocol of `settings` for one backbone: features once per lead set, then a head
    per run (runs.py). Returns {"runs", "cross_domain", "predictions", "features" (the first
    lead set's), "model" (the report's description)}."""
    out = {"runs": [], "cross_domain": [], "predictions": {"runs": {}, "cross_domain": {}}}
    for lead_name in settings["lead_sets"]:
        features = frozen_features.extract_features(backbone, data, lead_name, settings, mesh)
        first = lead_name == settings["lead_sets"][0]
        if first:
            print(f"model {model}: " + backbones.describe_data_path(features.data_cfg,
                                                                    settings["preset"]),
                  flush=True)
            out["features"] = features
        new_runs, cross, preds = runs.model_runs(
            head_fit_predict(features, data, probe_kwargs), data, lead_name, settings,
            method="probe", model=model, plan=plan, groups=groups,
            cross_domain=settings["cross_domain"] and first)
        out["runs"] += new_runs
        out["cross_domain"] += cross
        for key in preds:
            out["predictions"][key].update(preds[key])
    cfg = out["features"].data_cfg
    out["model"] = {"checkpoint": settings["checkpoint"], "backbone": backbone.name,
                    "init_seed": runs.random_init_seed(settings),
                    "data_path": cfg.preset, "data": backbones.data_path_summary(cfg),
                    "crop_averaging": crop_averaging(cfg),
                    "examples_read": int(len(out["features"].rows))}
    return out


def run_probe(settings: dict, probe_kwargs: dict) -> dict:
    """Every protocol of `settings` (the probe command's flags) on one backbone's features;
    writes report.json/.md, roc.png, embeddings_pca.png and predictions.npz to the workdir."""
    start = time.time()
    with report.claimed_workdir(settings["workdir"], checkpoints=[settings["checkpoint"]],
                                  inputs=[settings["root"], settings["cache_dir"]]) as workdir:
        backbone = backbones.load(settings["checkpoint"], backbone=settings["backbone"],
                                  model_size=settings["model_size"],
                                  seed=runs.init_seed(settings))
        data = datasets.load_dataset(settings)
        plan, groups = folds.dataset_plan(data, settings)
        result = probe_model(backbone, data, settings, probe_kwargs, mesh_lib.make_mesh(),
                             model="A", plan=plan, groups=groups)
        out = report.new_report(
            title=f"Linear probe: {backbone.name} {settings['checkpoint']}", command="probe",
            settings={**settings, **probe_kwargs}, data=data, models={"A": result["model"]},
            runs=result["runs"], cross_domain=result["cross_domain"], record_folds=plan,
            seconds=time.time() - start)
        features = result["features"]
        readable = [data.display.get(c, c) for c in data.classes]
        head = result["predictions"]["runs"][out["headline"]["run"]]
        report.write_all(out, workdir, roc=report.headline_roc(head, readable,
                                                               out["headline"]["run"]),
                         embeddings=(features.values.mean(1), {
                             "label": plots.primary_label(data.labels[features.rows], readable),
                             "source": list(data.sources[features.rows])}, "frozen features (PCA)"),
                         predictions=report.prediction_arrays(head, data.classes))
        return out
