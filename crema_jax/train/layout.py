"""The run's layout on its devices, checked before anything is built, compiled or written: every
parameter's logical axes mapped by the rules onto mesh axes it can be split over.

jax had refused these only while building the sharded state, in a traceback naming neither the
config field nor the parameter (DuplicateSpecError for a `mesh.rules` entry that puts two axes
of one parameter on the same mesh axis).
"""
from __future__ import annotations

import jax
from flax import nnx

from crema_jax import config as config_lib
from crema_jax import models
from crema_jax.models import sharding
from crema_jax.runtime import mesh as mesh_lib
from crema_jax.train import trainer


def check(config, devices=None) -> None:
    """ConfigValueError naming the field when the config's mesh and rules cannot lay out the
    model on `devices` (None: this process's devices)."""
    devices = jax.devices() if devices is None else list(devices)
    mesh = mesh_lib.make_mesh(config.mesh, devices)
    rules = dict(mesh_lib.logical_rules(mesh, config.mesh, sharding.DEFAULT_RULES))
    for path, shape, axes in parameter_axes(trainer.for_target(config.model, mesh)):
        _check_parameter(config, rules, path, axes)


def parameter_axes(model_cfg) -> list[tuple[str, tuple, tuple]]:
    """("a/b/c", shape, logical axes) of every parameter and fixed table of the model, from an
    abstract build (nothing allocated, no device touched)."""
    abstract = nnx.eval_shape(lambda: models.build_model(model_cfg, rngs=nnx.Rngs(0)))
    out = []
    for path, variable in nnx.to_flat_state(nnx.state(abstract)):
        axes = variable.get_metadata().get("out_sharding")
        if axes:
            out.append(("/".join(str(p) for p in path), tuple(variable.shape), tuple(axes)))
    return out


def _targets(rules: dict, name) -> tuple:
    target = rules.get(name) if name else None
    return () if target is None else (target,) if isinstance(target, str) else tuple(target)


def _check_parameter(config, rules: dict, path: str, axes: tuple) -> None:
    used: dict[str, str] = {}
    for name in axes:
        for axis in _targets(rules, name):
            if axis in used:
                raise config_lib.ConfigValueError(
                    f"config.mesh.rules={config.mesh.rules!r}: logical axes {used[axis]!r} and "
                    f"{name!r} of parameter {path} (axes {', '.join(map(str, axes))}) both map "
                    f"to mesh axis {axis!r}; expected rules that put the axes of a parameter on "
                    "different mesh axes", "mesh.rules")
            used[axis] = name
