"""SiT: the Signal Transformer encoder, with ST-MEM's lead-wise tokenisation and numerics.

Every (lead, patch) of 75 samples is one token. Parameter tree (ST-MEM key in brackets):
  patch_embed.in_norm.{scale,bias} (P,)      [to_patch_embedding.1.{weight,bias}]
  patch_embed.proj.{kernel (P,D), bias}      [to_patch_embedding.2.{weight.T,bias}]
  patch_embed.out_norm.{scale,bias} (D,)     [to_patch_embedding.3.{weight,bias}]
  pos_embedding (1, N+2, D) FixedEmbedding   [pos_embedding]
  sep_embedding (D,)                         [sep_embedding]
  lead_embeddings (12, D)                    [lead_embeddings.{0..11} stacked]
  blocks.{i}.*  (see layers.py)              [block{i}.*]
  norm.{scale,bias} (D,)                     [norm.{weight,bias}]
  head.{kernel (D,C), bias} if num_classes   [head.{weight.T,bias}]

Token order. Masked tokens are REMOVED before the blocks (MAE). Visible patches come from a flat,
lead-major `visible_idx` (B, K) whose per-lead counts may differ (random_global masking), so the
sequence is built as [K visible patch tokens..., 2 SEP tokens per lead (start, end)] rather than
ST-MEM's lead-major [SEP, patches, SEP] per lead. With full attention, no mask and no relative
position bias, a transformer is permutation-equivariant: every token's output is identical to
ST-MEM's (positions and leads are added to the tokens, not implied by order).
"""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from crema_jax.models import config as model_config
from crema_jax.models import layers
from crema_jax.models import sharding as S

ENCODER_LN_EPS = 1e-5  # PyTorch's default, as in every ST-MEM encoder LayerNorm.


class FixedEmbedding(nnx.Variable):
    """A fixed (never trained) table. Not an nnx.Param, so `wrt=nnx.Param` optimizers skip it,
    yet it is part of the model state, as in ST-MEM's state_dict."""


def sincos_table(num_patches: int, dim: int) -> np.ndarray:
    """ST-MEM's (1, N+2, dim) table: 1-D sin-cos of positions 0..N-1 in rows 1..N, sin half first,
    omega_i = 10000^(-i/(dim/2)); rows 0 and N+1 (the SEP slots) are zero."""
    omega = 1.0 / 10000.0 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = np.arange(num_patches, dtype=np.float64)[:, None] * omega[None, :]
    table = np.zeros((1, num_patches + 2, dim), np.float32)
    table[0, 1:-1] = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
    return table


class PatchEmbed(nnx.Module):
    """LayerNorm(P) -> Dense(P -> D) -> LayerNorm(D); the Dense alone when
    config.model.patch_norms is False."""

    def __init__(self, patch_size, width, *, dtype, rngs, norms=True):
        self.in_norm = (layers.layer_norm(patch_size, eps=ENCODER_LN_EPS, dtype=dtype, rngs=rngs,
                                          axis_name=S.PATCH) if norms else nnx.data(None))
        self.proj = layers.dense(patch_size, width, (S.PATCH, S.EMBED), dtype=dtype, rngs=rngs)
        self.out_norm = (layers.layer_norm(width, eps=ENCODER_LN_EPS, dtype=dtype, rngs=rngs)
                         if norms else nnx.data(None))

    def __call__(self, x):
        if self.in_norm is None:
            return self.proj(x)
        return self.out_norm(self.proj(self.in_norm(x)))


class SiT(nnx.Module):
    def __init__(self, model_cfg, *, rngs):
        size = model_config.resolve_size(model_cfg)
        width, depth = size["width"], size["depth"]
        self.dtype = model_config.compute_dtype(model_cfg)
        self.num_patches = int(model_cfg.num_patches)
        if model_cfg.lead_embedding not in ("canonical", "position"):
            raise ValueError(f"config.model.lead_embedding={model_cfg.lead_embedding!r}: "
                             "expected 'canonical' or 'position'")
        self.lead_by_position = model_cfg.lead_embedding == "position"
        self.scan = bool(model_cfg.scan_layers)
        # timm-style stochastic depth: rate grows linearly from 0 to drop_path over the depth.
        self.drop_rates = tuple(float(r) for r in np.linspace(0.0, model_cfg.drop_path, depth))
        init02 = jax.nn.initializers.normal(0.02)
        self.patch_embed = PatchEmbed(model_cfg.patch_size, width, dtype=self.dtype, rngs=rngs,
                                      norms=bool(model_cfg.patch_norms))
        self.pos_embedding = FixedEmbedding(
            jnp.asarray(sincos_table(self.num_patches, width)), out_sharding=(None, None, S.EMBED))
        self.sep_embedding = nnx.Param(init02(rngs.params(), (width,)), out_sharding=(S.EMBED,))
        self.lead_embeddings = nnx.Param(
            init02(rngs.params(), (model_cfg.num_lead_embeddings, width)),
            out_sharding=(S.LEADS, S.EMBED))
        self.blocks = layers.make_blocks(
            depth, self.scan, rngs=rngs, width=width, num_heads=size["num_heads"],
            head_dim=size["head_dim"], mlp_hidden=int(model_cfg.mlp_ratio * width),
            eps=ENCODER_LN_EPS, dtype=self.dtype,
            boundary=layers.uses_residual_boundary(model_cfg))
        self.norm = layers.layer_norm(width, eps=ENCODER_LN_EPS, dtype=self.dtype, rngs=rngs)
        self.head = (layers.dense(width, model_cfg.num_classes, (S.EMBED, S.CLASSES),
                                  dtype=self.dtype, rngs=rngs)
                     if model_cfg.num_classes > 0 else nnx.data(None))

    def __call__(self, patches, lead_indices, visible_idx=None, *, rng=None):
        """Encoder blocks' outputs (before `norm`).

        patches (B, L, N, P); lead_indices (B, L) canonical ids; visible_idx (B, K) flat l*N+n
        indices of visible patches or None (all). rng: drop-path key, None = inference.
        Returns (patch_tokens (B, K, D) in visible_idx order, sep_tokens (B, L, 2, D)).
        """
        b, num_leads, n, _ = patches.shape
        if n != self.num_patches:
            raise ValueError(f"patches have {n} patches per lead; config.model.num_patches is "
                             f"{self.num_patches}")
        pos = self.pos_embedding[...]
        x = self.patch_embed(patches.astype(self.dtype))                   # (B, L, N, D)
        x = (x + pos[:, None, 1:-1]).reshape(b, num_leads * n, -1)          # positions before masking
        if self.lead_by_position:  # ST-MEM: the l-th fed lead gets embedding l
            lead_indices = jnp.broadcast_to(jnp.arange(num_leads), (b, num_leads))
        lead_emb = self.lead_embeddings[...][lead_indices]                  # (B, L, D)
        token_lead = jnp.broadcast_to(jnp.arange(num_leads)[:, None], (num_leads, n)).reshape(-1)
        if visible_idx is not None:
            x = jnp.take_along_axis(x, visible_idx[..., None], axis=1)
            token_lead = visible_idx // n
        else:
            token_lead = jnp.broadcast_to(token_lead, (b, num_leads * n))
        x = x + jnp.take_along_axis(lead_emb, token_lead[..., None], axis=1)
        sep = self.sep_embedding[...] + lead_emb[:, :, None, :] + pos[:, None, jnp.array([0, n + 1])]
        k = x.shape[1]
        seq = jnp.concatenate([x, sep.reshape(b, 2 * num_leads, -1)], axis=1).astype(self.dtype)
        seq = S.constrain(seq, (S.ACT_BATCH, S.ACT_LENGTH, S.ACT_EMBED))
        seq = layers.run_blocks(self.blocks, seq, self.drop_rates, rng, self.scan)
        return seq[:, :k], seq[:, k:].reshape(b, num_leads, 2, -1)

    def pool(self, patch_tokens, weights=None):
        """ST-MEM's downstream features: mean over patch tokens (SEPs excluded), then `norm`.
        weights (B, K) bool/float restrict the mean (visible & valid); all-zero rows give norm(0)."""
        if weights is None:
            mean = patch_tokens.astype(jnp.float32).mean(axis=1)
        else:
            w = weights.astype(jnp.float32)[..., None]
            mean = (patch_tokens.astype(jnp.float32) * w).sum(1) / jnp.maximum(w.sum(1), 1.0)
        return self.norm(mean.astype(self.dtype)).astype(jnp.float32)

    def features(self, patches, lead_indices, patch_valid=None):
        """Downstream (B, D) features of unmasked inputs; patch_valid (B, L, N) limits the mean."""
        tokens, _ = self(patches, lead_indices)
        weights = None if patch_valid is None else patch_valid.reshape(patch_valid.shape[0], -1)
        return self.pool(tokens, weights)

    def logits(self, patches, lead_indices, patch_valid=None, *, rng=None):
        """ST-MEM's fine-tuning output: head(norm(mean tokens)) (B, C)."""
        if self.head is None:
            raise ValueError("SiT.logits needs config.model.num_classes > 0 (the `head` layer)")
        tokens, _ = self(patches, lead_indices, rng=rng)
        weights = None if patch_valid is None else patch_valid.reshape(patch_valid.shape[0], -1)
        return self.head(self.pool(tokens, weights).astype(self.dtype)).astype(jnp.float32)


# ------------------------------------------------------------------- layer-wise lr decay
_EMBEDDINGS = ("patch_embed", "pos_embedding", "sep_embedding", "lead_embeddings")


def layer_id(path: tuple[str, ...], depth: int) -> int:
    """A SiT parameter's layer for layer-wise lr decay: 0 for the embeddings, i+1 for block i,
    depth+1 for everything after the blocks (`norm`, `head`); -1 for scanned (stacked) blocks,
    whose leading axis holds every layer."""
    if path and path[0] == "blocks":
        return int(path[1]) + 1 if len(path) > 1 and str(path[1]).isdigit() else -1
    if path and path[0] in _EMBEDDINGS:
        return 0
    return depth + 1


def layer_decay_scales(params, depth: int, decay: float):
    """A tree like a SiT's `params` of lr multipliers decay^(depth+1-layer_id) (the MAE/BEiT
    fine-tuning recipe). Scanned blocks carry a leading `layers` axis: their multiplier is a
    (depth, 1, ...) array so each layer still gets its own rate."""
    def scale(path, leaf):
        keys = tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        lid = layer_id(keys, depth)
        if lid == -1:
            per_layer = decay ** (depth - np.arange(depth, dtype=np.float32))
            return jnp.asarray(per_layer.reshape((depth,) + (1,) * (np.ndim(leaf) - 1)))
        return jnp.asarray(decay ** (depth + 1 - lid), jnp.float32)

    return jax.tree_util.tree_map_with_path(scale, params)
