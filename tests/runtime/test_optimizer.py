"""AdamW recipe against hand-written numpy, and gradient accumulation against the big batch."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from crema_jax import models
from crema_jax.data.pipeline import masking
from crema_jax.losses import get_loss
from crema_jax import config as config_lib
from crema_jax.runtime import optimizer
from crema_jax.train import step as step_lib
from tests.configs import tiny_config


def _optim(**overrides):
    cfg = config_lib.default_optim_config()
    for k, v in overrides.items():
        cfg[k] = v
    return cfg


def test_lr_scales_with_global_batch():
    assert math.isclose(optimizer.scaled_learning_rate(_optim(), 1024), 1.5e-4 * 4)
    assert math.isclose(optimizer.scaled_learning_rate(_optim(scale_lr_with_batch=False), 1024),
                        1.5e-4)


def test_schedule_is_linear_warmup_then_cosine():
    cfg = _optim(base_lr=2.56e-4, warmup_steps=10, min_lr=1e-6)
    sched = optimizer.make_schedule(cfg, global_batch=256, total_steps=110)
    peak, floor = 2.56e-4, 1e-6
    for step in (0, 3, 9):
        np.testing.assert_allclose(sched(step), peak * step / 10, rtol=1e-6)
    for step in (10, 35, 60, 109, 110):
        t = (step - 10) / 100
        want = floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * t))
        np.testing.assert_allclose(sched(step), want, rtol=1e-5)


def test_adamw_step_matches_numpy():
    """One clipped, decoupled-weight-decay AdamW step, written out by hand."""
    cfg = _optim(base_lr=0.1, scale_lr_with_batch=False, warmup_steps=0, weight_decay=0.01,
                 grad_clip_norm=0.5, betas=(0.9, 0.95), eps=1e-8)
    tx, sched = optimizer.make_optimizer(cfg, global_batch=256, total_steps=10)
    p = {"w": np.array([[1.0, -2.0], [0.5, 3.0]], np.float32), "b": np.array([0.1, -0.2], np.float32)}
    g = {"w": np.array([[0.3, -0.1], [0.2, 0.4]], np.float32), "b": np.array([0.5, 0.1], np.float32)}
    state = tx.init(p)
    for _ in range(2):   # two steps: bias correction and the moment recursions both matter
        updates, state = tx.update(g, state, p)
        p_new = optax.apply_updates(p, updates)
        p = jax.tree.map(np.asarray, p_new)
    # numpy reference
    ref = {"w": np.array([[1.0, -2.0], [0.5, 3.0]]), "b": np.array([0.1, -0.2])}
    gn = math.sqrt(sum(float((v.astype(np.float64) ** 2).sum()) for v in g.values()))
    scale = min(1.0, 0.5 / gn)
    m = {k: 0.0 for k in ref}
    v = {k: 0.0 for k in ref}
    for t in (1, 2):   # no warm-up: cosine from the peak over 10 steps
        lr_t = 0.1 * 0.5 * (1 + math.cos(math.pi * (t - 1) / 10))
        for k in ref:
            gk = g[k].astype(np.float64) * scale
            m[k] = 0.9 * m[k] + 0.1 * gk
            v[k] = 0.95 * v[k] + 0.05 * gk ** 2
            mhat, vhat = m[k] / (1 - 0.9 ** t), v[k] / (1 - 0.95 ** t)
            ref[k] = ref[k] - lr_t * (mhat / (np.sqrt(vhat) + 1e-8) + 0.01 * ref[k])
    for k in ref:
        np.testing.assert_allclose(p[k], ref[k], rtol=1e-5, atol=1e-6)


def test_weight_decay_mask_skips_norms_biases_and_embeddings():
    params = {"blocks": {0: {"fc1": {"kernel": np.ones((4, 8)), "bias": np.ones(8)},
                             "attn_norm": {"scale": np.ones(4), "bias": np.ones(4)}}},
              "lead_embeddings": np.ones((12, 4)), "sep_embedding": np.ones(4),
              "patch_embed": {"proj": {"kernel": np.ones((75, 4))}}}
    mask = optimizer.weight_decay_mask(params)
    assert mask["blocks"][0]["fc1"] == {"kernel": True, "bias": False}
    assert mask["blocks"][0]["attn_norm"] == {"scale": False, "bias": False}
    assert mask["lead_embeddings"] is False and mask["sep_embedding"] is False
    assert mask["patch_embed"]["proj"]["kernel"] is True


def _mae_batch(batch_size, cfg):
    rng = np.random.default_rng(0)
    L, N, P = 12, 30, 75
    masks = [masking.get_mask_fn("random_per_lead")(rng, L, N, 0.75) for _ in range(batch_size)]
    return {"patches": rng.standard_normal((batch_size, 1, L, N, P)).astype(np.float32),
            "mask": np.stack([m[0] for m in masks])[:, None],
            "visible_idx": np.stack([m[1] for m in masks])[:, None],
            "masked_idx": np.stack([m[2] for m in masks])[:, None],
            "patch_valid": np.ones((batch_size, 1, L, N), bool),
            "lead_indices": np.tile(np.arange(L, dtype=np.int32), (batch_size, 1))}


def test_gradient_accumulation_equals_the_big_batch_update():
    config = tiny_config(**{"loss.name": "mae", "data.num_views": 1})
    # Plain SGD (lr 1): the update IS the gradient, so parameters compare the gradients
    # themselves (Adam's g / sqrt(v) would amplify float noise in exactly-zero gradients, e.g.
    # the attention key bias).
    tx, sched = optax.sgd(1.0), optax.constant_schedule(1.0)
    model = models.build_model(config.model, rngs=nnx.Rngs(0))
    graphdef, params, fixed = nnx.split(model, nnx.Param, ...)
    params, fixed = nnx.to_pure_dict(params), nnx.to_pure_dict(fixed)
    state = {"params": params, "fixed": fixed, "opt_state": tx.init(params),
             "step": jnp.zeros((), jnp.int32)}
    batch = _mae_batch(8, config)
    common = dict(loss_of=step_lib.pretraining_loss(graphdef, get_loss(config.loss)), tx=tx,
                  schedule=sched)
    outs = {}
    for accum in (1, 4):
        fn = jax.jit(functools.partial(step_lib.train_step, grad_accum_steps=accum, **common))
        s, metrics = fn(state, batch, jax.random.key(0))
        outs[accum] = (jax.device_get(s["params"]), jax.device_get(metrics))
    big, acc = outs[1], outs[4]
    np.testing.assert_allclose(acc[1]["loss"], big[1]["loss"], rtol=1e-5)
    np.testing.assert_allclose(acc[1]["learning/grad_norm"], big[1]["learning/grad_norm"],
                               rtol=1e-5)
    start = jax.device_get(params)
    for a, b, p0 in zip(jax.tree.leaves(acc[0]), jax.tree.leaves(big[0]), jax.tree.leaves(start)):
        np.testing.assert_allclose(a - p0, b - p0, rtol=1e-4, atol=1e-7)
