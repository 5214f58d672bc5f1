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
extracted once per lead set (the backbone's evaluation crops, averaged), then every protocol of
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
from absl import logging

from crema_jax.data.pipeline import datasets as pipeline
from crema_jax.evaluate import datasets, folds, plots, protocols, report, runs, scoring
from crema_jax.inference import backbones
from crema_jax.runtime import mesh as mesh_lib

DEFAULT_L2_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


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


def standardiser(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of training features; constant dimensions get std 1 (left unscaled)."""
    features = np.asarray(features, np.float64)
    mean, std = features.mean(0), features.std(0)
    return mean.astype(np.float32), np.where(std > 1e-8, std, 1.0).astype(np.float32)


def _logits(params, x):
    return x @ params["kernel"] + params["bias"]


def weighted_data_loss(logits, y, w, label_type: str):
    """Mean cross-entropy weighted by w (0 on padding rows): softmax (multiclass) or summed
    sigmoid (multilabel). The probe's and the MLP head's objectives add their L2 terms to it."""
    if label_type == "multiclass":
        per_row = optax.softmax_cross_entropy(logits, y)
    else:
        per_row = jnp.sum(optax.sigmoid_binary_cross_entropy(logits, y), axis=-1)
    return jnp.sum(w * per_row) / jnp.sum(w)


def _objective(params, x, y, w, l2, label_type):
    """Weighted mean data loss (w = 0 on padding rows) + l2/2 ||W||^2."""
    data = weighted_data_loss(_logits(params, x), y, w, label_type)
    return data + 0.5 * l2 * jnp.sum(params["kernel"] ** 2)


def _fit_one(x, y, w, l2, *, label_type: str, optimizer: str, steps: int, learning_rate: float):
    """Minimise the objective from zero weights for a fixed number of full-batch steps."""
    params = {"kernel": jnp.zeros((x.shape[1], y.shape[1]), jnp.float32),
              "bias": jnp.zeros((y.shape[1],), jnp.float32)}
    value_fn = lambda p: _objective(p, x, y, w, l2, label_type)  # noqa: E731
    if optimizer == "lbfgs":
        tx = optax.lbfgs()
        value_and_grad = optax.value_and_grad_from_state(value_fn)
    else:
        tx = optax.adam(learning_rate)
        value_and_grad = jax.value_and_grad(value_fn)

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


def _bucket(n: int) -> int:
    """Rows padded to a power of two (>= 64): label fractions and per-source heads then share
    compiled shapes instead of compiling once per training-set size."""
    return max(64, 1 << (int(n) - 1).bit_length())


OPTIMIZERS = ("lbfgs", "adam")


def training_rows(x_train, y_train):
    """(standardised features, labels, row weights, mean, std) of a head's training rows,
    padded to _bucket rows with weight 0 (the heads of linear_probe.py and mlp_head.py)."""
    mean, std = standardiser(x_train)
    n = len(x_train)
    pad = _bucket(n) - n
    xt = np.pad((np.asarray(x_train, np.float32) - mean) / std, ((0, pad), (0, 0)))
    yt = np.pad(np.asarray(y_train, np.float32), ((0, pad), (0, 0)))
    w = np.r_[np.ones(n, np.float32), np.zeros(pad, np.float32)]
    return xt, yt, w, mean, std


def fit_linear_probe(x_train, y_train, x_val, y_val, *, label_type: str = "multilabel",
                     l2_grid=DEFAULT_L2_GRID, optimizer: str = "lbfgs", steps: int = 200,
                     learning_rate: float = 1e-2) -> LinearProbe:
    """Train one head per L2 value on standardised features; keep the best on validation.

    Features are (n, D), or (n, C, D) for C crops per example (ST-MEM's protocol): every crop is
    then a training row with its example's labels, and an example's validation probabilities
    are the mean of its crops' (as `predict_proba`)."""
    x_train, y_train = crop_rows(x_train, y_train)
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"--probe_optimizer={optimizer!r}: expected one of {OPTIMIZERS}")
    if label_type not in ("multilabel", "multiclass"):
        raise ValueError(f"label_type={label_type!r}: expected 'multilabel' or 'multiclass'")
    xt, yt, w, mean, std = training_rows(x_train, y_train)
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


def crop_rows(x, y):
    """(n, C, D) crops and (n, K) labels -> (n*C, D) rows and their labels; 2-D x as it is."""
    x = np.asarray(x)
    if x.ndim == 2:
        return x, y
    return x.reshape(-1, x.shape[-1]), np.repeat(np.asarray(y), x.shape[1], axis=0)


# ------------------------------------------------------------------------------ the protocols
@dataclasses.dataclass
class Features:
    """One backbone's frozen features of a dataset's readable examples, for one lead set."""
    values: np.ndarray  # (n, 1, D) the crops' mean, or (n, C, D) per crop (probability averaging)
    rows: np.ndarray    # (n,) the dataset record of each example
    ids: list           # (n,) record ids, "ID#k" for window k of a record cut into windows
    data_cfg: object


def extract_features(backbone, data, lead_name: str, settings: dict, mesh) -> Features:
    """Features of every readable example of `data` through `backbone`'s evaluation crops."""
    # No larger than the records: the last batch is padded to its size (--batch_size=2048 on
    # 45 records was killed for memory).
    batch_size = mesh_lib.round_batch(min(settings["batch_size"], max(len(data.infos), 1)),
                                      mesh)
    data_cfg = backbones.eval_data_config(backbone, protocols.lead_set(lead_name),
                                          batch_size=batch_size,
                                          num_workers=settings["num_workers"],
                                          preset=settings["preset"])
    t0 = time.time()
    source = datasets.make_source(data, data_cfg)
    out = backbones.run(backbones.make_apply(backbone, mesh, output="features"),
                        pipeline.make_eval_dataset(data_cfg, source=source))
    logging.info("features (%s leads): %d examples in %.1fs", lead_name, len(out["index"]),
                 time.time() - t0)
    # (n, 1, D): the crops' features averaged; (n, C, D): each crop a row, its probabilities
    # averaged (data.eval_crop_average "probability", ST-MEM).
    values = (out["outputs"] if data_cfg.eval_crop_average == "probability"
              else out["outputs"].mean(1, keepdims=True))
    windowed = getattr(source, "reading", None) is not None and source.reading.window_seconds > 0
    rows = source.record_rows[out["index"]]
    ids = [f"{data.infos[r].record_id}#{int(source.windows[i])}" if windowed
           else data.infos[r].record_id for r, i in zip(rows, out["index"])]
    return Features(values, np.asarray(rows, np.int64), ids, data_cfg)


def head_fit_predict(features: Features, data, probe_kwargs: dict, *, fit=None, predict=None):
    """The linear probe (or another head on frozen features: `fit` like fit_linear_probe,
    `predict` like predict_proba) on `features` as a runs.py model: records -> their
    examples. Its info's n_train and n_val count the records it read (they replace the
    records assigned in the run's entry)."""
    fit, predict = fit or fit_linear_probe, predict or predict_proba
    labels = data.labels[features.rows]

    def examples(rows):
        return np.flatnonzero(np.isin(features.rows, rows))

    def fit_predict(train_rows, val_rows, tests):
        train, val = examples(train_rows), examples(val_rows)
        head = fit(features.values[train], labels[train], features.values[val], labels[val],
                   label_type=data.label_type, **probe_kwargs)
        out = {"val": {"probs": predict(head, features.values[val]),
                       "labels": labels[val]},
               "tests": {},
               "info": {"selection": {"l2": head.l2, "chosen_by": head.chosen_by,
                                      "val_macro_auroc_by_l2": {
                                          str(k): v for k, v in head.val_auroc_by_l2.items()}},
                        # The records the head saw (a record the backbone could not read, e.g.
                        # too short for its windows, is not counted as trained on).
                        "n_train": int(len(np.unique(features.rows[train]))),
                        "n_val": int(len(np.unique(features.rows[val])))}}
        for name, rows in tests.items():
            ex = examples(rows)
            out["tests"][name] = {"probs": predict(head, features.values[ex]),
                                  "labels": labels[ex], "rows": features.rows[ex],
                                  "ids": [features.ids[i] for i in ex]}
        return out

    return fit_predict


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
        features = extract_features(backbone, data, lead_name, settings, mesh)
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
