"""The tiny SiT + decoder against an independent PyTorch ST-MEM (tests/references/stmem_torch.py)."""
import functools

import jax
import numpy as np
import torch
from flax import nnx

from crema_jax.losses import stmem
from crema_jax.models import encode_features, forward
from tests.models import helpers
from tests.references import stmem_torch as ref


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


@functools.lru_cache(maxsize=None)  # one tiny model per session: building compiles init ops
def build_pair(seed=0):
    graphdef, state = helpers.tiny_split(seed)
    params = nnx.to_pure_dict(state)
    full_t = ref.StMemPretrain(64, 2, 2, dim_head=32, patch=helpers.P, n=helpers.N)
    enc_t = full_t.encoder
    sd = ref.jax_to_torch_state(params["encoder"], params["decoder"])
    for key, width in (("encoder.pos_embedding", 64), ("decoder_pos_embed", 256)):
        assert np.allclose(sd[key].numpy(), ref.sincos(helpers.N, width).numpy(), atol=1e-6)
        sd[key] = ref.sincos(helpers.N, width)
    full_t.load_state_dict(sd, strict=True)
    return graphdef, state, enc_t, full_t


def test_unmasked_features_match_torch():
    graphdef, state, enc_t, _ = build_pair()
    patches = np.random.default_rng(1).standard_normal((2, 12, 30, 75)).astype(np.float32)
    leads = np.tile(np.arange(12, dtype=np.int32), (2, 1))
    ours = jax.jit(encode_features, static_argnums=0)(graphdef, state, patches, leads)
    with torch.no_grad():
        theirs = enc_t.features(torch.tensor(patches)).numpy()
    assert rel_err(ours, theirs) < 1e-5


def test_per_lead_masked_reconstruction_and_loss_match_torch():
    graphdef, state, _, full_t = build_pair()
    rng = np.random.default_rng(2)
    keep = helpers.per_lead_keep(rng, 2, 1)            # ST-MEM's shuffled (unsorted) keep order
    batch = helpers.make_batch(rng, b=2, v=1, keep_ids=keep)
    out = jax.jit(forward, static_argnums=0, static_argnames="train")(
        graphdef, state, batch, None, train=False)
    loss, _ = stmem(out, batch)
    x = torch.tensor(batch["patches"][:, 0])
    with torch.no_grad():
        pred_t = full_t.reconstruct(x, torch.tensor(keep[:, 0]))
        loss_t = ref.stmem_loss(pred_t, x, torch.tensor(batch["mask"][:, 0]).float())
    assert rel_err(out["pred"][:, 0], pred_t.numpy()) < 1e-5
    assert abs(float(loss) - float(loss_t)) / float(loss_t) < 1e-5


def test_state_dict_keys_and_shapes_follow_the_reference():
    _, state, enc_t, full_t = build_pair()
    keys = set(enc_t.state_dict())
    # ST-MEM encoder keys: 2 embeddings + 6 patch-embedding + 12 leads + 12 per block + 2 norm.
    assert len(keys) == 2 + 6 + 12 + 12 * 2 + 2
    assert {"pos_embedding", "sep_embedding", "block1.attn.fn.to_qkv.weight",
            "lead_embeddings.11", "norm.bias"} <= keys
    assert tuple(enc_t.state_dict()["block0.attn.fn.to_qkv.weight"].shape) == (3 * 2 * 32, 64)
    assert tuple(full_t.state_dict()["decoder_blocks.3.ff.fn.net.0.weight"].shape) == (1024, 256)


def test_lead_subsets_run_through_the_same_weights():
    graphdef, state, enc_t, _ = build_pair()
    rng = np.random.default_rng(4)
    for lead_ids in ([0], [3, 0, 5, 1, 4, 2]):   # lead I alone; the six limb leads, shuffled
        patches = rng.standard_normal((2, len(lead_ids), 30, 75)).astype(np.float32)
        leads = np.tile(np.asarray(lead_ids, np.int32), (2, 1))
        ours = encode_features(graphdef, state, patches, leads)
        with torch.no_grad():
            theirs = enc_t.features(torch.tensor(patches), lead_ids).numpy()
        assert rel_err(ours, theirs) < 1e-5, lead_ids
