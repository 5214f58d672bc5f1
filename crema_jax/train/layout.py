"""The run's layout on its devices, checked before anything is built, compiled or written: the
global batch split over processes and batch shards (`batch_sizes`), the batches the input
pipeline reads ahead within this machine's memory (`read_ahead`), every parameter's logical
axes mapped by the rules onto mesh axes it can be split over. `trainer.train` and
`trainer.dry_run` call `check` first, so a Python caller gets the same one-line errors as the
pretrain command.

jax had refused these only while building the sharded state, in a traceback naming neither the
config field nor the parameter (DuplicateSpecError for a `mesh.rules` entry that puts two axes
of one parameter on the same mesh axis; "implies that array axis 0 is partitioned 4 times, but
the dimension size is 2" for mesh.tensor=4 and a model of 2 heads).
"""
from __future__ import annotations

import os

import jax
from flax import nnx

from crema_jax import config_checks
from crema_jax import models
from crema_jax.data import config as data_config
from crema_jax.data.pipeline import batch as batch_lib
from crema_jax.models import config as model_config
from crema_jax.models import sharding
from crema_jax.runtime import mesh as mesh_lib


_MESH_FIELDS = tuple(f"mesh.{a}" for a in mesh_lib.MESH_AXES)


def check(config, devices=None, *, reads: bool = True) -> None:
    """ConfigValueError naming the field when the config's mesh, batch and rules cannot lay out
    the model on `devices` (None: this process's devices): mesh sizes that do not make the
    device count, a global batch the processes or batch shards do not divide, rules that put
    two axes of a parameter on one mesh axis, a parameter axis its mesh axes do not divide.
    `reads`: also the input pipeline's read-ahead against this machine's memory (`read_ahead`;
    False for a dry run, which reads nothing and may be compiled for other hosts)."""
    devices = jax.devices() if devices is None else list(devices)
    try:
        mesh_lib.mesh_shape(config.mesh, len(devices))
    except ValueError as err:  # sizes that do not make the device count
        raise config_checks.ConfigValueError(str(err), "", related=_MESH_FIELDS) from None
    mesh = mesh_lib.make_mesh(config.mesh, devices)
    _, per_process_batch = batch_sizes(config, mesh)
    if reads:
        read_ahead(config, per_process_batch)
    rules = dict(mesh_lib.logical_rules(mesh, config.mesh, sharding.DEFAULT_RULES))
    for path, shape, axes in parameter_axes(for_target(config.model, mesh)):
        _check_parameter(config, rules, path, axes)
        for size, name in zip(shape, axes):
            _check_divides(config, mesh, rules, path, size, name)


def batch_sizes(config, mesh) -> tuple[int, int]:
    """(global batch, per-process batch) from config.train.global_batch_size: every process reads
    an equal share, and the global batch splits evenly over the mesh's batch shards. A
    ConfigValueError naming the field (and the mesh sizes it rests on) otherwise."""
    if config.data.batch_size is not None:
        raise config_checks.ConfigValueError(
            f"config.data.batch_size={config.data.batch_size}: pretraining derives the "
            "per-process batch from config.train.global_batch_size; set that instead",
            "data.batch_size")
    global_batch, processes = int(config.train.global_batch_size), mesh_lib.process_count(mesh)
    if global_batch <= 0 or global_batch % processes:
        raise config_checks.ConfigValueError(
            f"config.train.global_batch_size={global_batch}: expected a positive multiple of "
            f"the {processes} processes (each reads an equal share)", "train.global_batch_size")
    shards = mesh_lib.batch_divisor(mesh)
    if global_batch % shards:
        sizes = " x ".join(f"{a} {mesh.shape[a]}" for a in mesh_lib.BATCH_AXES)
        raise config_checks.ConfigValueError(
            f"config.train.global_batch_size={global_batch}: expected a multiple of the "
            f"{shards} batch shards of the mesh axes {mesh_lib.BATCH_AXES} ({sizes})",
            "train.global_batch_size",
            related=tuple(f"mesh.{a}" for a in mesh_lib.BATCH_AXES))
    return global_batch, global_batch // processes


def for_target(model_cfg, mesh):
    """config.model with residual_boundary="auto" resolved for the devices the step is compiled
    for (the mesh's), not this process's default backend: a TPU dry run compiled on a CPU host
    must carry the plain identity."""
    if model_cfg.residual_boundary != "auto":
        return model_cfg
    resolved = model_cfg.copy_and_resolve_references()
    on_cpu = mesh.devices.flat[0].platform == "cpu"
    with resolved.unlocked():
        resolved.residual_boundary = "on" if on_cpu else "off"
    return resolved


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


def read_ahead(config, per_process_batch: int, memory: int | None = None) -> None:
    """ConfigValueError naming the buffer field when the batches the input pipeline reads ahead
    (batch_lib.read_ahead_bytes, a lower bound) would not fit in this machine's memory
    (`memory`, default the host's). data.prefetch_buffer_size=10**8 had grown the process by
    ~150 MB/s (12 GB in 80 s, 8 ECGs a batch) without training a step. Checked for the
    endless stream (data.num_epochs None, pretraining's default), whose buffers always fill;
    a bounded one may hold fewer batches than its buffers take."""
    if config.data.num_epochs is not None:
        return
    by_field = batch_lib.read_ahead_bytes(config.data, per_process_batch)
    memory = host_memory_bytes() if memory is None else memory
    if memory is None or sum(by_field.values()) <= memory:
        return
    field = max(by_field, key=by_field.get)
    data, total = config.data, sum(by_field.values())
    defaults = data_config.default_data_config()
    readers = max(int(data.num_workers), 1)
    each = sum(batch_lib.read_ahead_batches(data).values()) // readers
    raise config_checks.ConfigValueError(
        f"config.{field}={data[field.split('.')[1]]}: the input pipeline would hold at least "
        f"{total / 1e9:,.1f} GB of batches read ahead ({readers} reader"
        f"{'s' if readers > 1 else ''} x {each:,} batches of {per_process_batch} ECGs, "
        f"{total / (readers * each) / 1e6:,.1f} MB each), more than this machine's "
        f"{memory / 1e9:,.1f} GB of memory; expected fewer batches read ahead (defaults: "
        + ", ".join(f"{f}={defaults[f.split('.')[1]]}" for f in by_field) + ")", field,
        related=tuple(f for f in (*by_field, "data.num_workers", "data.read_threads",
                                  "train.global_batch_size") if f != field))


# A container's memory limit: cgroup v2, then v1 ("max" or a huge number where none is set).
CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def host_memory_bytes() -> int | None:
    """This machine's memory as the process may use it: the physical memory, or the cgroup's
    limit (a container) where lower; None where neither can be read."""
    sizes = []
    try:
        sizes.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        pass
    for path in CGROUP_LIMITS:
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit():
            sizes.append(int(text))
    return min(sizes) if sizes else None


def _check_parameter(config, rules: dict, path: str, axes: tuple) -> None:
    used: dict[str, str] = {}
    for name in axes:
        for axis in _targets(rules, name):
            if axis in used:
                raise config_checks.ConfigValueError(
                    f"config.mesh.rules={config.mesh.rules!r}: logical axes {used[axis]!r} and "
                    f"{name!r} of parameter {path} (axes {', '.join(map(str, axes))}) both map "
                    f"to mesh axis {axis!r}; expected rules that put the axes of a parameter on "
                    "different mesh axes", "mesh.rules")
            used[axis] = name


# The model fields that may set a logical axis's size, for the message.
_SIZE_FIELDS = {sharding.HEADS: "num_heads", sharding.EMBED: "width", sharding.HEAD_DIM: "head_dim",
                sharding.PROJ: "proj_dim", sharding.CLASSES: "num_classes"}


def _size_field(model_cfg, path: str, name, size: int) -> str:
    """"model.F" of the field whose value is `size` ("" when none is): the encoder's (its size
    resolved: 0 = the size's own) or, first for a decoder parameter, the decoder's."""
    field = _SIZE_FIELDS.get(name)
    if not field:
        return ""
    values = {}
    if "size" in model_cfg:
        values[field] = model_config.resolve_size(model_cfg).get(field)
    if field in model_cfg and model_cfg[field]:
        values[field] = model_cfg[field]
    if f"decoder_{field}" in model_cfg:
        values[f"decoder_{field}"] = model_cfg[f"decoder_{field}"]
    order = sorted(values, key=lambda f: f.startswith("decoder_") != path.startswith("decoder/"))
    return next((f"model.{f}" for f in order if values[f] == size), "")


def _check_divides(config, mesh, rules: dict, path: str, size: int, name) -> None:
    """A parameter axis split over mesh axes must divide by their product."""
    axes = _targets(rules, name)
    shards = 1
    for axis in axes:
        shards *= mesh.shape[axis]
    if size % shards == 0:
        return
    over = " x ".join(f"mesh.{a}={config.mesh[a]}" + (f" ({mesh.shape[a]} devices)"
                                                       if config.mesh[a] == -1 else "")
                      for a in axes)
    field = _size_field(config.model, path, name, size)
    source = f", set by {field}" if field else ""
    raise config_checks.ConfigValueError(
        f"config.{over.split(' x ')[0]}: the model's {name!r} axis does not divide over it "
        f"(parameter {path} has {size} along {name!r}{source}, split {shards} ways over "
        f"{over} by the rule ({name!r}, {rules.get(name)!r})); expected mesh sizes that divide "
        f"{size}, or a mesh.rules entry ({name!r}, None) to keep it whole",
        f"mesh.{axes[0]}", related=(*(f"mesh.{a}" for a in axes[1:]), "mesh.rules",
                                    *((field,) if field else ())))
