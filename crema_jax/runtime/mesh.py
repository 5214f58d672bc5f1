"""Device mesh, logical-axis rules, multi-host start-up and global-batch assembly.

One mesh with three named axes serves every layout (sizes may be 1):
  data    pure data parallelism (params replicated),
  fsdp    batch split AND the `embed` dim of every parameter split (ZeRO-3 style),
  tensor  attention heads and MLP hidden split (Megatron style).
The batch is split over data x fsdp; which parameter dim goes where is decided by the logical-axis
rules table alone (the model's, models/sharding.py DEFAULT_RULES, overridable by config.mesh.rules).
"""
from __future__ import annotations

import math
import os
import re

import jax
import numpy as np
from absl import logging
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from crema_jax.runtime import platforms

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # The batch dim is split over both; tensor-parallel ranks share it.
DATA_PARALLEL = {"data": -1, "fsdp": 1, "tensor": 1}


# ------------------------------------------------------------------------------------------------
# Mesh.
# ------------------------------------------------------------------------------------------------
def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, int, int]:
    """(data, fsdp, tensor) sizes; one size may be -1 = all devices the others leave."""
    sizes = [int(mesh_cfg[name]) for name in MESH_AXES]
    fill = [i for i, s in enumerate(sizes) if s == -1]
    if len(fill) > 1:
        raise ValueError(f"config.mesh: at most one of {MESH_AXES} may be -1, got {sizes}")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"config.mesh: sizes must be positive or -1, got {sizes}")
    fixed = math.prod(s for s in sizes if s != -1)
    if fill:
        if num_devices % fixed:
            raise ValueError(f"config.mesh {dict(zip(MESH_AXES, sizes))}: {num_devices} devices "
                             f"do not divide by the fixed axes' product {fixed}")
        sizes[fill[0]] = num_devices // fixed
    if math.prod(sizes) != num_devices:
        raise ValueError(f"config.mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} "
                         f"devices; {num_devices} are available (use -1 on one axis to fill)")
    return tuple(sizes)


def make_mesh(mesh_cfg=None, devices=None) -> jax.sharding.Mesh:
    """The ("data", "fsdp", "tensor") mesh with Auto axes (GSPMD partitions what we leave open).

    mesh_cfg: config.mesh (sizes of the three axes); None = DATA_PARALLEL, every device on
    "data" (what evaluation and inference run on).
    """
    devices = jax.devices() if devices is None else list(devices)
    shape = mesh_shape(DATA_PARALLEL if mesh_cfg is None else mesh_cfg, len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                         devices=devices)


def logical_rules(mesh, mesh_cfg, default_rules) -> tuple:
    """The logical -> mesh rules: the model's `default_rules` with config.mesh.rules overriding
    entries, restricted to the mesh's axes.

    config.mesh.rules is a tuple of (logical_name, mesh_axis or tuple of axes or None).
    """
    rules = dict(default_rules)
    overrides = tuple(mesh_cfg.rules or ()) if mesh_cfg is not None else ()
    for entry in overrides:
        if len(entry) != 2:
            raise ValueError(f"config.mesh.rules: expected (logical_name, mesh_axes) pairs, "
                             f"got {entry!r}")
        name, target = entry
        rules[name] = tuple(target) if isinstance(target, list) else target
    return rules_for_mesh(mesh, tuple(rules.items()))


def rules_for_mesh(mesh, rules):
    """`rules` with mesh axes the mesh lacks removed, so one table serves ("data",) and
    ("data", "fsdp", "tensor") meshes alike."""
    names = set(mesh.axis_names)

    def keep(target):
        if target is None:
            return None
        targets = (target,) if isinstance(target, str) else tuple(target)
        kept = tuple(t for t in targets if t in names)
        if not kept:
            return None
        return kept[0] if len(kept) == 1 else kept

    return tuple((logical, keep(target)) for logical, target in rules)


def batch_sharding(mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def place(value, sharding: NamedSharding) -> jax.Array:
    """A host value (identical on every process) as a global array on `sharding`; unlike
    jax.device_put this also works when the sharding spans other processes' devices. An array
    already on `sharding` is returned as it is."""
    if isinstance(value, jax.Array) and value.sharding == sharding:
        return value
    host = np.asarray(value)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def batch_divisor(mesh) -> int:
    """The global batch must divide by this (the number of batch shards)."""
    return int(np.prod([mesh.shape[a] for a in BATCH_AXES]))


def round_batch(batch_size: int, mesh) -> int:
    """The smallest multiple of the mesh's batch shards that holds batch_size records."""
    n = batch_divisor(mesh)
    return max(n, int(math.ceil(batch_size / n)) * n)


def process_count(mesh) -> int:
    """Processes (hosts) that own the mesh's devices; each feeds config.data.batch_size ECGs.

    It is jax.process_count() for a mesh over all devices, and the slice's host count for the
    abstract devices of a TPU topology (dry runs).
    """
    return len({d.process_index for d in mesh.devices.flat})


# The largest single slice of each TPU type libtpu describes, in chips along each axis (the
# number of axes is the type's torus: 2-D or 3-D). From the Cloud TPU documentation's pages on
# each version (cloud.google.com/tpu/docs/v5e, /v6e: "TPU Pod size 256 chips", "2D torus";
# /v5p: "The maximum v5p shape is 16x16x24"; /v4: 4096 chips in a 3-D torus, 16x16x16;
# /system-architecture-tpu-vm: a v2 Pod is 16x16 chips (v2-512), a v3 Pod 32x32 (v3-2048)).
# libtpu itself accepted v5e:1000x1000 as a million devices (45 s and 3.8 GB before the mesh
# failed) and aborted the process (SIGABRT) on v5e:32x32.
TPU_MAX_SHAPES = {"v2": (16, 16), "v3": (32, 32), "v4": (16, 16, 16), "v5e": (16, 16),
                  "v5p": (16, 16, 24), "v6e": (16, 16)}


def _check_tpu_slice(name: str) -> None:
    """ValueError naming `--topology` unless it is a TPU type of TPU_MAX_SHAPES with a chip grid
    of its torus's axes, within its largest slice."""
    if not re.fullmatch(r"v\d+[a-z]*:\d+(x\d+)+", name):
        raise ValueError(f"--topology={name}: expected a TPU type and chip grid such as "
                         "v5e:4x4, v5p:2x2x2, v6e:8x8 or v4:2x2x2")
    kind, grid = name.split(":")
    dims = tuple(int(d) for d in grid.split("x"))
    bound = TPU_MAX_SHAPES.get(kind)
    if bound is None:
        raise ValueError(f"--topology={name}: unknown TPU type {kind!r}; expected one of "
                         f"{', '.join(TPU_MAX_SHAPES)}")
    largest = "x".join(map(str, bound))
    if len(dims) != len(bound):
        example = "x".join(["2"] * len(bound))
        raise ValueError(f"--topology={name}: a {kind} slice is a {len(bound)}-D grid of chips; "
                         f"expected {len(bound)} sizes, such as {kind}:{example} (at most "
                         f"{largest})")
    if min(dims) < 1 or any(d > b for d, b in zip(sorted(dims), sorted(bound))):
        raise ValueError(f"--topology={name}: larger than any {kind} slice; expected a chip grid "
                         f"within {largest}, the largest single {kind} slice")


def tpu_topology_devices(name: str) -> list:
    """The abstract devices of a TPU slice, e.g. "v5e:4x4", "v5p:2x2x2", "v6e:8x8", "v4:2x2x2".

    XLA compiles for them on any machine (ahead-of-time, nothing runs). It needs libtpu installed
    (`pip install "crema_jax[tpu]"`), not a TPU. A ValueError naming `--topology` says what is
    wrong with `name` (a type or grid no slice has, or one libtpu refuses, with its reason).
    """
    _check_tpu_slice(name)
    if not platforms.libtpu_installed():
        raise ValueError(f"--topology={name}: ahead-of-time TPU compilation needs libtpu, which "
                         "is not installed: pip install \"crema_jax[tpu]\"")
    from jax.experimental import topologies  # here: libtpu's, only for TPU dry runs

    if not platforms.tpu_present():
        # libtpu's lock file (/tmp/libtpu_lockfile) guards a machine's TPU chips from a second
        # process; without chips it guards nothing, and would refuse a second dry run at once.
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        topology = topologies.get_topology_desc(name, "tpu")
    except Exception as err:  # noqa: BLE001 - libtpu refuses the slice: its reason, one line
        reason = " ".join(str(err).split()).removeprefix("INVALID_ARGUMENT: ")
        raise ValueError(f"--topology={name}: libtpu cannot describe this slice ({reason}); "
                         "expected a slice shape Cloud TPU offers (whole hosts: e.g. v5e:2x2, "
                         "v5e:4x4, v5p:2x2x2)") from err
    return list(topology.devices)


# ------------------------------------------------------------------------------------------------
# Multi-host.
# ------------------------------------------------------------------------------------------------
def _multi_host_env() -> bool:
    """A TPU pod slice (more than one worker host) or a multislice job."""
    return (len(platforms.tpu_worker_hosts()) > 1
            or bool(os.environ.get("MEGASCALE_COORDINATOR_ADDRESS")))


def maybe_initialize_distributed(coordinator_address: str = "", num_processes: int = 0,
                                 process_id: int = -1, mode: str = "auto") -> bool:
    """Starts jax.distributed when asked to, or when the environment is a multi-host job.

    mode: "off" never; "on" always (no-arg initialize unless an address is given: TPU pods and
    SLURM fill in the rest); "auto" when an address is given or a TPU pod / multi-host env is seen.
    Must run before any other JAX call. Returns whether it initialised.
    """
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"config.train.distributed={mode!r}: expected 'auto', 'on' or 'off'")
    explicit = bool(coordinator_address)
    if mode == "off" or (mode == "auto" and not (explicit or _multi_host_env())):
        return False
    if explicit:
        # CPU processes need a cross-process collectives backend (a no-op for TPU/GPU arrays).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=coordinator_address,
                                   num_processes=num_processes or None,
                                   process_id=process_id if process_id >= 0 else None)
    else:
        jax.distributed.initialize()
    logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count())
    return True


# ------------------------------------------------------------------------------------------------
# Global batch.
# ------------------------------------------------------------------------------------------------
def global_batch(local_batch: dict, mesh) -> dict:
    """Each process's batch (numpy, leading dim = per-process batch) -> one global jax.Array each.

    jax.make_array_from_process_local_data concatenates the processes' rows in process order,
    the same code path on one CPU, 8 fake devices or a TPU pod slice.
    """
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local_batch.items()}


def abstract_batch(local_batch_spec: dict, mesh) -> dict:
    """ShapeDtypeStructs of the GLOBAL batch from per-process (shape, dtype) specs (AOT compile)."""
    sharding = batch_sharding(mesh)
    n = process_count(mesh)
    return {k: jax.ShapeDtypeStruct((shape[0] * n,) + tuple(shape[1:]), dtype, sharding=sharding)
            for k, (shape, dtype) in local_batch_spec.items()}
