"""Rule tables for the SiT: our own PyTorch layout ("crema") and ST-MEM's ("stmem").

JAX params come from PretrainModel (`encoder/...`, `decoder/...`, `projector/...`) or from a bare
SiT (no `encoder/` prefix); scan_layers checkpoints are unstacked first (`unstack_blocks`).

- crema: the JAX tree with dots, PyTorch conventions (weight/bias, Linear (out, in), fused qkv
  (3*H*hd, D)); crema_jax/export/torch_sit.py holds exactly these keys.
- stmem: docs/reference/stmem.md. Encoder-only file: 166 keys (ViT-B), no prefix, `block{i}.` with no
  dot, `lead_embeddings.{i}`. Full pretraining file: `encoder.` + the encoder keys, the alias
  `to_patch_embedding.*` of the same tensors, and the decoder (228 keys).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from crema_jax.export.convert import (Rule, alias, fused_in, fused_out, linear, reshaped, rows,
                                      same)
from crema_jax.models import config as model_config
from crema_jax.models import pretrain, sit  # the numerics (LayerNorm eps) live there
from crema_jax.runtime import trees

_STMEM_BLOCK = dict(attn_norm="attn.norm", qkv="attn.fn.to_qkv", out="attn.fn.to_out.0",
                    mlp_norm="ff.norm", fc1="ff.fn.net.0", fc2="ff.fn.net.3")
_CREMA_BLOCK = dict(attn_norm="attn_norm", qkv="attn.qkv", out="attn.out", mlp_norm="mlp_norm",
                    fc1="mlp.fc1", fc2="mlp.fc2")
# Parts of PretrainModel that only pretraining uses.
PRETRAIN_ONLY = ("decoder/", "projector/", "logit_scale", "logit_bias")


def _norm(t: str, j: str) -> list[Rule]:
    return [same(t + ".weight", j + "/scale"), same(t + ".bias", j + "/bias")]


def _dense(t: str, j: str) -> list[Rule]:
    return [linear(t + ".weight", j + "/kernel"), same(t + ".bias", j + "/bias")]


def stmem_has_out_projection(width: int, heads: int, head_dim: int) -> bool:
    """ST-MEM's attention has no output projection (`to_out` is an identity) when one head is
    as wide as the model (docs/reference/stmem.md)."""
    return not (heads == 1 and head_dim == width)


def _block(t: str, j: str, names: dict, width: int, heads: int, head_dim: int, *,
           out_projection: bool = True) -> list[Rule]:
    hh = heads * head_dim
    out = [fused_out(t + names["out"] + ".weight", j + "attn/out/kernel",
                     (heads, head_dim, width)),
           same(t + names["out"] + ".bias", j + "attn/out/bias")] if out_projection else []
    return (_norm(t + names["attn_norm"], j + "attn_norm")
            + [fused_in(t + names["qkv"] + ".weight", j + "attn/qkv/kernel",
                        (width, 3, heads, head_dim)),
               reshaped(t + names["qkv"] + ".bias", j + "attn/qkv/bias", (3 * hh,),
                        (3, heads, head_dim))]
            + out
            + _norm(t + names["mlp_norm"], j + "mlp_norm")
            + _dense(t + names["fc1"], j + "mlp/fc1") + _dense(t + names["fc2"], j + "mlp/fc2"))


def _sizes(model_cfg) -> dict:
    return model_config.resolve_size(model_cfg)


def _encoder_blocks_and_head(model_cfg, block_key: str, names: dict, *, t: str, j: str,
                             include_head: bool, stmem: bool = False) -> list[Rule]:
    """The encoder's blocks (torch keys block_key.format(i)), final norm and optional head."""
    size = _sizes(model_cfg)
    out = not stmem or stmem_has_out_projection(size["width"], size["num_heads"],
                                                size["head_dim"])
    rules = []
    for i in range(size["depth"]):
        rules += _block(block_key.format(i), f"{j}blocks/{i}/", names, size["width"],
                        size["num_heads"], size["head_dim"], out_projection=out)
    rules += _norm(t + "norm", j + "norm")
    return rules + (_dense(t + "head", j + "head") if include_head else [])


def _decoder_blocks(model_cfg, block_key: str, names: dict, *, stmem: bool = False,
                    jax_key: str = "decoder/blocks/{}/") -> list[Rule]:
    w, h, hd = (int(model_cfg.decoder_width), int(model_cfg.decoder_num_heads),
                int(model_cfg.decoder_head_dim))
    out = not stmem or stmem_has_out_projection(w, h, hd)
    rules = []
    for i in range(int(model_cfg.decoder_depth)):
        rules += _block(block_key.format(i), jax_key.format(i), names, w, h, hd,
                        out_projection=out)
    return rules


def crema_rules(model_cfg, *, jax_prefix: str, include_head: bool, include_decoder: bool
                ) -> list[Rule]:
    j, t = jax_prefix, "encoder."
    norms = bool(model_cfg.patch_norms)
    rules = ((_norm(t + "patch_embed.in_norm", j + "patch_embed/in_norm") if norms else [])
             + _dense(t + "patch_embed.proj", j + "patch_embed/proj")
             + (_norm(t + "patch_embed.out_norm", j + "patch_embed/out_norm") if norms else [])
             + [same(t + "pos_embedding", j + "pos_embedding"),
                same(t + "sep_embedding", j + "sep_embedding"),
                same(t + "lead_embeddings", j + "lead_embeddings")])
    rules += _encoder_blocks_and_head(model_cfg, t + "blocks.{}.", _CREMA_BLOCK, t=t, j=j,
                                      include_head=include_head)
    if include_decoder:
        rules += (_dense("decoder.embed", "decoder/embed")
                  + [same("decoder.mask_embedding", "decoder/mask_embedding"),
                     same("decoder.pos_embedding", "decoder/pos_embedding")])
        rules += _decoder_blocks(model_cfg, "decoder.blocks.{}.", _CREMA_BLOCK)
        if model_cfg.decoder_variant == "axial":
            rules += _decoder_blocks(model_cfg, "decoder.lead_blocks.{}.", _CREMA_BLOCK,
                                     jax_key="decoder/lead_blocks/{}/")
            rules.append(same("decoder.lead_embeddings", "decoder/lead_embeddings"))
        rules += _norm("decoder.norm", "decoder/norm") + _dense("decoder.head", "decoder/head")
        for k in range(int(model_cfg.proj_depth)):
            rules += _dense(f"projector.layers.{k}", f"projector/layers/{k}")
        rules += [same("logit_scale", "logit_scale"), same("logit_bias", "logit_bias")]
    return rules


def stmem_rules(model_cfg, *, jax_prefix: str, include_head: bool, include_decoder: bool
                ) -> list[Rule]:
    j = jax_prefix
    t = "encoder." if include_decoder else ""

    def patch(torch_name, jax_name, linear_weight=False):
        # The full model also exposes the encoder's patch embedding unprefixed (same tensors).
        keys = (t + torch_name,) + ((torch_name,) if include_decoder else ())
        return alias(keys, j + jax_name, linear_weight=linear_weight)

    rules = [same(t + "pos_embedding", j + "pos_embedding"),
             same(t + "sep_embedding", j + "sep_embedding"),
             patch("to_patch_embedding.1.weight", "patch_embed/in_norm/scale"),
             patch("to_patch_embedding.1.bias", "patch_embed/in_norm/bias"),
             patch("to_patch_embedding.2.weight", "patch_embed/proj/kernel", linear_weight=True),
             patch("to_patch_embedding.2.bias", "patch_embed/proj/bias"),
             patch("to_patch_embedding.3.weight", "patch_embed/out_norm/scale"),
             patch("to_patch_embedding.3.bias", "patch_embed/out_norm/bias"),
             rows(tuple(f"{t}lead_embeddings.{i}" for i in range(model_cfg.num_lead_embeddings)),
                  j + "lead_embeddings")]
    rules += _encoder_blocks_and_head(model_cfg, t + "block{}.", _STMEM_BLOCK, t=t, j=j,
                                      include_head=include_head, stmem=True)
    if include_decoder:
        w = int(model_cfg.decoder_width)
        rules += [reshaped("mask_embedding", "decoder/mask_embedding", (1, 1, w), (w,)),
                  same("decoder_pos_embed", "decoder/pos_embedding")]
        rules += _dense("to_decoder_embedding", "decoder/embed")
        rules += _decoder_blocks(model_cfg, "decoder_blocks.{}.", _STMEM_BLOCK, stmem=True)
        rules += _norm("decoder_norm", "decoder/norm") + _dense("decoder_head", "decoder/head")
    return rules


SIT_LAYOUTS = {"crema": crema_rules, "stmem": stmem_rules}


def stmem_incompatibilities(model_cfg, *, include_decoder: bool) -> list[str]:
    """Why a SiT config cannot be written as an ST-MEM checkpoint ([] = it can)."""
    size, c, problems = _sizes(model_cfg), model_cfg, []
    if sit.ENCODER_LN_EPS != 1e-5:
        problems.append(f"encoder LayerNorm eps {sit.ENCODER_LN_EPS}, ST-MEM uses 1e-5")
    if size["head_dim"] != 64:
        problems.append(f"model.head_dim={size['head_dim']}: ST-MEM heads have 64 dims")
    if c.mlp_ratio != 4:
        problems.append(f"model.mlp_ratio={c.mlp_ratio}: ST-MEM's MLP is 4x wide")
    if int(c.num_patches) != 30:
        problems.append(f"model.num_patches={c.num_patches}: ST-MEM's position table is "
                        f"(1, 32, D) for 30 patches per lead")
    if int(c.num_lead_embeddings) != 12:
        problems.append(f"model.num_lead_embeddings={c.num_lead_embeddings}: ST-MEM has 12")
    if not c.patch_norms:
        problems.append("model.patch_norms=False: ST-MEM's patch embedding is LayerNorm -> "
                        "Linear -> LayerNorm")
    if include_decoder and c.decoder_variant != "per_lead":
        problems.append(f"model.decoder_variant={c.decoder_variant!r}: ST-MEM's decoder is "
                        "per lead")
    if include_decoder:
        got = (int(c.decoder_width), int(c.decoder_depth), int(c.decoder_num_heads),
               int(c.decoder_head_dim), int(c.decoder_mlp_ratio))
        if got != (256, 4, 4, 64, 4):
            problems.append(f"decoder width/depth/heads/head_dim/mlp_ratio {got}: ST-MEM's "
                            "decoder is (256, 4, 4, 64, 4)")
        if pretrain.DECODER_NORM_EPS != 1e-6 or pretrain.DECODER_BLOCK_LN_EPS != 1e-5:
            problems.append("decoder LayerNorm eps differ from ST-MEM's (norm 1e-6, blocks 1e-5)")
    return problems


def identity_out_paths(params: Mapping, model_cfg) -> list[str]:
    """The "a/b/attn/out/kernel" and ".../bias" paths that ST-MEM's layout holds no tensor for
    (blocks with one head as wide as the model): an ST-MEM file's identity `to_out`."""
    size = _sizes(model_cfg)
    prefix = sit_prefix(params)
    paths = []
    if not stmem_has_out_projection(size["width"], size["num_heads"], size["head_dim"]):
        paths += [f"{prefix}blocks/{i}/attn/out/{leaf}" for i in range(size["depth"])
                  for leaf in ("kernel", "bias")]
    if "decoder" in params and not stmem_has_out_projection(
            int(model_cfg.decoder_width), int(model_cfg.decoder_num_heads),
            int(model_cfg.decoder_head_dim)):
        paths += [f"decoder/blocks/{i}/attn/out/{leaf}" for i in range(int(model_cfg.decoder_depth))
                  for leaf in ("kernel", "bias")]
    return paths


def identity_out_value(path: str, shape) -> np.ndarray:
    """The identity projection (H=1, hd=D): kernel (1, D, D) = eye, bias zeros."""
    if path.endswith("kernel"):
        return np.eye(shape[-1], dtype=np.float32).reshape(shape)
    return np.zeros(shape, np.float32)


def is_stacked(blocks: Mapping) -> bool:
    """scan_layers params hold one Block with a leading layers axis instead of {0: ..., 1: ...}."""
    return "attn" in blocks


def unstack_blocks(params: Mapping) -> dict:
    """Copy of `params` with every stacked `blocks` subtree split into {i: block_i}."""
    out = {}
    for key, value in params.items():
        if key == "blocks" and isinstance(value, Mapping) and is_stacked(value):
            out[key] = trees.unstack(value)
        elif isinstance(value, Mapping):
            out[key] = unstack_blocks(value)
        else:
            out[key] = value
    return out


def sit_prefix(params: Mapping) -> str:
    """"encoder/" for PretrainModel params, "" for a bare SiT."""
    return "encoder/" if "encoder" in params else ""
