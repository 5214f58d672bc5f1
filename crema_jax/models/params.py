"""Models <-> the nested param dicts that checkpoints and converters hold.

"params" is a checkpoint's item: every model variable except RNG state (nnx.Param plus the fixed
sin-cos tables), as a nested dict (nnx.List entries under integer keys; Orbax may hand them back
as digit strings, which `fill_state` accepts too).
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from crema_jax import models
from crema_jax.models import families
from crema_jax.runtime import trees

_NOT_RNG = nnx.Not(nnx.RngState)


def abstract_params(model_cfg) -> dict:
    """Nested dict of jax.ShapeDtypeStruct: shapes without allocating or computing anything."""
    model = nnx.eval_shape(lambda: models.build_model(model_cfg, rngs=nnx.Rngs(0)))
    return nnx.to_pure_dict(nnx.state(model, _NOT_RNG))


def init_params(model_cfg, seed: int = 0, *, only: list[str] | None = None) -> dict:
    """Freshly initialised params as numpy arrays: nested, or {path: array} for the "a/b/0/c"
    paths in `only` (XLA then compiles just those initialisers). One jitted init: one compile,
    not one per layer as in eager mode."""
    def init(key):
        model = models.build_model(model_cfg, rngs=nnx.Rngs(key))
        tree = nnx.to_pure_dict(nnx.state(model, _NOT_RNG))
        if only is None:
            return tree
        flat = trees.flatten(tree)
        return {p: flat[p] for p in only}
    return jax.tree.map(np.asarray, jax.jit(init)(jax.random.key(seed)))


def fill_state(state, params: Mapping, what: str):
    """Copy a checkpoint's nested dict into an nnx.State in place; every missing or mis-shaped
    entry is named (a ValueError)."""
    want = trees.flatten(nnx.to_pure_dict(state))
    have = trees.flatten(trees.int_keys(params))
    missing = sorted(set(want) - set(have))
    if missing:
        raise ValueError(f"{what}: the checkpoint lacks parameters {missing[:5]} "
                         f"({len(missing)} missing); is it a checkpoint of this model?")
    wrong = [f"{path}: checkpoint {np.shape(have[path])}, model {tuple(target.shape)}"
             for path, target in want.items() if tuple(np.shape(have[path])) != target.shape]
    if wrong:
        raise ValueError(f"{what}: {len(wrong)} parameter(s) have other shapes than the model: "
                         + "; ".join(wrong[:5]))
    values = {path: jnp.asarray(have[path], target.dtype) for path, target in want.items()}
    nnx.replace_by_pure_dict(state, trees.unflatten_like(values, nnx.to_pure_dict(state)))
    return state


def merge(model_cfg, params: Mapping):
    """The nnx model of `model_cfg` holding `params` (built abstractly: nothing initialised).

    The params' structure decides which model of the config's family is built (a SiT
    checkpoint holds either the pretraining model or a bare encoder).
    """
    name = families.family_of(model_cfg).model_of_params(params)
    if name != model_cfg.name:
        model_cfg = model_cfg.copy_and_resolve_references()
        with model_cfg.unlocked():
            model_cfg.name = name
    model = nnx.eval_shape(lambda: models.build_model(model_cfg, rngs=nnx.Rngs(0)))
    graphdef, state, rest = nnx.split(model, _NOT_RNG, ...)
    if jax.tree.leaves(rest):
        raise ValueError("model holds RNG state; expected a deterministic model")
    fill_state(state, params, f"config.model.name={model_cfg.name}")
    return nnx.merge(graphdef, state)
