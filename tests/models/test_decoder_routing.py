"""The decoder puts every encoder token back in its own (lead, patch) slot, and the tiny model can
learn to reconstruct what it sees: checks that separate a wiring bug from slow MAE training."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from crema_jax.losses.mae import masked_mse
from crema_jax.models import FixedEmbedding, build_model, forward
from crema_jax.models.pretrain import MaeDecoder, unshuffle
from tests.configs import tiny_model_config
from tests.models import helpers

L, N = 12, 30


def visible_indices(rng, kind, b):
    if kind == "per_lead":  # 7 visible per lead (ST-MEM)
        rows = [np.sort(np.concatenate([l * N + rng.choice(N, 7, replace=False)
                                        for l in range(L)])) for _ in range(b)]
    else:                   # random_global: unequal per-lead counts
        rows = [np.sort(rng.choice(L * N, 60, replace=False)) for _ in range(b)]
    return np.stack(rows).astype(np.int32)


@pytest.mark.parametrize("kind", ["per_lead", "random_global"])
def test_unshuffle_equals_a_numpy_scatter(kind):
    rng = np.random.default_rng(0)
    vis = visible_indices(rng, kind, b=3)
    tokens = rng.standard_normal(vis.shape + (5,)).astype(np.float32)
    mask_token = rng.standard_normal(5).astype(np.float32)
    want = np.broadcast_to(mask_token, (3, L * N, 5)).copy()
    for b in range(3):
        want[b, vis[b]] = tokens[b]
    got = unshuffle(jnp.asarray(tokens), jnp.asarray(mask_token), jnp.asarray(vis), L * N)
    np.testing.assert_array_equal(np.asarray(got), want)


def test_each_prediction_reads_its_own_slot_only():
    """With no decoder blocks, pred[l, n] = head(norm(slot (l, n) + position)): its gradient must
    reach exactly the visible token for l*N+n, or only the mask embedding if (l, n) is hidden."""
    cfg = tiny_model_config(decoder_depth=0)
    with nnx.use_eager_sharding(False):
        decoder = MaeDecoder(cfg, 64, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(1)
    vis = visible_indices(rng, "random_global", b=1)
    tokens = jnp.asarray(rng.standard_normal((1, vis.shape[1], 64)), jnp.float32)
    seps = jnp.asarray(rng.standard_normal((1, L, 2, 64)), jnp.float32)
    hidden = np.setdiff1d(np.arange(L * N), vis[0])
    # d pred[l, n, :].sum() / d tokens for every slot at once: (L, N, 1, K, 64).
    jac = jax.jacrev(lambda t: decoder(t, seps, jnp.asarray(vis), N)[0].sum(-1))(tokens)
    touched = np.abs(np.asarray(jac[:, :, 0])).sum(-1) > 0          # (L, N, K)
    for slot in (*vis[0, [0, 17, -1]], *hidden[[0, 100, -1]]):
        l, n = divmod(int(slot), N)
        np.testing.assert_array_equal(np.flatnonzero(touched[l, n]),
                                      np.flatnonzero(vis[0] == slot))
    want = np.zeros((L * N, vis.shape[1]), bool)
    want[vis[0], np.arange(vis.shape[1])] = True
    np.testing.assert_array_equal(touched.reshape(L * N, -1), want)


def test_tiny_model_learns_to_reconstruct_its_visible_patches():
    """Identity through encoder + decoder: a loss on the VISIBLE patches falls far below the ~1
    of a constant prediction. A wrong gather/unshuffle leaves it near 1."""
    cfg = tiny_model_config(decoder_width=32, decoder_depth=1, decoder_num_heads=2,
                              decoder_head_dim=16)
    graphdef, params, fixed = nnx.split(build_model(cfg, rngs=nnx.Rngs(0)), nnx.Param,
                                        FixedEmbedding)
    rng = np.random.default_rng(2)
    batch = helpers.make_batch(rng, b=2, v=1)
    t = np.arange(75) / 75.0  # smooth patches: random phase/frequency sinusoids
    freq = rng.uniform(0.5, 3.0, batch["mask"].shape + (1,))
    phase = rng.uniform(0, 2 * np.pi, batch["mask"].shape + (1,))
    batch["patches"] = np.sin(2 * np.pi * freq * t + phase).astype(np.float32)
    weights = ~batch["mask"]
    tx = optax.adam(1e-2)

    @jax.jit
    def step(p, opt_state):
        def objective(p):
            pred = forward(graphdef, (p, fixed), batch, None)["pred"]
            return masked_mse(pred, batch["patches"], weights, norm_pix_loss=True)[0]
        loss, grads = jax.value_and_grad(objective)(p)
        updates, opt_state = tx.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss

    opt_state = tx.init(params)
    losses = []
    for _ in range(30):
        params, opt_state, loss = step(params, opt_state)
        losses.append(float(loss))
    assert losses[0] > 0.8, losses[0]
    assert min(losses[-10:]) < 0.2, losses[-10:]
