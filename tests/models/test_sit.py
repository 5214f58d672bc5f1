"""SiT encoder and pretraining model behaviour (tiny sizes)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from crema_jax.models import (build_model, classify, default_model_config, encode_features,
                              families, forward)
from tests.models import helpers

fwd = jax.jit(forward, static_argnums=0, static_argnames="train")


def tiny(**overrides):
    return helpers.variant(**overrides) if overrides else helpers.tiny_split()


def np_layer_norm(x, scale, bias, eps):
    x = np.asarray(x, np.float64)
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * scale + bias


def random_global_batch(rng, b=2, visible=60):
    """random_global masking: one flat choice per sample, so per-lead visible counts differ."""
    batch = helpers.make_batch(rng, b=b, v=1)
    vis = np.sort(np.stack([rng.permutation(360)[:visible] for _ in range(b)]), -1)[:, None]
    mask = np.ones((b, 1, 360), bool)
    np.put_along_axis(mask, vis, False, axis=-1)
    batch.update(visible_idx=vis.astype(np.int32), mask=mask.reshape(b, 1, 12, 30))
    return batch


@pytest.mark.parametrize("masking", ["per_lead", "random_global"])
def test_masked_patch_values_cannot_change_the_outputs(masking):
    graphdef, state = tiny()
    rng = np.random.default_rng(0)
    batch = helpers.make_batch(rng, v=1) if masking == "per_lead" else random_global_batch(rng)
    if masking == "random_global":  # the point of the case: unequal per-lead visible counts
        counts = batch["visible_idx"][0, 0] // 30
        assert len(set(np.bincount(counts, minlength=12))) > 1
    changed = dict(batch)
    changed["patches"] = np.where(batch["mask"][..., None], 1e3 * rng.standard_normal(
        batch["patches"].shape), batch["patches"]).astype(np.float32)
    assert not np.allclose(changed["patches"], batch["patches"])
    a = fwd(graphdef, state, batch, None, train=False)
    b = fwd(graphdef, state, changed, None, train=False)
    for key in ("pred", "pooled", "proj"):
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]))


def test_pooled_is_norm_of_mean_over_visible_valid_tokens():
    graphdef, state = tiny()
    rng = np.random.default_rng(1)
    batch = helpers.make_batch(rng, v=1)
    batch["patch_valid"][:, :, 3:5] = False          # two absent leads
    batch["patch_valid"][:, :, :, 25:] = False       # crop padding at the end
    out = fwd(graphdef, state, batch, None, train=False)
    model = nnx.merge(graphdef, state)
    vis = batch["visible_idx"][:, 0]
    tokens, _ = nnx.jit(lambda m, *a: m.encoder(*a))(
        model, batch["patches"][:, 0], batch["lead_indices"], vis)
    valid = np.take_along_axis(batch["patch_valid"][:, 0].reshape(2, -1), vis, 1)
    tokens = np.asarray(tokens)
    mean = np.stack([tokens[i][valid[i]].mean(0) for i in range(2)])
    norm = model.encoder.norm
    expected = np_layer_norm(mean, np.asarray(norm.scale[...]), np.asarray(norm.bias[...]), 1e-5)
    np.testing.assert_allclose(out["pooled"][:, 0], expected, rtol=1e-5, atol=1e-5)


def _abstract_encoder_count(size):
    c = default_model_config()
    c.size = size
    encoder = families.family_of(c).encoder_config(c)   # the bare encoder, as evaluation builds it
    state = nnx.state(nnx.eval_shape(lambda: build_model(encoder, rngs=nnx.Rngs(0))))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state))


def test_encoder_parameter_counts_equal_stmem():
    # ST-MEM's state_dict counts: every array incl. the fixed (1, 32, D) position table and `norm`.
    assert _abstract_encoder_count("small") == 21_341_718
    assert _abstract_encoder_count("base") == 85_150_614


def test_scanned_blocks_equal_unrolled_blocks():
    graphdef, state = tiny()
    scan_graphdef, scan_state = helpers.abstract_split(scan_layers=True)
    params = nnx.to_pure_dict(state)
    scan_params = nnx.to_pure_dict(scan_state)

    def stack(blocks):
        return jax.tree.map(lambda *xs: jnp.stack(xs), *[blocks[i] for i in sorted(blocks)])

    for part in ("encoder", "decoder"):
        scan_params[part]["blocks"] = stack(params[part]["blocks"])
        params[part]["blocks"] = None
    for part in ("encoder", "decoder"):
        params[part].pop("blocks")
        for key in params[part]:
            scan_params[part][key] = params[part][key]
    for key in ("projector", "logit_scale", "logit_bias"):
        scan_params[key] = params[key]
    nnx.replace_by_pure_dict(scan_state, scan_params)
    batch = helpers.make_batch(np.random.default_rng(2), v=1)
    a = fwd(graphdef, state, batch, None, train=False)
    b = fwd(scan_graphdef, scan_state, batch, None, train=False)
    for key in ("pred", "pooled", "proj"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_drop_path_is_stochastic_in_training_and_identity_in_inference():
    graphdef, state = tiny(drop_path=0.5)
    ref_graphdef, _ = tiny()
    assert not np.array_equal(nnx.to_pure_dict(state)["encoder"]["sep_embedding"], 0)
    batch = helpers.make_batch(np.random.default_rng(3), v=1)
    eval_out = fwd(graphdef, state, batch, jax.random.key(0), train=False)
    same_weights_no_drop = fwd(ref_graphdef, state, batch, None, train=False)
    np.testing.assert_array_equal(eval_out["pooled"], same_weights_no_drop["pooled"])
    t1 = fwd(graphdef, state, batch, jax.random.key(1), train=True)["pooled"][:, 0]
    t2 = fwd(graphdef, state, batch, jax.random.key(2), train=True)["pooled"][:, 0]
    assert not np.allclose(t1, t2)
    # Per-sample dropping: some samples of a batch keep every branch (rate 0.5 at the last layer,
    # 0 at the first), so not every row differs from inference.
    assert not np.allclose(t1, eval_out["pooled"][:, 0])


def test_classification_head_is_a_dense_layer_on_the_downstream_features():
    rng = np.random.default_rng(4)
    encoder = nnx.to_pure_dict(tiny()[1])["encoder"]
    encoder["head"] = {"kernel": rng.standard_normal((64, 5)).astype(np.float32),
                       "bias": rng.standard_normal(5).astype(np.float32)}
    graphdef, state = helpers.variant(encoder, name="sit_encoder", num_classes=5)
    patches = rng.standard_normal((2, 12, 30, 75)).astype(np.float32)
    leads = np.tile(np.arange(12, dtype=np.int32), (2, 1))
    model = nnx.merge(graphdef, state)
    feats = np.asarray(jax.jit(encode_features, static_argnums=0)(graphdef, state, patches, leads), np.float64)
    expected = feats @ np.asarray(model.head.kernel[...]) + np.asarray(model.head.bias[...])
    logits = jax.jit(classify, static_argnums=0)(graphdef, state, patches, leads)
    assert logits.shape == (2, 5)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)


def test_bfloat16_compute_keeps_float32_params_and_outputs():
    graphdef, state = tiny()
    bf_graphdef, _ = tiny(dtype="bfloat16")
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state))
    batch = helpers.make_batch(np.random.default_rng(5), v=1)
    a = fwd(graphdef, state, batch, None, train=False)
    b = fwd(bf_graphdef, state, batch, None, train=False)
    for key in ("pred", "pooled", "proj"):
        assert b[key].dtype == jnp.float32 and np.isfinite(b[key]).all()
        assert np.abs(a[key] - b[key]).max() / np.abs(a[key]).max() < 0.05


def test_evaluation_crops_axis_gives_per_crop_features():
    graphdef, state = tiny()
    rng = np.random.default_rng(6)
    crops = rng.standard_normal((1, 2, 12, 30, 75)).astype(np.float32)   # (B, C, L, N, P)
    leads = np.arange(12, dtype=np.int32)[None]
    enc = jax.jit(encode_features, static_argnums=0)
    per_crop = enc(graphdef, state, crops, leads)
    assert per_crop.shape == (1, 2, 64)
    flat = enc(graphdef, state, crops[0], np.repeat(leads, 2, 0))          # crops as a batch
    np.testing.assert_allclose(per_crop[0], flat, rtol=1e-5, atol=1e-6)
    assert not np.allclose(per_crop[0, 0], per_crop[0, 1])
