"""Damaged ST-MEM files (the in-test ST-MEM reference's state_dict, one thing changed) are named for
what is wrong with them: a tensor with a row missing names itself and the multiple it is not, a
stray key under "encoder." is listed as unexpected, and the key check's entries stay apart in
the one line the command prints."""
import pytest
import torch

from crema_jax.export import import_torch, safe_load
from tests.references.stmem_torch import StMemEncoder, StMemPretrain


def _encoder():
    torch.manual_seed(0)
    return StMemEncoder(width=128, depth=2, heads=2).state_dict()   # 2 heads of 64: 384 rows


def _full():
    torch.manual_seed(0)
    return StMemPretrain(width=128, depth=2, heads=2, dec_width=64, dec_depth=1,
                         dec_heads=1).state_dict()


def _refused(tmp_path, sd) -> str:
    path = tmp_path / "w.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(safe_load.CheckpointFileError) as refused:
        import_torch.import_weights(str(path), "stmem")
    message = str(refused.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    return message.removeprefix(f"{path}: ")


@pytest.mark.parametrize("make, key, shape, multiple", [
    (_encoder, "block0.attn.fn.to_qkv.weight", (383, 128),
     "3 x 64 (query, key and value of ST-MEM's 64-dim heads)"),
    (_full, "encoder.block0.attn.fn.to_qkv.weight", (383, 128),
     "3 x 64 (query, key and value of ST-MEM's 64-dim heads)"),
    (_full, "decoder_blocks.0.attn.fn.to_qkv.weight", (191, 64),
     "3 x 64 (query, key and value of ST-MEM's 64-dim heads)"),
    (_encoder, "block0.ff.fn.net.0.weight", (511, 128), "the width 128 (a whole MLP ratio)"),
])
def test_a_tensor_with_a_row_missing_names_itself(tmp_path, make, key, shape, multiple):
    """383 rows of to_qkv had been read as one head (383 // 3 // 64), and the key check then
    blamed 5 intact tensors (to_out, to_qkv.bias, block1's) without a word of the 383."""
    sd = make()
    sd[key] = sd[key][:-1]
    assert _refused(tmp_path, sd) == (f"{key} has shape {shape}: {shape[0]} rows, not a "
                                      f"multiple of {multiple}")


def test_a_stray_key_under_encoder_is_listed_as_unexpected(tmp_path):
    """One extra "encoder.extra.weight" in an encoder-only file had switched the key prefix:
    "cannot infer the model size: none of ['encoder.sep_embedding', ...] is in the file"."""
    sd = _encoder()
    sd["encoder.extra.weight"] = torch.zeros(3)
    assert _refused(tmp_path, sd) == ("does not match the 'stmem' layout of the configured "
                                      "model: unexpected keys (1): encoder.extra.weight")


def test_the_key_checks_entries_are_kept_apart(tmp_path):
    """The command prints the message as one line: its entries had run together ("...expected
    (128, 64) block0.attn.fn.to_qkv.bias: file (384,)...")."""
    sd = _encoder()
    sd["block0.attn.fn.to_out.0.weight"] = torch.zeros(128, 64)
    sd["block1.attn.fn.to_out.0.weight"] = torch.zeros(128, 64)
    sd["block1.extra"] = torch.zeros(1)
    assert _refused(tmp_path, sd) == (
        "does not match the 'stmem' layout of the configured model: unexpected keys (1): "
        "block1.extra. mis-shaped keys (2): block0.attn.fn.to_out.0.weight: file (128, 64), "
        "expected (128, 128); block1.attn.fn.to_out.0.weight: file (128, 64), expected "
        "(128, 128)")
