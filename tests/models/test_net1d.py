"""Net1D (ECGFounder's backbone): structure, lengths and the shortcut semantics by hand."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from crema_jax.models import net1d


def _abstract(leads=12):
    return nnx.eval_shape(lambda: net1d.Net1D(net1d.default_net1d_config(leads),
                                               rngs=nnx.Rngs(0)))


def test_parameter_count_matches_ecgfounder():
    # docs/reference/ecgfounder.md: 30,752,646 parameters in use for the 12-lead model.
    sizes = [int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(_abstract(12), nnx.Param))]
    assert sum(sizes) == 30_752_646
    # The 1-lead model differs only in the stem: 11 fewer input channels x 64 x 16.
    sizes1 = [int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(_abstract(1), nnx.Param))]
    assert sum(sizes1) == 30_752_646 - 11 * 64 * 16


def test_lengths_for_ten_seconds_at_500hz():
    model = _abstract(12)
    graphdef, state = nnx.split(model)

    def lengths(state, x):
        m = nnx.merge(graphdef, state)
        out = jax.nn.silu(m.first_conv(jnp.swapaxes(x, 1, 2)))
        maps = [out]
        for stage in m.stage_list:
            out = stage(out)
            maps.append(out)
        return maps, m.features(x), m(x)

    maps, feats, logits = jax.eval_shape(lengths, state, jax.ShapeDtypeStruct((2, 12, 5000),
                                                                                jnp.float32))
    shapes = [m.shape for m in maps]
    assert [s[1] for s in shapes] == [2500, 1250, 625, 313, 157, 79, 40, 20]
    assert [s[2] for s in shapes] == [64, 64, 160, 160, 400, 400, 1024, 1024]
    assert feats.shape == (2, 1024) and logits.shape == (2, 150)


def test_maxpool_pads_a_zero_not_minus_infinity():
    x = -np.arange(1, 8, dtype=np.float32).reshape(1, 7, 1)  # all negative, odd length
    got = np.asarray(net1d.maxpool_pad_right_zero(jnp.asarray(x)))[0, :, 0]
    # Windows (-1,-2) (-3,-4) (-5,-6) and (-7, 0): the padded zero wins the last window.
    np.testing.assert_array_equal(got, [-1.0, -3.0, -5.0, 0.0])
    even = net1d.maxpool_pad_right_zero(jnp.asarray(x[:, :6]))
    np.testing.assert_array_equal(np.asarray(even)[0, :, 0], [-1.0, -3.0, -5.0])


def test_channel_padding_is_centred():
    x = jnp.arange(1, 4, dtype=jnp.float32).reshape(1, 1, 3) * jnp.ones((1, 2, 3))
    got = np.asarray(net1d.pad_channels_centred(x, 8))[0, 0]
    np.testing.assert_array_equal(got, [0, 0, 1, 2, 3, 0, 0, 0])  # 5 extra: 2 before, 3 after


def test_features_are_the_time_mean_and_logits_the_dense_head():
    cfg = net1d.default_net1d_config(1)
    cfg.filters, cfg.blocks, cfg.num_classes = [16, 32], [1, 2], 3
    model = net1d.Net1D(cfg, rngs=nnx.Rngs(1))
    x = jax.random.normal(jax.random.key(0), (2, 1, 101))
    fmap = np.asarray(model.feature_map(x))
    assert fmap.shape == (2, 13, 32)  # 101 -> 51 (stem) -> 26 -> 13
    feats = np.asarray(model.features(x))
    np.testing.assert_allclose(feats, fmap.mean(axis=1), rtol=1e-6, atol=1e-6)
    kernel, bias = np.asarray(model.dense.kernel[...]), np.asarray(model.dense.bias[...])
    np.testing.assert_allclose(np.asarray(model(x)), feats @ kernel + bias, rtol=1e-5, atol=1e-6)


def test_wrong_lead_count_is_refused():
    cfg = net1d.default_net1d_config(1)
    cfg.filters, cfg.blocks = [16], [1]
    model = net1d.Net1D(cfg, rngs=nnx.Rngs(0))
    try:
        model(jnp.zeros((1, 12, 64)))
    except ValueError as err:
        assert "1 leads" in str(err)
    else:
        raise AssertionError("a 12-lead input to a 1-lead Net1D must be refused")


def test_silu_and_its_derivative_match_the_sigmoid_formulas_everywhere():
    x = np.array([-120.0, -89.0, -20.0, -1.5, -1e-3, 0.0, 0.7, 3.0, 30.0, 120.0], np.float32)
    x64 = x.astype(np.float64)
    sig = 0.5 * (1 + np.tanh(0.5 * x64))  # sigmoid, without overflow
    np.testing.assert_allclose(np.asarray(net1d.silu(jnp.asarray(x))), x64 * sig,
                               rtol=1e-6, atol=1e-30)
    grad = np.asarray(jax.vmap(jax.grad(net1d.silu))(jnp.asarray(x)))
    assert np.isfinite(grad).all()  # the quotient's autodiff would give inf/inf below -88
    np.testing.assert_allclose(grad, sig * (1 + x64 * (1 - sig)), rtol=1e-6, atol=1e-30)


def test_micro_batched_forward_matches_the_torch_reference_row_by_row(monkeypatch):
    """A batch of 7 in micro-batches of at most 3 (3 of 3 rows, 2 of them padding) through the
    first four stages, then the whole batch: each row equals ECGFounder's PyTorch module."""
    import torch

    from crema_jax.export import convert
    from crema_jax.models import params as params_lib
    from tests.references.ecgfounder_torch import Net1DRef

    filters, blocks = [16, 16, 32, 32, 48, 48], [1, 1, 1, 1, 2, 1]
    torch.manual_seed(0)
    ref = Net1DRef(in_channels=12, filters=filters, blocks=blocks, n_classes=5).eval()
    cfg = net1d.default_net1d_config(12)
    cfg.filters, cfg.blocks, cfg.num_classes = filters, blocks, 5
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    params, _ = convert.torch_to_jax(sd, convert.ecgfounder_rules(cfg),
                                     params_lib.abstract_params(cfg), path="mem",
                                     layout="ecgfounder", ignored=convert.ECGFOUNDER_IGNORED)
    graphdef, state = nnx.split(params_lib.merge(cfg, params))
    monkeypatch.setattr(net1d, "_MICRO_BATCH", 3)
    x = np.random.default_rng(0).standard_normal((7, 12, 300)).astype(np.float32)
    got = np.asarray(jax.jit(lambda s, v: nnx.merge(graphdef, s)(v))(state, jnp.asarray(x)))
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()
    assert got.shape == want.shape == (7, 5)
    scale = np.max(np.abs(want))
    assert np.max(np.abs(got - want)) / scale <= 1e-5
