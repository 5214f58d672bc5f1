"""ECGFounder's Net1D: checkpoint import against an in-test PyTorch reference, both directions."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from crema_jax.runtime import trees
from crema_jax.export import convert, import_torch
from crema_jax.models import params as params_lib
from crema_jax.models import net1d
from tests.references.ecgfounder_torch import Block as RefBlock, Net1DRef


def rel_err(a, b):
    """Max abs difference relative to the reference's max magnitude."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _reference(leads, seed=0):
    torch.manual_seed(seed)
    ref = Net1DRef(in_channels=leads).eval()
    for name, buf in ref.named_buffers():  # unused batch-norm stats: must be ignored on import
        if buf.is_floating_point():
            buf.uniform_(0.5, 2.0)
    return ref


def _save(ref, path):
    torch.save({"state_dict": ref.state_dict(), "epoch": 7, "step": 1000, "val_auroc": 0.9}, path)


@pytest.mark.parametrize("leads", [12, 1])
def test_import_reproduces_the_torch_model_and_round_trips(leads, tmp_path):
    ref = _reference(leads)
    sd = ref.state_dict()
    assert len(sd) == 509
    in_use = sum(v.numel() for k, v in sd.items() if ".bn" not in k and "first_bn" not in k)
    assert in_use == 30_752_646 - (11 * 64 * 16 if leads == 1 else 0)
    path = tmp_path / f"{leads}_lead_ECGFounder.pth"
    _save(ref, path)

    params, cfg, kept = import_torch.import_weights(str(path), "ecgfounder")
    assert kept == [] and cfg.in_channels == leads and cfg.num_classes == 150
    model = params_lib.merge(cfg, params)  # eager: cheaper than compiling 24 unrolled blocks
    x = np.random.default_rng(leads).standard_normal((2, leads, 777)).astype(np.float32)
    with torch.no_grad():
        want_logits = ref(torch.from_numpy(x)).numpy()
        want_feats = ref.features(torch.from_numpy(x)).numpy()
    got_feats = np.asarray(model.features(jnp.asarray(x)))
    got_logits = np.asarray(model.dense(jnp.asarray(got_feats)))
    assert rel_err(got_feats, want_feats) <= 1e-5
    assert rel_err(got_logits, want_logits) <= 1e-5

    # JAX -> torch: bit-exact tensors; with the identity batch-norm entries the reference module
    # loads the export strictly (all 509 keys).
    rules = convert.ecgfounder_rules(cfg)
    exported = convert.jax_to_torch(params, rules, layout="ecgfounder")
    for key, value in exported.items():
        assert np.array_equal(value, sd[key].numpy()), key
    full = {**exported, **convert.ecgfounder_unused_batchnorm(cfg)}
    Net1DRef(in_channels=leads).load_state_dict({k: torch.from_numpy(np.asarray(v))
                                                 for k, v in full.items()}, strict=True)
    # ... and back to JAX: bit-exact.
    again, kept = convert.torch_to_jax(full, rules, params, path="mem", layout="ecgfounder",
                                       ignored=convert.ECGFOUNDER_IGNORED)
    assert kept == []
    flat_a, flat_b = trees.flatten(params), trees.flatten(again)
    assert flat_a.keys() == flat_b.keys()
    assert all(np.array_equal(flat_a[k], flat_b[k]) for k in flat_a)


# ------------------------------------------------------------------------------------------------
# Block-level edge cases against the reference block.
# ------------------------------------------------------------------------------------------------
def _jax_block(ref: RefBlock, is_first_block):
    """The JAX block with the reference's weights (built abstractly: no random init)."""
    abstract = nnx.eval_shape(lambda: net1d.Block(
        ref.cin, ref.cout, kernel=16, stride=ref.s, group_width=16,
        is_first_block=is_first_block, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    t = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    pure = {f"conv{n}": {"kernel": t[f"conv{n}.conv.weight"].transpose(2, 1, 0),
                         "bias": t[f"conv{n}.conv.bias"]} for n in (1, 2, 3)}
    pure["se"] = {fc: {"kernel": t[f"{fc}.weight"].T, "bias": t[f"{fc}.bias"]}
                  for fc in ("se_fc1", "se_fc2")}
    nnx.replace_by_pure_dict(state, pure)
    return jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)), state


def _run_both(ref, blk, x):
    apply, state = blk
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()
    got = np.asarray(apply(state, jnp.asarray(x.transpose(0, 2, 1)))).transpose(0, 2, 1)
    return got, want


def test_odd_length_shortcut_pads_zero_and_channels_are_centred():
    torch.manual_seed(1)
    ref = RefBlock(16, 48, 16, 2, 16, is_first_block=False).eval()
    with torch.no_grad():  # silence the residual branch: the output IS the shortcut
        ref.conv3.conv.weight.zero_()
        ref.conv3.conv.bias.zero_()
    blk = _jax_block(ref, is_first_block=False)
    x = -np.random.default_rng(0).uniform(0.5, 1.0, (2, 16, 9)).astype(np.float32)
    got, want = _run_both(ref, blk, x)
    assert got.shape == want.shape == (2, 48, 5)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    # By hand: channels 16..31 carry the pooled input (centred: 16 zero channels each side);
    # the last window of the odd length is max(x_last, padded 0) = 0, not x_last.
    pooled = np.maximum(x[:, :, 0:8:2], x[:, :, 1:9:2])
    np.testing.assert_array_equal(got[:, 16:32, :4], pooled)
    np.testing.assert_array_equal(got[:, 16:32, 4], 0.0)
    np.testing.assert_array_equal(got[:, :16], 0.0)
    np.testing.assert_array_equal(got[:, 32:], 0.0)


def test_first_block_skips_its_pre_activation():
    torch.manual_seed(2)
    ref_first = RefBlock(16, 16, 16, 2, 16, is_first_block=True).eval()
    ref_other = RefBlock(16, 16, 16, 2, 16, is_first_block=False).eval()
    ref_other.load_state_dict(ref_first.state_dict())
    x = np.random.default_rng(3).standard_normal((2, 16, 40)).astype(np.float32) * 3
    got, want = _run_both(ref_first, _jax_block(ref_first, True), x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    got_other, want_other = _run_both(ref_other, _jax_block(ref_other, False), x)
    np.testing.assert_allclose(got_other, want_other, rtol=1e-5, atol=1e-6)
    assert np.max(np.abs(want - want_other)) > 1e-2  # the skipped Swish matters on this input
