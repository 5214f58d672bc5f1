"""The pretraining model (SiT encoder + ST-MEM's MAE decoder + contrastive projection head) and
the pure functions the trainer, losses and evaluation call.

Parameter tree of PretrainModel (ST-MEM key of the full pretraining checkpoint in brackets):
  encoder.*                                    [encoder.*]           (see sit.py)
  decoder.embed.{kernel (D,W), bias}           [to_decoder_embedding.{weight.T,bias}]
  decoder.mask_embedding (W,)                  [mask_embedding (1,1,W)]
  decoder.pos_embedding (1, N+2, W) fixed      [decoder_pos_embed]
  decoder.blocks.{i}.*  (see layers.py)        [decoder_blocks.{i}.*]
  decoder.lead_blocks.{i}.*, decoder.lead_embeddings (12, W)   (decoder_variant="axial" only)
  decoder.norm.{scale,bias}                    [decoder_norm.{weight,bias}]
  decoder.head.{kernel (W,P), bias}            [decoder_head.{weight.T,bias}]
  projector.layers.{j}.{kernel,bias}           (CREMA only)
  logit_scale, logit_bias ()                   (SigLIP only)
"""
import jax
import jax.numpy as jnp
from flax import nnx

from crema_jax.models import config as model_config
from crema_jax.models import layers
from crema_jax.models import sharding as S
from crema_jax.models.sit import SiT, FixedEmbedding, sincos_table

# ST-MEM's decoder_norm uses 1e-6 (MAE's convention). Its decoder blocks are the same block class
# as the encoder's, whose LayerNorms are PyTorch-default 1e-5: keep both as in the reference.
DECODER_NORM_EPS = 1e-6
DECODER_BLOCK_LN_EPS = 1e-5


def unshuffle(visible_tokens, mask_token, visible_idx, num_slots):
    """(B, K, W) visible tokens -> (B, num_slots, W) grid with mask_token in the hidden slots.

    A gather, not a scatter: slot s reads visible token #(rank of s among visible slots) or a mask
    token. Gathers along a batch-sharded axis partition cleanly under SPMD. Needs visible_idx
    ASCENDING per row (the batch format of crema_jax/data/pipeline/batch.py).
    """
    b, k, w = visible_tokens.shape
    slots = jnp.arange(num_slots)
    is_visible = (visible_idx[:, :, None] == slots[None, None, :]).any(axis=1)     # (B, S)
    rank_visible = jnp.cumsum(is_visible, axis=1) - 1
    rank_hidden = jnp.cumsum(~is_visible, axis=1) - 1
    source = jnp.where(is_visible, rank_visible, k + rank_hidden)                 # (B, S)
    pool = jnp.concatenate(
        [visible_tokens, jnp.broadcast_to(mask_token, (b, num_slots - k, w))], axis=1)
    return jnp.take_along_axis(pool, source[..., None], axis=1)


DECODER_VARIANTS = ("per_lead", "axial")


class MaeDecoder(nnx.Module):
    """Per-lead reconstruction (ST-MEM): each lead's N+2 tokens go through the same blocks
    separately. "axial": after each such block, a block over the L leads at each position."""

    def __init__(self, model_cfg, enc_width, *, rngs):
        w = int(model_cfg.decoder_width)
        dtype = model_config.compute_dtype(model_cfg)
        self.dtype = dtype
        self.embed = layers.dense(enc_width, w, (S.EMBED, None), dtype=dtype, rngs=rngs)
        self.mask_embedding = nnx.Param(
            jax.nn.initializers.normal(0.02)(rngs.params(), (w,)), out_sharding=(S.EMBED,))
        self.pos_embedding = FixedEmbedding(
            jnp.asarray(sincos_table(int(model_cfg.num_patches), w)),
            out_sharding=(None, None, S.EMBED))
        self.depth = int(model_cfg.decoder_depth)
        self.scan = bool(model_cfg.scan_layers)
        block_kwargs = dict(
            width=w, num_heads=int(model_cfg.decoder_num_heads),
            head_dim=int(model_cfg.decoder_head_dim),
            mlp_hidden=int(model_cfg.decoder_mlp_ratio * w), eps=DECODER_BLOCK_LN_EPS, dtype=dtype,
            boundary=layers.uses_residual_boundary(model_cfg))
        variant = model_cfg.decoder_variant
        if variant not in DECODER_VARIANTS:
            raise ValueError(f"config.model.decoder_variant={variant!r}: expected one of "
                             f"{DECODER_VARIANTS}")
        self.axial = variant == "axial"
        self.scan = self.scan and not self.axial  # axial: unrolled (a decoder is a few blocks)
        self.blocks = layers.make_blocks(self.depth, self.scan, rngs=rngs, **block_kwargs)
        self.norm = layers.layer_norm(w, eps=DECODER_NORM_EPS, dtype=dtype, rngs=rngs)
        self.head = layers.dense(w, int(model_cfg.patch_size), (S.EMBED, S.PATCH), dtype=dtype,
                                 rngs=rngs)
        self.lead_blocks, self.lead_embeddings = nnx.data(None), nnx.data(None)
        if self.axial:
            self.lead_blocks = layers.make_blocks(self.depth, False, rngs=rngs, **block_kwargs)
            self.lead_embeddings = nnx.Param(
                jax.nn.initializers.normal(0.02)(rngs.params(),
                                                 (int(model_cfg.num_lead_embeddings), w)),
                out_sharding=(S.LEADS, S.EMBED))

    def __call__(self, patch_tokens, sep_tokens, visible_idx, num_patches, lead_indices=None):
        """patch_tokens (B, K, D) and sep_tokens (B, L, 2, D) AFTER the encoder's per-token norm;
        visible_idx (B, K) ascending or None; lead_indices (B, L) canonical ids (the axial
        variant's lead embeddings). Returns (B, L, N, P) float32."""
        b, num_leads = sep_tokens.shape[:2]
        n = num_patches
        vis = self.embed(patch_tokens)
        sep = self.embed(sep_tokens)                                          # (B, L, 2, W)
        w = vis.shape[-1]
        if visible_idx is None:
            grid = vis
        else:
            grid = unshuffle(vis, self.mask_embedding[...].astype(vis.dtype), visible_idx,
                             num_leads * n)
        grid = grid.reshape(b, num_leads, n, w)
        x = jnp.concatenate([sep[:, :, :1], grid, sep[:, :, 1:]], axis=2)   # (B, L, N+2, W)
        x = x + self.pos_embedding[...].astype(x.dtype)
        if self.axial:
            x = self._axial(x, lead_indices)
        else:  # ST-MEM: no lead embeddings, leads apart
            x = layers.run_blocks(self.blocks, x.reshape(b * num_leads, n + 2, w),
                                  (0.0,) * self.depth, None, self.scan)
        x = self.head(self.norm(x)).reshape(b, num_leads, n + 2, -1)
        return x[:, :, 1:-1].astype(jnp.float32)

    def _axial(self, x, lead_indices):
        """(B, L, T, W) -> (B*L, T, W): blocks along time within each lead, each followed by a
        block along the leads at each of the T positions."""
        b, num_leads, t, w = x.shape
        if lead_indices is None:
            lead_indices = jnp.broadcast_to(jnp.arange(num_leads), (b, num_leads))
        x = x + self.lead_embeddings[...][lead_indices][:, :, None, :].astype(x.dtype)
        x = x.reshape(b * num_leads, t, w)
        for along_time, along_leads in zip(self.blocks, self.lead_blocks):
            x = along_time(x, 0.0, None)
            x = x.reshape(b, num_leads, t, w).transpose(0, 2, 1, 3).reshape(b * t, num_leads, w)
            x = along_leads(x, 0.0, None)
            x = x.reshape(b, t, num_leads, w).transpose(0, 2, 1, 3).reshape(b * num_leads, t, w)
        return x


class ProjectionHead(nnx.Module):
    """MLP on the pooled features: (Dense, GELU) x (depth-1), Dense -> proj_dim."""

    def __init__(self, model_cfg, enc_width, *, rngs):
        dtype = model_config.compute_dtype(model_cfg)
        hidden = int(model_cfg.proj_hidden_dim) or enc_width
        dims = [enc_width] + [hidden] * (int(model_cfg.proj_depth) - 1) + [int(model_cfg.proj_dim)]
        axes = [S.EMBED] + [S.MLP] * (len(dims) - 2) + [S.PROJ]
        self.layers = nnx.List([
            layers.dense(dims[i], dims[i + 1], (axes[i], axes[i + 1]), dtype=dtype, rngs=rngs)
            for i in range(len(dims) - 1)])

    def __call__(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = jax.nn.gelu(x, approximate=False)
        return x.astype(jnp.float32)


class PretrainModel(nnx.Module):
    def __init__(self, model_cfg, *, rngs):
        self.encoder = SiT(model_cfg, rngs=rngs)
        width = model_config.resolve_size(model_cfg)["width"]
        self.decoder = MaeDecoder(model_cfg, width, rngs=rngs)
        self.projector = ProjectionHead(model_cfg, width, rngs=rngs)
        # Learnable SigLIP temperature (log-space) and bias; unused by the other losses.
        self.logit_scale = nnx.Param(jnp.asarray(model_cfg.logit_scale_init, jnp.float32))
        self.logit_bias = nnx.Param(jnp.asarray(model_cfg.logit_bias_init, jnp.float32))

    def __call__(self, batch, *, rng=None):
        """batch as crema_jax/data/pipeline/batch.py's pretraining batch (view axis V). Returns
        "pred" (B,V,L,N,P), "pooled" (B,V,D), "proj" (B,V,E), "logit_scale", "logit_bias" (all
        float32)."""
        patches = batch["patches"]
        b, v, num_leads, n, p = patches.shape
        flat = patches.reshape(b * v, num_leads, n, p)
        leads = jnp.repeat(jnp.asarray(batch["lead_indices"]), v, axis=0)     # (B*V, L), b-major
        visible_idx = batch.get("visible_idx")
        if visible_idx is not None:
            visible_idx = visible_idx.reshape(b * v, -1)
        tokens, seps = self.encoder(flat, leads, visible_idx, rng=rng)
        # Pooled = ST-MEM's downstream feature (mean of the blocks' outputs, then `norm`) over
        # visible, valid patch tokens: the contrastive term shapes the very features used later.
        valid = batch.get("patch_valid")
        weights = None
        if valid is not None:
            valid = valid.reshape(b * v, num_leads * n)
            weights = valid if visible_idx is None else jnp.take_along_axis(valid, visible_idx, 1)
        pooled = self.encoder.pool(tokens, weights)
        norm = self.encoder.norm  # ST-MEM: per-token norm before the decoder.
        pred = self.decoder(norm(tokens), norm(seps), visible_idx, n, leads)
        return {
            "pred": pred.reshape(b, v, num_leads, n, p),
            "pooled": pooled.reshape(b, v, -1),
            "proj": self.projector(pooled.astype(self.encoder.dtype)).reshape(b, v, -1),
            "logit_scale": self.logit_scale[...],
            "logit_bias": self.logit_bias[...],
        }


def _merge(graphdef, state):
    """`state` is one nnx.State or a tuple of them (e.g. (params, fixed) from nnx.split)."""
    if isinstance(state, (tuple, list)):
        return nnx.merge(graphdef, *state)
    return nnx.merge(graphdef, state)


def forward(graphdef, state, batch, rng=None, *, train=True):
    """Pure forward of the pretraining model: use inside jax.jit / jax.grad.
    rng drives stochastic depth when train=True (None = deterministic)."""
    model = _merge(graphdef, state)
    return model(batch, rng=rng if train else None)


def _encoder_of(module):
    return module.encoder if hasattr(module, "encoder") else module


def encode_features(graphdef, state, patches, lead_indices, patch_valid=None):
    """Downstream (ST-MEM) features of unmasked inputs. Accepts the pretraining model's or a bare
    SiT's graphdef/state. patches (B, L, N, P) -> (B, D); (B, C, L, N, P) crops -> (B, C, D)."""
    encoder = _encoder_of(_merge(graphdef, state))
    if patches.ndim == 5:
        b, c = patches.shape[:2]
        leads = jnp.repeat(jnp.asarray(lead_indices), c, axis=0)
        valid = None if patch_valid is None else patch_valid.reshape((b * c,) + patch_valid.shape[2:])
        out = encoder.features(patches.reshape((b * c,) + patches.shape[2:]), leads, valid)
        return out.reshape(b, c, -1)
    return encoder.features(patches, jnp.asarray(lead_indices), patch_valid)


def classify(graphdef, state, patches, lead_indices, patch_valid=None, rng=None, *, train=False):
    """Fine-tuning logits head(norm(mean tokens)) (B, C); needs config.model.num_classes > 0."""
    encoder = _encoder_of(_merge(graphdef, state))
    return encoder.logits(patches, jnp.asarray(lead_indices), patch_valid,
                          rng=rng if train else None)
