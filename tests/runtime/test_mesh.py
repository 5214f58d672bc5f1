"""Mesh shapes, logical-axis rules and global-batch assembly on 8 fake CPU devices."""
import os
import pathlib
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from crema_jax.models.sharding import DEFAULT_RULES
from crema_jax.runtime import mesh as mesh_lib

REPO = pathlib.Path(__file__).resolve().parents[2]


def _cfg(data, fsdp, tensor, rules=()):
    return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor, rules=rules))


@pytest.mark.parametrize("sizes,want", [((-1, 1, 1), (8, 1, 1)), ((2, -1, 1), (2, 4, 1)),
                                        ((2, 2, -1), (2, 2, 2)), ((1, 8, 1), (1, 8, 1))])
def test_mesh_shape_fills_minus_one(sizes, want):
    assert mesh_lib.mesh_shape(_cfg(*sizes), 8) == want


@pytest.mark.parametrize("sizes", [(3, -1, 1), (-1, -1, 1), (2, 2, 1), (0, 8, 1)])
def test_bad_mesh_shapes_are_rejected(sizes):
    with pytest.raises(ValueError, match="config.mesh"):
        mesh_lib.mesh_shape(_cfg(*sizes), 8)


def test_rules_follow_the_model_defaults_and_config_overrides():
    mesh = mesh_lib.make_mesh(_cfg(2, 2, 2))
    rules = dict(mesh_lib.logical_rules(mesh, _cfg(2, 2, 2), DEFAULT_RULES))
    assert rules["embed"] == "fsdp" and rules["mlp"] == "tensor"
    overrides = (("mlp", None), ("embed", "tensor"))
    rules = dict(mesh_lib.logical_rules(mesh, _cfg(2, 2, 2, rules=overrides), DEFAULT_RULES))
    assert rules["mlp"] is None and rules["embed"] == "tensor"


def test_global_batch_is_split_over_data_and_fsdp():
    mesh = mesh_lib.make_mesh(_cfg(2, 4, 1))
    local = {"x": np.arange(16 * 3, dtype=np.float32).reshape(16, 3)}
    batch = mesh_lib.global_batch(local, mesh)["x"]
    np.testing.assert_array_equal(np.asarray(batch), local["x"])
    shards = sorted(batch.addressable_shards, key=lambda s: s.index[0].start)
    assert len(shards) == 8 and all(s.data.shape == (2, 3) for s in shards)
    assert mesh_lib.batch_divisor(mesh) == 8


def test_replicate_places_a_full_copy_on_every_device():
    mesh = mesh_lib.make_mesh(_cfg(2, 2, 2))
    x = mesh_lib.place(np.array([1, 2, 3], np.uint32), mesh_lib.replicated(mesh))
    assert len(x.addressable_shards) == jax.device_count()
    assert all(np.array_equal(s.data, [1, 2, 3]) for s in x.addressable_shards)


def test_two_tpu_dry_runs_at_once_on_a_machine_without_tpu(tmp_path):
    """libtpu locks /tmp/libtpu_lockfile for the life of the first process that loads it; on a
    machine without TPU chips a second process describing a slice at the same time must not be
    refused (two dry runs, or two test workers)."""
    script = ("import sys, time\n"
              "from crema_jax.runtime import mesh\n"
              "print(len(mesh.tpu_topology_devices('v5e:2x2')), flush=True)\n"
              "time.sleep(float(sys.argv[1]))\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("ALLOW_MULTIPLE_LIBTPU_LOAD", "XLA_FLAGS")}
    env["JAX_PLATFORMS"] = "cpu"
    holder = subprocess.Popen([sys.executable, "-c", script, "120"], env=env, cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert holder.stdout.readline().strip() == "4"          # it holds libtpu now
        second = subprocess.run([sys.executable, "-c", script, "0"], env=env, cwd=REPO,
                                capture_output=True, text=True, timeout=300)
        assert holder.poll() is None                             # still holding it
        assert second.returncode == 0, second.stderr[-2000:]
        assert second.stdout.strip() == "4"
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("name, said", [
    # libtpu had aborted the process (SIGABRT, a C++ stack) on 32x32, and described 1000x1000 as
    # a million devices (45 s and 3.8 GB before failing).
    ("v5e:32x32", "--topology=v5e:32x32: larger than any v5e slice; expected a chip grid within "
                  "16x16, the largest single v5e slice"),
    ("v5e:1000x1000", "--topology=v5e:1000x1000: larger than any v5e slice; expected a chip grid "
                      "within 16x16, the largest single v5e slice"),
    ("v5p:24x24x1", "--topology=v5p:24x24x1: larger than any v5p slice; expected a chip grid "
                    "within 16x16x24, the largest single v5p slice"),
    ("v5e:4x4x4", "--topology=v5e:4x4x4: a v5e slice is a 2-D grid of chips; expected 2 sizes, "
                  "such as v5e:2x2 (at most 16x16)"),
    # Both had said "Ahead-of-time TPU compilation needs libtpu" with libtpu installed.
    ("v9z:4x4", "--topology=v9z:4x4: unknown TPU type 'v9z'; expected one of v2, v3, v4, v5e, "
                "v5p, v6e"),
    ("v5e:3x5", "--topology=v5e:3x5: libtpu cannot describe this slice (Topology layout "
                "\"v5e:3x5\" is not divisible by the given (or default) chips_per_host_bounds "
                "\"2x2x1\"); expected a slice shape Cloud TPU offers (whole hosts: e.g. v5e:2x2, "
                "v5e:4x4, v5p:2x2x2)"),
])
def test_a_tpu_slice_no_tpu_type_has_is_refused_naming_the_bound(name, said):
    with pytest.raises(ValueError) as refused:
        mesh_lib.tpu_topology_devices(name)
    assert str(refused.value) == said
    assert len(mesh_lib.tpu_topology_devices("v5p:16x16x24")) == 6144   # the largest v5p slice
