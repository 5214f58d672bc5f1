"""The model config a PyTorch state_dict was trained with, inferred from its keys and shapes.

ST-MEM's ViT (encoder-only or encoder + decoder; a size entry of SIZES when the shapes match one)
and ECGFounder's Net1D (12 leads or lead I). A file whose keys cannot say raises
CheckpointFileError naming the key; the full key check (convert.py) then lists every problem.
"""
from __future__ import annotations

import re
from typing import Mapping

import numpy as np

from crema_jax.export import safe_load
from crema_jax.models import SIZES, default_model_config
from crema_jax.models.net1d import default_net1d_config


def _count(keys, pattern: str) -> int:
    found = {int(m.group(1)) for k in keys if (m := re.match(pattern, k))}
    if found != set(range(len(found))):
        raise safe_load.CheckpointFileError(f"block indices {sorted(found)} are not 0..n-1")
    return len(found)


def _sit_config(width, depth, heads, head_dim, **fields):
    cfg = default_model_config()
    wanted = dict(width=width, depth=depth, num_heads=heads, head_dim=head_dim)
    match = [name for name, size in SIZES.items() if size == wanted]
    cfg.size = match[0] if match else "base"
    if not match:  # explicit overrides of the size entry
        cfg.width, cfg.depth, cfg.num_heads, cfg.head_dim = width, depth, heads, head_dim
    for key, value in fields.items():
        setattr(cfg, key, value)
    return cfg


def _first(sd: Mapping[str, np.ndarray], *keys: str) -> str:
    """The first of `keys` present. Inference looks at alternatives so that a file with a
    renamed or missing key still reaches the full key check, which lists every problem."""
    key = next((k for k in keys if k in sd), None)
    if key is None:
        raise safe_load.CheckpointFileError(
            f"cannot infer the model size: none of {list(keys)} is in the file")
    return key


def _shape(sd: Mapping[str, np.ndarray], *keys: str) -> tuple:
    """Shape of the first of `keys` present."""
    return tuple(sd[_first(sd, *keys)].shape)


def _dim(sd: Mapping[str, np.ndarray], axis: int, *keys: str) -> int:
    """Size of `axis` of the first of `keys` present, at least 1: a tensor with too few axes
    or an empty one names the key (they had ended in IndexError and ZeroDivisionError
    tracebacks)."""
    key = _first(sd, *keys)
    shape = tuple(sd[key].shape)
    if len(shape) <= axis or shape[axis] < 1:
        raise safe_load.CheckpointFileError(
            f"{key} has shape {shape}: cannot infer the model size from it (expected at least "
            f"{axis + 1} ax{'is' if axis == 0 else 'es'}, none empty)")
    return int(shape[axis])


def _multiple(sd: Mapping[str, np.ndarray], unit: int, what: str, *keys: str) -> int:
    """Axis 0 of the first of `keys` present over `unit`, which must divide it: a tensor with a
    row missing names itself (383 rows of to_qkv had been read as one 64-dim head, and the
    key check then blamed 5 intact tensors)."""
    rows = _dim(sd, 0, *keys)
    if rows % unit:
        key = _first(sd, *keys)
        raise safe_load.CheckpointFileError(
            f"{key} has shape {tuple(sd[key].shape)}: {rows} rows, not a multiple of {what}")
    return rows // unit


# Keys of ST-MEM's encoder: a full file holds them under "encoder.", an encoder-only one bare.
_ENCODER_KEYS = ("sep_embedding", "pos_embedding", "to_patch_embedding.1.weight",
                 "block0.attn.fn.to_qkv.weight", "norm.weight")


def _stmem_prefix(sd: Mapping[str, np.ndarray]) -> str:
    """"encoder." when more of the encoder's keys are there under it than bare (any key under
    "encoder." had decided it: one stray "encoder.extra.weight" and an encoder-only file was
    "cannot infer the model size")."""
    nested = sum(f"encoder.{k}" in sd for k in _ENCODER_KEYS)
    return "encoder." if nested > sum(k in sd for k in _ENCODER_KEYS) else ""


def infer_stmem_config(sd: Mapping[str, np.ndarray]):
    """ST-MEM model config from an encoder-only or full state_dict (head_dim 64 as in ST-MEM)."""
    t = _stmem_prefix(sd)
    width = _dim(sd, 0, t + "sep_embedding", t + "norm.weight", t + "to_patch_embedding.3.weight")
    qkv = t + "block0.attn.fn.to_qkv."
    heads_of = "3 x 64 (query, key and value of ST-MEM's 64-dim heads)"
    has_head = (t + "head.weight") in sd or (t + "head.bias") in sd
    fields = dict(
        patch_size=_dim(sd, 0, t + "to_patch_embedding.1.weight", t + "to_patch_embedding.1.bias"),
        num_patches=_dim(sd, 1, t + "pos_embedding") - 2,
        num_lead_embeddings=_count(sd, re.escape(t) + r"lead_embeddings\.(\d+)$"),
        mlp_ratio=_multiple(sd, width, f"the width {width} (a whole MLP ratio)",
                            t + "block0.ff.fn.net.0.weight", t + "block0.ff.fn.net.0.bias"),
        num_classes=_dim(sd, 0, t + "head.weight", t + "head.bias") if has_head else 0)
    if t:
        dec_width = _dim(sd, 0, "to_decoder_embedding.weight", "to_decoder_embedding.bias",
                         "decoder_norm.weight")
        fields.update(
            decoder_width=dec_width, decoder_head_dim=64,
            decoder_depth=_count(sd, r"decoder_blocks\.(\d+)\."),
            decoder_num_heads=_multiple(sd, 3 * 64, heads_of,
                                        "decoder_blocks.0.attn.fn.to_qkv.weight",
                                        "decoder_blocks.0.attn.fn.to_qkv.bias"),
            decoder_mlp_ratio=_multiple(sd, dec_width, f"the decoder width {dec_width} (a whole "
                                        "MLP ratio)", "decoder_blocks.0.ff.fn.net.0.weight",
                                        "decoder_blocks.0.ff.fn.net.0.bias"))
    depth = _count(sd, re.escape(t) + r"block(\d+)\.")
    heads = _multiple(sd, 3 * 64, heads_of, qkv + "weight", qkv + "bias")
    return _sit_config(int(width), depth, int(heads), 64, **fields), bool(t)


def infer_net1d_config(sd: Mapping[str, np.ndarray]):
    """Net1D config: leads from first_conv, stages/blocks/widths from the keys."""
    leads = _dim(sd, 1, "first_conv.conv.weight")
    if leads not in (1, 12):  # 3 leads had been fed leads I, II and III without a word
        raise safe_load.CheckpointFileError(
            f"first_conv.conv.weight has shape {_shape(sd, 'first_conv.conv.weight')}: "
            f"{leads} input leads; ECGFounder's Net1D takes 12 leads or lead I alone")
    cfg = default_net1d_config(leads)
    stages = _count(sd, r"stage_list\.(\d+)\.")
    cfg.blocks = [_count(sd, rf"stage_list\.{i}\.block_list\.(\d+)\.") for i in range(stages)]
    cfg.filters = [_dim(sd, 0, f"stage_list.{i}.block_list.0.conv1.conv.weight",
                        f"stage_list.{i}.block_list.0.conv1.conv.bias")
                   for i in range(stages)]
    cfg.kernel = _dim(sd, 2, "first_conv.conv.weight")
    cfg.group_width = _dim(sd, 1, "stage_list.0.block_list.0.conv2.conv.weight")
    cfg.num_classes = _dim(sd, 0, "dense.weight", "dense.bias")
    return cfg
