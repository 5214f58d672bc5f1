"""The pure pieces of training: the train state, its shardings, and the train step.

Train state (a plain pytree of arrays, exactly what Orbax saves):
    {"params":    nested dict of trainable nnx.Param values (the optimizer's tree),
     "fixed":     nested dict of the other variables (fixed sin-cos tables; never updated),
     "opt_state": optax state over "params",
     "step":      int32 scalar, optimizer steps done}
The step is `(state, batch, rng) -> (state, metrics)` for any `loss_of(params, fixed, batch, rng)`:
pretraining's (`pretraining_loss`: the model's forward + a crema_jax.losses loss) and
fine-tuning's (a classification loss on the encoder's logits). The model is rebuilt inside with
nnx.merge, so nothing but arrays crosses the jit boundary.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from crema_jax import models


# ------------------------------------------------------------------------------------------------
# State construction (call under jax.set_mesh(mesh) and nnx.logical_axis_rules(rules)).
# ------------------------------------------------------------------------------------------------
def abstract_model_state(model_cfg, mesh):
    """(graphdef, abstract params, abstract fixed): ShapeDtypeStructs carrying NamedShardings."""
    graphdef, abstract = nnx.get_abstract_model(
        lambda: models.build_model(model_cfg, rngs=nnx.Rngs(0)), mesh)
    params, fixed = nnx.split_state(abstract, nnx.Param, ...)
    return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(fixed)


def state_shardings(tx, abstract_params, abstract_fixed, mesh) -> dict:
    """NamedShardings of the whole train state: optimizer moments follow their params."""
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    param_sh = jax.tree.map(lambda x: x.sharding, abstract_params)
    fixed_sh = jax.tree.map(lambda x: x.sharding, abstract_fixed)
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    is_sharding = lambda x: isinstance(x, jax.sharding.Sharding)  # noqa: E731
    opt_sh = optax.tree_map_params(tx, lambda _, s: s, abstract_opt, param_sh,
                                   transform_non_params=lambda _: replicated, is_leaf=is_sharding)
    return {"params": param_sh, "fixed": fixed_sh, "opt_state": opt_sh, "step": replicated}


def init_state(key, *, model_cfg, tx) -> dict:
    """A fresh train state (jit it with out_shardings=state_shardings(...))."""
    model = models.build_model(model_cfg, rngs=nnx.Rngs(params=key))
    _, params, fixed = nnx.split(model, nnx.Param, ...)
    params, fixed = nnx.to_pure_dict(params), nnx.to_pure_dict(fixed)
    return {"params": params, "fixed": fixed, "opt_state": tx.init(params),
            "step": jnp.zeros((), jnp.int32)}


def with_shardings(abstract, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)


# ------------------------------------------------------------------------------------------------
# The train step (pretraining and fine-tuning alike).
# ------------------------------------------------------------------------------------------------
def _scalars(tree: dict, prefix: str) -> dict:
    """Scalar entries of a (possibly nested) loss-metrics dict, flattened with '/' names."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_scalars(v, f"{prefix}{k}/"))
        elif getattr(v, "ndim", 1) == 0:
            out[f"{prefix}{k}"] = v
    return out


def _micro_batches(batch: dict, num: int) -> dict:
    """(B, ...) -> (num, B/num, ...) with micro-batch i = rows i, i+num, ...: every micro-batch
    keeps rows from every batch shard, so each one stays spread over all devices."""
    def split(x):
        if x.shape[0] % num:
            raise ValueError(f"batch of {x.shape[0]} does not split into "
                             f"config.optim.grad_accum_steps={num} micro-batches")
        return jnp.swapaxes(x.reshape((x.shape[0] // num, num) + x.shape[1:]), 0, 1)
    return jax.tree.map(split, batch)


def _value_and_grad(loss_of, params, fixed, batch, rng, grad_accum_steps: int):
    """((loss, aux), grads) of `loss_of(params, fixed, batch, rng) -> (loss, aux dict)`; over
    `grad_accum_steps` micro-batches, the mean of their losses and gradients (= the big-batch
    gradient for per-sample-mean losses; a contrastive term sees only its micro-batch's
    negatives)."""
    def scalar_metrics(*args):
        loss, aux = loss_of(*args)
        return loss, _scalars(aux, "")

    grad_fn = jax.value_and_grad(scalar_metrics, has_aux=True)
    if grad_accum_steps == 1:
        return grad_fn(params, fixed, batch, rng)

    def body(carry, xs):
        micro, i = xs
        (l, a), g = grad_fn(params, fixed, micro, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, carry, (l, a, g)), None
    (l0, a0), g0 = jax.eval_shape(grad_fn, params, fixed, batch, rng)
    zero = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), (l0, a0, g0))
    total, _ = jax.lax.scan(body, zero, (_micro_batches(batch, grad_accum_steps),
                                         jnp.arange(grad_accum_steps)))
    loss, aux, grads = jax.tree.map(lambda x: x / grad_accum_steps, total)
    return (loss, aux), grads


def train_step(state: dict, batch: dict, rng, *, loss_of, tx, schedule,
               grad_accum_steps: int = 1):
    """One optimizer step of `loss_of(params, fixed, batch, rng) -> (loss, aux dict)`. `rng` is
    the run's base key; each step folds in its step number, so a resumed run draws exactly the
    keys an uninterrupted one would."""
    step = state["step"]
    (loss, aux), grads = _value_and_grad(loss_of, state["params"], state["fixed"], batch,
                                         jax.random.fold_in(rng, step), grad_accum_steps)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {"loss": loss, **aux,
               "learning/lr": schedule(step),
               "learning/grad_norm": optax.tree.norm(grads),
               "learning/param_norm": optax.tree.norm(params)}
    new_state = {"params": params, "fixed": state["fixed"], "opt_state": opt_state,
                 "step": step + 1}
    return new_state, metrics


def pretraining_loss(graphdef, loss_fn):
    """`loss_of` for train_step: the pretraining model's forward, then a loss of crema_jax.losses."""
    def loss_of(params, fixed, batch, rng):
        return loss_fn(models.forward(graphdef, (params, fixed), batch, rng), batch)
    return loss_of


def make_jitted_step(shardings: dict, batch_sharding, replicated, **step_kwargs):
    """train_step jitted once: explicit in/out shardings, the state donated."""
    return jax.jit(functools.partial(train_step, **step_kwargs),
                   in_shardings=(shardings, batch_sharding, replicated),
                   out_shardings=(shardings, replicated),
                   donate_argnums=(0,))
