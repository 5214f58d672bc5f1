"""Gradients, fixed tables and a user-registered loss on the tiny pretraining model."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from crema_jax.losses import LOSSES, get_loss, register_loss
from crema_jax.models import FixedEmbedding, forward
from tests.models import helpers


def np_sincos(n, dim):
    omega = 10000.0 ** (-np.arange(dim // 2) / (dim / 2))
    ang = np.arange(n)[:, None] * omega[None]
    return np.concatenate([np.zeros((1, dim)), np.concatenate([np.sin(ang), np.cos(ang)], 1),
                           np.zeros((1, dim))])[None]


def split_params():
    """The tiny model with ONE decoder block (its first): backward passes dominate compile time."""
    pure = nnx.to_pure_dict(helpers.tiny_split()[1])
    pure["decoder"]["blocks"] = {0: pure["decoder"]["blocks"][0]}
    graphdef, state = helpers.variant(pure, decoder_depth=1)
    return nnx.split(nnx.merge(graphdef, state), nnx.Param, FixedEmbedding)


def make_step(graphdef, fixed, loss_fn, tx):
    @jax.jit
    def step(params, opt_state, batch, rng):
        def objective(p):
            return loss_fn(forward(graphdef, (p, fixed), batch, rng), batch)[0]

        loss, grads = jax.value_and_grad(objective)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, grads

    return step


def test_every_param_gets_a_gradient_and_fixed_tables_never_train():
    graphdef, params, fixed = split_params()
    fixed_paths = {path for path, _ in nnx.to_flat_state(fixed)}
    assert fixed_paths == {("encoder", "pos_embedding"), ("decoder", "pos_embedding")}
    # crema with the siglip term: reaches the projection head and the learnable logit scale/bias.
    loss_fn = get_loss({"name": "crema", "contrastive": "siglip", "contrastive_weight": 0.5})
    tx = optax.adamw(1e-3, weight_decay=0.1)   # decay would move any table it were given
    step = make_step(graphdef, fixed, loss_fn, tx)
    batch = helpers.make_batch(np.random.default_rng(0), v=2)
    opt_state = tx.init(params)
    new_params = params
    for i in range(3):
        new_params, opt_state, loss, grads = step(new_params, opt_state, batch, jax.random.key(i))
        if i == 0:
            for path, g in nnx.to_flat_state(grads):
                g = np.asarray(g[...])
                assert np.isfinite(g).all() and np.any(g != 0), path
    assert np.isfinite(float(loss))
    model = nnx.merge(graphdef, new_params, fixed)
    np.testing.assert_allclose(model.encoder.pos_embedding[...], np_sincos(30, 64), atol=1e-6)
    np.testing.assert_allclose(model.decoder.pos_embedding[...], np_sincos(30, 256), atol=1e-6)
    assert not np.allclose(model.encoder.sep_embedding[...], params["encoder"]["sep_embedding"][...])


def huber_mae(outputs, batch, *, delta=1.0):
    """A loss defined here, outside the package: Huber on masked patches, raw targets."""
    err = jnp.abs(outputs["pred"] - batch["patches"])
    per = jnp.where(err < delta, 0.5 * err ** 2, delta * (err - 0.5 * delta)).mean(-1)
    w = batch["mask"].astype(jnp.float32)
    loss = (per * w).sum() / w.sum()
    return loss, {"loss/huber": loss}


def test_a_new_loss_is_one_function_and_one_registry_line():
    register_loss("huber_mae", huber_mae)
    try:
        loss_fn = get_loss({"name": "huber_mae", "delta": 0.5, "temperature": 0.1})
        assert loss_fn.keywords == {"delta": 0.5}      # fields it does not take are ignored
        graphdef, params, fixed = split_params()
        tx = optax.adam(1e-3)
        step = make_step(graphdef, fixed, loss_fn, tx)
        batch = helpers.make_batch(np.random.default_rng(1), v=1)
        opt_state = tx.init(params)
        losses = []
        for i in range(20):
            params, opt_state, loss, _ = step(params, opt_state, batch, jax.random.key(i))
            losses.append(float(loss))
        assert losses[-1] < 0.8 * losses[0], losses
    finally:
        LOSSES.pop("huber_mae", None)
