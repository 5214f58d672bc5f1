"""The frozen-encoder protocol's small MLP head: one hidden ReLU layer on frozen, standardised
features (the benchmark protocol between the linear probe and fine-tuning).

Objective: the linear probe's data loss (frozen_features.weighted_data_loss: mean BCE or
softmax cross-entropy) on x -> relu(x W1 + b1) W2 + b2, plus l2/2 (||W1||^2 + ||W2||^2).
Trained full-batch with Adam for a fixed number of steps from a seeded init (He-normal W1, zero
W2), every L2 strength of the grid at once (`jax.vmap`); chosen on validation as the probe is
(scoring.validation_key).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from crema_jax.evaluate import frozen_features, ranges, scoring
from crema_jax.inference import backbones


@dataclasses.dataclass(frozen=True)
class MlpHead:
    params: dict        # w1 (D, H), b1 (H,), w2 (H, C), b2 (C,) on standardised features
    mean: np.ndarray
    std: np.ndarray
    label_type: str
    l2: float
    val_auroc_by_l2: dict
    chosen_by: str = scoring.BY_AUROC


def _logits(params, x):
    hidden = jax.nn.relu(x @ params["w1"] + params["b1"])
    return hidden @ params["w2"] + params["b2"]


def _objective(params, x, y, w, l2, label_type):
    data = frozen_features.weighted_data_loss(_logits(params, x), y, w, label_type)
    return data + 0.5 * l2 * (jnp.sum(params["w1"] ** 2) + jnp.sum(params["w2"] ** 2))


@functools.partial(jax.jit, static_argnames=("hidden", "label_type", "steps"))
def _fit_grid(x, y, w, l2s, learning_rate, seed, *, hidden, label_type, steps):
    w1 = jax.random.normal(jax.random.key(seed), (x.shape[1], hidden)) * jnp.sqrt(2.0 / x.shape[1])
    init = {"w1": w1, "b1": jnp.zeros(hidden), "w2": jnp.zeros((hidden, y.shape[1])),
            "b2": jnp.zeros(y.shape[1])}
    tx = optax.adam(learning_rate)

    def fit_one(l2):
        grad_fn = jax.grad(lambda p: _objective(p, x, y, w, l2, label_type))

        def step(carry, _):
            params, state = carry
            updates, state = tx.update(grad_fn(params), state, params)
            return (optax.apply_updates(params, updates), state), None

        (params, _), _ = jax.lax.scan(step, (init, tx.init(init)), None, length=steps)
        return params

    return jax.vmap(fit_one)(l2s)


def fit_mlp_head(x_train, y_train, x_val, y_val, *, label_type: str = "multilabel",
                 l2_grid=ranges.MLP_DEFAULTS["l2_grid"],
                 hidden: int = ranges.MLP_DEFAULTS["hidden"],
                 steps: int = ranges.MLP_DEFAULTS["steps"],
                 learning_rate: float = ranges.MLP_DEFAULTS["learning_rate"],
                 seed: int = 0) -> MlpHead:
    """One head per L2 strength on standardised features; the best on validation is kept.
    Features (n, D) or (n, C crops, D) as linear_probe.fit_linear_probe takes them."""
    xt, yt, w, mean, std = frozen_features.training_rows(
        *frozen_features.crop_rows(x_train, y_train))
    grid = jax.device_get(_fit_grid(jnp.asarray(xt), jnp.asarray(yt), jnp.asarray(w),
                                    jnp.asarray(l2_grid, jnp.float32), jnp.float32(learning_rate),
                                    int(seed), hidden=int(hidden), label_type=label_type,
                                    steps=int(steps)))
    heads = [MlpHead({k: np.asarray(v[g]) for k, v in grid.items()}, mean, std, label_type,
                     float(l2), {}) for g, l2 in enumerate(l2_grid)]
    candidates = [scoring.validation_key(np.asarray(y_val), predict_proba(head, x_val),
                                         label_type) for head in heads]
    best = scoring.best_on_validation(candidates)
    return dataclasses.replace(
        heads[best], chosen_by=scoring.chosen_by(candidates[best]),
        val_auroc_by_l2={float(l2): c["macro_auroc"] for l2, c in zip(l2_grid, candidates)})


def predict_proba(head: MlpHead, features: np.ndarray) -> np.ndarray:
    """Probabilities for raw features (n, D), or the mean over crops of (n, C, D)."""
    x = (np.asarray(features, np.float32) - head.mean) / head.std
    logits = np.asarray(_logits(head.params, jnp.asarray(x)), np.float64)
    probs = backbones.probabilities(logits, head.label_type)
    return probs.mean(1) if probs.ndim == 3 else probs
