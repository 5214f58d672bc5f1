"""config.model defaults and the model-size registry.

`default_model_config()` is composed into the full training config by crema_jax/config.py.
Architecture numbers that are not a size choice follow ST-MEM (docs/reference/stmem.md), so a model
configured with `size="base"` is exactly ST-MEM's ViT-B/75 and its PyTorch checkpoints load.
"""
import math

import ml_collections

# Encoder sizes: width, depth, heads, head_dim. small/base/large follow ViT-S/B/L; every ST-MEM
# head has 64 dims. tiny exists only so tests and CPU smoke runs compile in seconds.
SIZES = {
    "tiny": dict(width=64, depth=2, num_heads=2, head_dim=32),
    "small": dict(width=384, depth=12, num_heads=6, head_dim=64),
    "base": dict(width=768, depth=12, num_heads=12, head_dim=64),
    "large": dict(width=1024, depth=24, num_heads=16, head_dim=64),
}


def default_model_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    # The model (models/families.py): "sit_pretrain" (SiT encoder + MAE decoder + projection
    # head), "sit_encoder" (the bare SiT encoder) or "net1d" (the ECGFounder baseline).
    c.name = "sit_pretrain"
    c.size = "base"             # key of SIZES; ST-MEM's released weights are ViT-B/75.
    # Explicit overrides of the size entry; 0 = take it from SIZES[size].
    c.width = 0
    c.depth = 0
    c.num_heads = 0
    c.head_dim = 0
    c.mlp_ratio = 4             # ViT/ST-MEM: MLP hidden = 4 * width.
    c.patch_size = 75           # samples per patch at 250 Hz (0.3 s), ST-MEM.
    c.num_patches = 30          # patches per lead: 2250-sample crops / 75.
    c.num_lead_embeddings = 12  # one learned vector per canonical lead id (I..V6).
    # Which lead embedding a fed lead gets: "canonical" = the one of its lead id (lead II gets
    # II's, whatever else is fed; ours) | "position" = the one of its row, as ST-MEM's downstream
    # models do (a model fed [II] alone uses the embedding trained for lead I).
    c.lead_embedding = "canonical"
    # ST-MEM's patch embedding is LayerNorm(P) -> Dense -> LayerNorm(D): both norms remove a
    # patch's scale (and the first its offset), so the encoder never sees how large a visible
    # wave is. False (a CREMA variant) keeps the Dense alone: the z-scored samples' amplitudes
    # reach the encoder, which reconstruction in signal units needs.
    c.patch_norms = True
    c.num_classes = 0           # > 0 adds ST-MEM's `head` (norm -> Dense(width -> C)).
    c.drop_path = 0.0           # stochastic depth, max rate (linear over depth, timm style).
    c.dtype = "float32"         # compute dtype ("float32" | "bfloat16"); params stay float32.
    c.scan_layers = False       # nnx.scan over stacked blocks: flat compile time at depth 24.
    # layers.residual_boundary between blocks: an XLA:CPU workaround ("on"), a plain identity
    # ("off"), or "auto" = on when the program is compiled for CPU devices (the trainer decides by
    # its mesh's devices, so a TPU dry run compiled on a CPU host gets "off").
    c.residual_boundary = "auto"
    # MAE decoder (ST-MEM: 256 wide, 4 blocks of 4 heads x 64, MLP 1024).
    c.decoder_width = 256
    c.decoder_depth = 4
    c.decoder_num_heads = 4
    c.decoder_head_dim = 64
    c.decoder_mlp_ratio = 4
    # "per_lead" (ST-MEM): each lead's tokens are decoded alone, so a hidden patch sees only its
    # own lead. "axial" (a CREMA variant): every decoder block is followed by a block over the
    # leads at the same patch position (with decoder lead embeddings), so a hidden patch reads
    # the same instant in the visible leads: the 12 leads are projections of one cardiac dipole.
    c.decoder_variant = "per_lead"
    # Projection head for the contrastive term, on the pooled features. SimCLR's head: 2 layers,
    # hidden = feature width, 128 outputs (a small output keeps the contrastive geometry from
    # constraining every feature dimension).
    c.proj_depth = 2
    c.proj_hidden_dim = 0       # 0 = encoder width.
    c.proj_dim = 128
    # SigLIP's learnable temperature and bias (Zhai et al. 2023 init: t' = log 10, b = -10).
    c.logit_scale_init = math.log(10.0)
    c.logit_bias_init = -10.0
    return c


def resolve_size(model_cfg) -> dict:
    """Width/depth/heads/head_dim of `model_cfg`: SIZES[size] with non-zero overrides applied."""
    if model_cfg.size not in SIZES:
        raise ValueError(
            f"config.model.size={model_cfg.size!r}: expected one of {sorted(SIZES)}")
    out = dict(SIZES[model_cfg.size])
    for key in out:
        value = model_cfg[key]
        if value:
            out[key] = int(value)
    return out


def compute_dtype(model_cfg):
    import jax.numpy as jnp
    dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
    if model_cfg.dtype not in dtypes:
        raise ValueError(f"config.model.dtype={model_cfg.dtype!r}: expected one of {sorted(dtypes)}")
    return dtypes[model_cfg.dtype]
