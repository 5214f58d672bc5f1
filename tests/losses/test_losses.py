"""Every loss against an independent numpy implementation; contrastive losses use global
negatives (permutation invariant, same value on 1 and 8 devices)."""
import functools

import jax
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from crema_jax.losses import LOSSES, default_loss_config, get_loss

B, V, L, N, PS, E = 16, 2, 3, 4, 5, 8


def make_inputs(seed=0):
    rng = np.random.default_rng(seed)
    mask = rng.random((B, V, L, N)) < 0.6
    valid = rng.random((B, V, L, N)) < 0.8
    outputs = {
        "pred": rng.standard_normal((B, V, L, N, PS)).astype(np.float32),
        "proj": rng.standard_normal((B, V, E)).astype(np.float32),
        "pooled": rng.standard_normal((B, V, 6)).astype(np.float32),
        "logit_scale": np.float32(np.log(10.0) + 0.3 * rng.standard_normal()),
        "logit_bias": np.float32(-2.0 + rng.standard_normal()),
    }
    batch = {"patches": (3.0 * rng.standard_normal((B, V, L, N, PS)) + 1.0).astype(np.float32),
             "mask": mask, "patch_valid": valid}
    return outputs, batch


# ---------------------------------------------------------------- numpy references (float64)
def np_mae(outputs, batch, norm_pix, views=slice(None)):
    pred = outputs["pred"][:, views].astype(np.float64)
    x = batch["patches"][:, views].astype(np.float64)
    w = (batch["mask"] & batch["patch_valid"])[:, views]
    if norm_pix:
        x = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, ddof=1, keepdims=True) + 1e-6)
    per = ((pred - x) ** 2).mean(-1)
    return per[w].sum() / w.sum()


def unit(z):
    z = z.astype(np.float64)
    return z / np.linalg.norm(z, axis=-1, keepdims=True)


def np_infonce(outputs, tau):
    a, b = unit(outputs["proj"][:, 0]), unit(outputs["proj"][:, 1])
    total = 0.0
    for i in range(B):
        sims_ab = a[i] @ b.T / tau
        sims_ba = b[i] @ a.T / tau
        total += -sims_ab[i] + np.log(np.exp(sims_ab).sum())
        total += -sims_ba[i] + np.log(np.exp(sims_ba).sum())
    return total / (2 * B)


def np_simclr(outputs, tau):
    z = np.concatenate([unit(outputs["proj"][:, 0]), unit(outputs["proj"][:, 1])])
    total = 0.0
    for i in range(2 * B):
        pos = (i + B) % (2 * B)
        others = [j for j in range(2 * B) if j != i]
        total += -(z[i] @ z[pos]) / tau + np.log(sum(np.exp(z[i] @ z[j] / tau) for j in others))
    return total / (2 * B)


def np_siglip(outputs):
    a, b = unit(outputs["proj"][:, 0]), unit(outputs["proj"][:, 1])
    t, bias = np.exp(np.float64(outputs["logit_scale"])), np.float64(outputs["logit_bias"])
    total = 0.0
    for i in range(B):
        for j in range(B):
            label = 1.0 if i == j else -1.0
            total += np.log1p(np.exp(-label * (t * a[i] @ b[j] + bias)))
    return total / B


def reference(name, outputs, batch):
    cfg = default_loss_config()
    tau, lam = cfg.temperature, cfg.contrastive_weight
    return {
        "mae": lambda: np_mae(outputs, batch, True),
        "stmem": lambda: np_mae(outputs, batch, True, views=slice(0, 1)),
        "infonce": lambda: np_infonce(outputs, tau),
        "simclr": lambda: np_simclr(outputs, tau),
        "siglip": lambda: np_siglip(outputs),
        "crema": lambda: np_mae(outputs, batch, True) + lam * np_infonce(outputs, tau),
    }[name]()


@pytest.mark.parametrize("name", ["mae", "stmem", "infonce", "simclr", "siglip", "crema"])
def test_loss_matches_numpy(name):
    outputs, batch = make_inputs()
    cfg = default_loss_config()
    cfg.name = name
    loss, metrics = jax.jit(get_loss(cfg))(outputs, batch)
    expected = reference(name, outputs, batch)
    assert abs(float(loss) - expected) / abs(expected) < 1e-5, (name, float(loss), expected)
    assert all(np.isfinite(np.asarray(v)).all() for v in metrics.values())


@pytest.mark.parametrize("name, norm_pix_loss", [("mae", False), ("mae", True),
                                                 ("stmem", False), ("crema", False)])
def test_uses_norm_pix_says_the_targets_the_loss_reconstructs(name, norm_pix_loss):
    """The evaluators plot and score reconstructions in the units the loss trained them in:
    stmem standardises its targets whatever norm_pix_loss says."""
    from crema_jax.losses import uses_norm_pix

    outputs, batch = make_inputs(2)
    cfg = {**default_loss_config().to_dict(), "name": name, "norm_pix_loss": norm_pix_loss,
           "contrastive_weight": 0.0}
    views = slice(0, 1) if name == "stmem" else slice(None)
    loss = float(get_loss(cfg)(outputs, batch)[0])
    normalised, raw = (np_mae(outputs, batch, flag, views) for flag in (True, False))
    assert uses_norm_pix(cfg) == (abs(loss - normalised) < abs(loss - raw))
    assert uses_norm_pix(cfg) == (name == "stmem" or norm_pix_loss)


def test_mae_raw_targets_and_crema_variants_match_numpy():
    outputs, batch = make_inputs(1)
    raw = get_loss({"name": "mae", "norm_pix_loss": False})(outputs, batch)[0]
    assert abs(float(raw) - np_mae(outputs, batch, False)) / np_mae(outputs, batch, False) < 1e-5
    for contrastive, ref in (("simclr", lambda: np_simclr(outputs, 0.2)),
                             ("siglip", lambda: np_siglip(outputs))):
        cfg = {"name": "crema", "contrastive": contrastive, "contrastive_weight": 0.7,
               "temperature": 0.2, "norm_pix_loss": True}
        loss = float(get_loss(cfg)(outputs, batch)[0])
        expected = np_mae(outputs, batch, True) + 0.7 * ref()
        assert abs(loss - expected) / expected < 1e-5, contrastive


def test_simclr_and_infonce_differ_by_the_same_view_negatives():
    outputs, batch = make_inputs(2)
    infonce = float(LOSSES["infonce"](outputs, batch, temperature=0.1)[0])
    simclr = float(LOSSES["simclr"](outputs, batch, temperature=0.1)[0])
    assert simclr > infonce + 1e-3          # more negatives, larger loss on random embeddings


CONTRASTIVE_CASES = [("infonce", {}), ("simclr", {}), ("siglip", {}),
                     ("crema", {"contrastive": "infonce"}), ("crema", {"contrastive": "siglip"})]


def _loss_fn(name, extra):
    cfg = default_loss_config()
    cfg.name = name
    cfg.update(extra)
    return get_loss(cfg)


@pytest.mark.parametrize("name,extra", CONTRASTIVE_CASES)
def test_contrastive_losses_are_batch_permutation_invariant(name, extra):
    outputs, batch = make_inputs(3)
    fn = _loss_fn(name, extra)
    perm = np.random.default_rng(0).permutation(B)
    shuffle = functools.partial(jax.tree.map, lambda x: x[perm] if np.ndim(x) and len(x) == B else x)
    a = float(fn(outputs, batch)[0])
    b = float(fn(shuffle(outputs), shuffle(batch))[0])
    assert abs(a - b) / abs(a) < 1e-6


@pytest.mark.parametrize("name,extra", CONTRASTIVE_CASES)
def test_contrastive_losses_use_global_negatives_across_devices(name, extra):
    outputs, batch = make_inputs(4)
    fn = jax.jit(_loss_fn(name, extra))
    single = float(fn(outputs, batch)[0])
    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    sharded = NamedSharding(mesh, P("data"))
    put = functools.partial(jax.tree.map, lambda x: jax.device_put(
        x, sharded if np.ndim(x) else NamedSharding(mesh, P())))
    s_outputs, s_batch = put(outputs), put(batch)
    assert len(s_outputs["proj"].sharding.device_set) == 8
    with jax.set_mesh(mesh):
        multi = float(fn(s_outputs, s_batch)[0])
    assert abs(single - multi) / abs(single) < 1e-6
    # A per-device loss (negatives only within a shard of 2) would be far smaller.
    local = np.mean([float(_loss_fn(name, extra)(
        jax.tree.map(lambda x: x[i:i + 2] if np.ndim(x) else x, outputs),
        jax.tree.map(lambda x: x[i:i + 2], batch))[0]) for i in range(0, B, 2)])
    assert abs(local - single) > 1e-3


def test_crema_binds_its_contrastive_term_like_any_loss():
    """config.loss.contrastive names any registered loss, user-defined included; its own
    hyperparameters come from config.loss by the same keyword binding."""
    from crema_jax import losses

    def halved_infonce(outputs, batch, *, temperature=0.1):
        loss, metrics = losses.infonce(outputs, batch, temperature=temperature)
        return 0.5 * loss, metrics

    losses.register_loss("halved_infonce", halved_infonce)
    try:
        outputs, batch = make_inputs(5)
        cfg = {"name": "crema", "contrastive": "halved_infonce", "contrastive_weight": 0.3,
               "temperature": 0.25, "norm_pix_loss": True}
        loss = float(get_loss(cfg)(outputs, batch)[0])
        expected = np_mae(outputs, batch, True) + 0.3 * 0.5 * np_infonce(outputs, 0.25)
        assert abs(loss - expected) / expected < 1e-5
        with pytest.raises(ValueError, match="config.loss.contrastive='nope'"):
            get_loss({**cfg, "contrastive": "nope"})
        with pytest.raises(ValueError, match="cannot contain itself"):
            get_loss({**cfg, "contrastive": "crema"})
    finally:
        del losses.LOSSES["halved_infonce"]


def test_a_registered_loss_says_which_parts_it_trains():
    """The evaluators report on the parts a loss trains: a registered L1 reconstruction loss
    had been reported as training no decoder (the names were a fixed list)."""
    from crema_jax import losses

    def l1(outputs, batch):
        return jax.numpy.abs(outputs["pred"] - batch["patches"]).mean(), {}

    losses.register_loss("l1_test", l1, trains=("decoder",))
    try:
        assert losses.trained_parts({"name": "l1_test"}) == {"decoder": True, "projector": False}
        assert losses.trained_parts({"name": "infonce"}) == {"decoder": False, "projector": True}
        assert losses.trained_parts({"name": "crema", "contrastive_weight": 0.0}) == {
            "decoder": True, "projector": False}
        with pytest.raises(ValueError, match=r"trains='decoder'\): expected a tuple of parts"):
            losses.register_loss("l1_bad", l1, trains="decoder")
        with pytest.raises(ValueError, match=r"expected a tuple of parts among \('decoder', "
                                             r"'projector'\)"):
            losses.register_loss("l1_bad", l1, trains=("decoderr",))
        assert "l1_bad" not in losses.LOSSES
        assert losses.untrained({"name": "l1_test"}, "projector") == ("loss 'l1_test' trains "
                                                                      "no projector")
        # Registered without trains=: neither part is reported on (as before the option), the
        # note says how to ask, and one view per ECG is still allowed.
        losses.register_loss("l1_test", l1)
        assert losses.trained_parts({"name": "l1_test"}) == {"decoder": False,
                                                             "projector": False}
        assert losses.untrained({"name": "l1_test"}, "decoder") == (
            "loss 'l1_test' was registered without trains= (register_loss(..., "
            "trains=('decoder',)) has the evaluators report on its decoder)")
        from crema_jax import config_checks
        from tests.configs import load_config_file
        config = load_config_file("demo").get_config()
        config.loss.name, config.data.num_views = "l1_test", 1
        config_checks.validate(config)
    finally:
        losses.LOSSES.pop("l1_test", None)
        losses.TRAINS.pop("l1_test", None)
