"""Models <-> param dicts for the export tools: templates, initialisation, checkpoint loading.

"params" is the checkpoint's item: every model variable except RNG state (nnx.Param plus the
fixed sin-cos tables), as a nested dict (nnx.List entries under integer keys).
"""
from __future__ import annotations

from typing import Mapping

import jax
import numpy as np
from flax import nnx

_NOT_RNG = nnx.Not(nnx.RngState)


def build(model_cfg, rngs: nnx.Rngs):
    from crema_jax.models import build_model  # import late: keeps `--help` fast
    return build_model(model_cfg, rngs=rngs)


def abstract_params(model_cfg) -> dict:
    """Nested dict of jax.ShapeDtypeStruct: shapes without allocating or computing anything."""
    model = nnx.eval_shape(lambda: build(model_cfg, nnx.Rngs(0)))
    return nnx.to_pure_dict(nnx.state(model, _NOT_RNG))


def init_params(model_cfg, seed: int = 0, *, only: list[str] | None = None) -> dict:
    """Freshly initialised params as numpy arrays: nested, or {path: array} for the "a/b/0/c"
    paths in `only` (XLA then compiles just those initialisers). One jitted init: one compile,
    not one per layer as in eager mode."""
    from crema_jax.export.convert import flatten

    def init(key):
        tree = nnx.to_pure_dict(nnx.state(build(model_cfg, nnx.Rngs(key)), _NOT_RNG))
        if only is None:
            return tree
        flat = flatten(tree)
        return {p: flat[p] for p in only}
    return jax.tree.map(np.asarray, jax.jit(init)(jax.random.key(seed)))


def merge(model_cfg, params: Mapping):
    """The nnx model with `params` (shapes must match the config's model).

    A SiT checkpoint holds either the pretraining model ("encoder", "decoder", ...) or a bare
    encoder (fine-tuned); the params' structure decides which module is built.
    """
    if model_cfg.get("name", "sit") in ("sit", "sit_encoder"):
        model_cfg = model_cfg.copy_and_resolve_references()
        with model_cfg.unlocked():
            model_cfg.name = "sit" if "encoder" in params else "sit_encoder"
    model = nnx.eval_shape(lambda: build(model_cfg, nnx.Rngs(0)))
    graphdef, state, rest = nnx.split(model, _NOT_RNG, ...)
    nnx.replace_by_pure_dict(state, jax.tree.map(np.asarray, dict(params)))
    if jax.tree.leaves(rest):
        raise ValueError("model holds RNG state; export tools expect deterministic models")
    return nnx.merge(graphdef, state)


def load_checkpoint(path):
    """(params, full config, step) of the latest complete checkpoint under `path`."""
    from crema_jax.train.checkpoint import load_model_checkpoint
    return load_model_checkpoint(path)
