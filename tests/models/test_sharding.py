"""Logical sharding: the rules table alone decides the layout; no mesh still runs."""
import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from crema_jax.models import build_model, forward
from crema_jax.models.sharding import DEFAULT_RULES
from crema_jax.runtime.mesh import rules_for_mesh
from tests.configs import tiny_model_config
from tests.models import helpers

fwd = jax.jit(forward, static_argnums=0, static_argnames="train")


def mesh_of(shape, names):
    return jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * len(names))


def specs(mesh, **overrides):
    cfg = tiny_model_config(**overrides)
    abstract = nnx.eval_shape(lambda: build_model(cfg, rngs=nnx.Rngs(0)))
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules_for_mesh(mesh, DEFAULT_RULES)):
        flat = nnx.to_flat_state(nnx.get_partition_spec(nnx.state(abstract)))
    return {"/".join(map(str, path)): v.get_value() if hasattr(v, "get_value") else v
            for path, v in flat}


def test_rules_table_gives_fsdp_and_tensor_layouts():
    got = specs(mesh_of((2, 2, 2), ("data", "fsdp", "tensor")))
    expected = {
        "encoder/patch_embed/proj/kernel": P(None, "fsdp"),
        "encoder/pos_embedding": P(None, None, "fsdp"),
        "encoder/lead_embeddings": P(None, "fsdp"),
        "encoder/sep_embedding": P("fsdp"),
        "encoder/blocks/0/attn/qkv/kernel": P("fsdp", None, "tensor", None),
        "encoder/blocks/0/attn/out/kernel": P("tensor", None, "fsdp"),
        "encoder/blocks/1/mlp/fc1/kernel": P("fsdp", "tensor"),
        "encoder/blocks/1/mlp/fc2/kernel": P("tensor", "fsdp"),
        "encoder/blocks/1/mlp/fc1/bias": P("tensor"),
        "encoder/norm/scale": P(None),
        "decoder/embed/kernel": P("fsdp", None),
        "decoder/blocks/3/attn/qkv/kernel": P("fsdp", None, "tensor", None),
        "decoder/head/kernel": P("fsdp", None),
        "projector/layers/0/kernel": P("fsdp", "tensor"),
        "logit_scale": P(),
    }
    for key, spec in expected.items():
        assert got[key] == spec, (key, got[key])


def test_data_parallel_mesh_replicates_params_and_scan_adds_a_layers_axis():
    dp = specs(mesh_of((8,), ("data",)))
    assert all(all(a is None for a in spec) for spec in dp.values())   # pure data parallel
    scanned = specs(mesh_of((4, 2), ("fsdp", "tensor")), scan_layers=True)
    assert scanned["encoder/blocks/attn/qkv/kernel"] == P(None, "fsdp", None, "tensor", None)
    assert scanned["decoder/blocks/mlp/fc1/kernel"] == P(None, "fsdp", "tensor")


def test_rules_for_mesh_drops_missing_mesh_axes():
    rules = dict(rules_for_mesh(mesh_of((8,), ("data",)), DEFAULT_RULES))
    assert rules["activation_batch"] == "data" and rules["embed"] is None
    assert dict(DEFAULT_RULES)["activation_batch"] == ("data", "fsdp")


def test_sharded_forward_equals_single_device():
    graphdef, state = helpers.tiny_split()
    batch = helpers.make_batch(np.random.default_rng(0), b=8, v=1)
    single = fwd(graphdef, state, batch, None, train=False)      # no mesh at all
    mesh = mesh_of((4, 2), ("data", "fsdp"))
    rules = rules_for_mesh(mesh, DEFAULT_RULES)
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
        shardings = nnx.get_named_sharding(state, mesh)
        sharded_state = jax.device_put(state, shardings)
        sharded_batch = {k: jax.device_put(v, NamedSharding(mesh, P(("data", "fsdp"))))
                         for k, v in batch.items()}
        out = fwd(graphdef, sharded_state, sharded_batch, None, train=False)
    kernel = sharded_state["encoder"]["blocks"][0]["mlp"]["fc1"]["kernel"][...]
    assert kernel.sharding.spec == P("fsdp", None)
    assert len(out["pred"].sharding.device_set) == 8
    for key in ("pred", "pooled", "proj"):
        np.testing.assert_allclose(out[key], single[key], rtol=1e-5, atol=1e-5)


def test_build_under_mesh_and_rules_creates_sharded_params():
    mesh = mesh_of((2, 4), ("data", "fsdp"))
    cfg = tiny_model_config()
    with nnx.logical_axis_rules(rules_for_mesh(mesh, DEFAULT_RULES)):
        _, abstract = nnx.get_abstract_model(lambda: build_model(cfg, rngs=nnx.Rngs(0)), mesh)
    qkv = abstract["encoder"]["blocks"][0]["attn"]["qkv"]["kernel"].get_value()
    assert qkv.sharding.spec == P("fsdp", None, None, None)
