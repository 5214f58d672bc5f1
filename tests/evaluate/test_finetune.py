"""Fine-tuning pieces against hand computations: layer-wise lr decay and the losses."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from crema_jax.evaluate import finetune as finetuning
from crema_jax.models import sit


def test_layer_ids_follow_block_depth():
    depth = 12
    assert sit.layer_id(("patch_embed", "proj", "kernel"), depth) == 0
    assert sit.layer_id(("lead_embeddings",), depth) == 0
    assert sit.layer_id(("blocks", "0", "attn", "qkv", "kernel"), depth) == 1
    assert sit.layer_id(("blocks", "11", "mlp", "fc2", "bias"), depth) == 12
    assert sit.layer_id(("norm", "scale"), depth) == 13
    assert sit.layer_id(("head", "kernel"), depth) == 13


def test_layer_decay_scales_adamw_updates_per_block():
    rng = np.random.default_rng(0)
    params = {"patch_embed": {"kernel": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)},
              "blocks": {0: {"w": jnp.asarray(rng.normal(size=(2,)), jnp.float32)},
                         1: {"w": jnp.asarray(rng.normal(size=(2,)), jnp.float32)}},
              "head": {"kernel": jnp.asarray(rng.normal(size=(2, 2)), jnp.float32)}}
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    kwargs = dict(peak_lr=0.1, weight_decay=0.05, depth=2, warmup_steps=0, total_steps=10)
    tx, _ = finetuning.make_optimizer(params, layer_decay=0.5, **kwargs)
    ref_tx, _ = finetuning.make_optimizer(params, layer_decay=1.0, **kwargs)
    updates, _ = tx.update(grads, tx.init(params), params)
    ref, _ = ref_tx.update(grads, ref_tx.init(params), params)
    # Hand: embeddings 0.5^3, block 0 0.5^2, block 1 0.5^1, head 1.
    expected = {"patch_embed": 0.125, "blocks0": 0.25, "blocks1": 0.5, "head": 1.0}
    np.testing.assert_allclose(updates["patch_embed"]["kernel"],
                               expected["patch_embed"] * ref["patch_embed"]["kernel"], rtol=1e-6)
    np.testing.assert_allclose(updates["blocks"][0]["w"], 0.25 * ref["blocks"][0]["w"], rtol=1e-6)
    np.testing.assert_allclose(updates["blocks"][1]["w"], 0.5 * ref["blocks"][1]["w"], rtol=1e-6)
    np.testing.assert_allclose(updates["head"]["kernel"], ref["head"]["kernel"], rtol=1e-6)
    # And the undecayed one is plain AdamW at the first step's scheduled lr.
    sched = optax.warmup_cosine_decay_schedule(0.0, 0.1, 0, 10, 0.0)
    plain = optax.adamw(sched, b1=0.9, b2=0.999, weight_decay=0.05)
    plain_updates, _ = plain.update(grads, plain.init(params), params)
    np.testing.assert_allclose(ref["head"]["kernel"], plain_updates["head"]["kernel"], rtol=1e-6)


def test_stacked_blocks_get_per_layer_scales():
    params = {"blocks": {"w": jnp.ones((3, 4, 5))}, "norm": {"scale": jnp.ones(5)}}
    scales = sit.layer_decay_scales(params, depth=3, decay=0.5)
    np.testing.assert_allclose(np.asarray(scales["blocks"]["w"]).ravel(), [0.125, 0.25, 0.5])
    assert float(scales["norm"]["scale"]) == 1.0


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_losses_match_torch(smoothing):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(6, 4)).astype(np.float32)
    multi = (rng.random((6, 4)) < 0.4).astype(np.float32)
    onehot = np.eye(4, dtype=np.float32)[rng.integers(0, 4, 6)]
    got = finetuning.loss_fn(jnp.asarray(logits), jnp.asarray(multi), label_type="multilabel",
                             label_smoothing=smoothing)
    target = torch.tensor(multi) * (1 - smoothing) + smoothing / 2
    ref = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor(logits), target, reduction="sum") / 6
    assert float(got) == pytest.approx(float(ref), rel=1e-5)
    got = finetuning.loss_fn(jnp.asarray(logits), jnp.asarray(onehot), label_type="multiclass",
                             label_smoothing=smoothing)
    ref = torch.nn.functional.cross_entropy(torch.tensor(logits),
                                            torch.tensor(onehot.argmax(1)),
                                            label_smoothing=smoothing)
    assert float(got) == pytest.approx(float(ref), rel=1e-5)
