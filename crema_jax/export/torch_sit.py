"""The SiT in PyTorch ("crema" layout): loads `crema-jax export-torch` files, same numerics as JAX.

    from crema_jax.export.torch_sit import load_sit
    model = load_sit("sit.safetensors")            # reads sit.json beside it for the config
    feats = model.features(patches, lead_indices)   # (B, L, N, P), (B, L) -> (B, D)
    recon = model.reconstruct(patches, lead_indices, visible_idx)   # needs --include_decoder

Needs the `torch` extra (`pip install crema_jax[torch]`). Token order is the JAX model's:
[visible patch tokens..., start/end SEP of every lead]; with full attention and positions added
to the tokens this gives the same per-token outputs as ST-MEM's lead-major order.
"""
from __future__ import annotations

import json
import math
import os

from crema_jax.export import convert
from crema_jax.export.safe_load import TORCH_INSTALL_HINT

try:
    import torch
    from torch import nn
    import torch.nn.functional as F
except ImportError as _err:  # pragma: no cover - exercised only without the extra
    raise ImportError("crema_jax.export.torch_sit needs PyTorch, which is not installed: run "
                      f"`{TORCH_INSTALL_HINT}`") from _err

ENCODER_LN_EPS = 1e-5   # ST-MEM's encoder and decoder blocks (PyTorch default).
DECODER_NORM_EPS = 1e-6


class Attention(nn.Module):
    def __init__(self, width, heads, head_dim):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.qkv = nn.Linear(width, 3 * heads * head_dim)
        self.out = nn.Linear(heads * head_dim, width)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.transpose(-1, -2) * self.head_dim ** -0.5, dim=-1)
        return self.out((attn @ v).transpose(1, 2).reshape(b, t, -1))


class Mlp(nn.Module):
    def __init__(self, width, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))  # exact erf GELU


class Block(nn.Module):
    def __init__(self, width, heads, head_dim, hidden):
        super().__init__()
        self.attn_norm = nn.LayerNorm(width, eps=ENCODER_LN_EPS)
        self.attn = Attention(width, heads, head_dim)
        self.mlp_norm = nn.LayerNorm(width, eps=ENCODER_LN_EPS)
        self.mlp = Mlp(width, hidden)

    def forward(self, x):
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size, width, norms=True):
        super().__init__()
        self.in_norm = nn.LayerNorm(patch_size, eps=ENCODER_LN_EPS) if norms else None
        self.proj = nn.Linear(patch_size, width)
        self.out_norm = nn.LayerNorm(width, eps=ENCODER_LN_EPS) if norms else None

    def forward(self, x):
        if self.in_norm is None:
            return self.proj(x)
        return self.out_norm(self.proj(self.in_norm(x)))


class Encoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        w, n = c["width"], c["num_patches"]
        self.num_patches = n
        self.patch_embed = PatchEmbed(c["patch_size"], w, c.get("patch_norms", True))
        self.register_buffer("pos_embedding", torch.zeros(1, n + 2, w))
        self.sep_embedding = nn.Parameter(torch.zeros(w))
        self.lead_embeddings = nn.Parameter(torch.zeros(c["num_lead_embeddings"], w))
        # "position" (ST-MEM's rule, what import-torch --format=stmem writes): the l-th fed lead
        # gets embedding l, whatever its lead id; "canonical": the embedding of its lead id.
        self.lead_by_position = c.get("lead_embedding", "canonical") == "position"
        self.blocks = nn.ModuleList(Block(w, c["num_heads"], c["head_dim"], c["mlp_ratio"] * w)
                                    for _ in range(c["depth"]))
        self.norm = nn.LayerNorm(w, eps=ENCODER_LN_EPS)
        self.head = nn.Linear(w, c["num_classes"]) if c["num_classes"] > 0 else None

    def forward(self, patches, lead_indices, visible_idx=None):
        """-> (patch tokens (B, K, D) in visible_idx order, SEP tokens (B, L, 2, D))."""
        b, nl, n, _ = patches.shape
        pos = self.pos_embedding
        x = (self.patch_embed(patches) + pos[:, None, 1:-1]).reshape(b, nl * n, -1)
        if self.lead_by_position:
            lead_indices = torch.arange(nl, device=patches.device).expand(b, nl)
        lead_emb = self.lead_embeddings[lead_indices]                       # (B, L, D)
        token_lead = torch.arange(nl).repeat_interleave(n).expand(b, -1)
        if visible_idx is not None:
            x = torch.gather(x, 1, visible_idx[..., None].expand(-1, -1, x.shape[-1]))
            token_lead = visible_idx // n
        x = x + torch.gather(lead_emb, 1, token_lead[..., None].expand(-1, -1, x.shape[-1]))
        sep = self.sep_embedding + lead_emb[:, :, None] + pos[:, None, [0, n + 1]]
        k = x.shape[1]
        seq = torch.cat([x, sep.reshape(b, 2 * nl, -1)], dim=1)
        for block in self.blocks:
            seq = block(seq)
        return seq[:, :k], seq[:, k:].reshape(b, nl, 2, -1)


class Decoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        w, n = c["decoder_width"], c["num_patches"]
        self.embed = nn.Linear(c["width"], w)
        self.mask_embedding = nn.Parameter(torch.zeros(w))
        self.register_buffer("pos_embedding", torch.zeros(1, n + 2, w))
        self.blocks = nn.ModuleList(
            Block(w, c["decoder_num_heads"], c["decoder_head_dim"], c["decoder_mlp_ratio"] * w)
            for _ in range(c["decoder_depth"]))
        self.norm = nn.LayerNorm(w, eps=DECODER_NORM_EPS)
        self.head = nn.Linear(w, c["patch_size"])
        self.axial = c.get("decoder_variant", "per_lead") == "axial"
        if self.axial:  # a block over the leads at each position after every block
            self.lead_blocks = nn.ModuleList(
                Block(w, c["decoder_num_heads"], c["decoder_head_dim"], c["decoder_mlp_ratio"] * w)
                for _ in range(c["decoder_depth"]))
            self.lead_embeddings = nn.Parameter(torch.zeros(c["num_lead_embeddings"], w))

    def forward(self, patch_tokens, sep_tokens, visible_idx, n, lead_indices=None):
        b, nl = sep_tokens.shape[:2]
        vis, sep = self.embed(patch_tokens), self.embed(sep_tokens)
        w = vis.shape[-1]
        if visible_idx is None:
            grid = vis
        else:
            # .to: under autocast the embedded tokens are bf16 and scatter_ needs one dtype.
            grid = self.mask_embedding.to(vis.dtype).expand(b, nl * n, w).clone()
            grid.scatter_(1, visible_idx[..., None].expand(-1, -1, w), vis)
        x = torch.cat([sep[:, :, :1], grid.reshape(b, nl, n, w), sep[:, :, 1:]], dim=2)
        x = x + self.pos_embedding
        if self.axial:
            x = x + self.lead_embeddings[lead_indices][:, :, None]
        x = x.reshape(b * nl, n + 2, w)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if self.axial:
                t = n + 2
                x = x.reshape(b, nl, t, w).transpose(1, 2).reshape(b * t, nl, w)
                x = self.lead_blocks[i](x)
                x = x.reshape(b, t, nl, w).transpose(1, 2).reshape(b * nl, t, w)
        return self.head(self.norm(x)).reshape(b, nl, n + 2, -1)[:, :, 1:-1]


class Projector(nn.Module):
    def __init__(self, c):
        super().__init__()
        hidden = c["proj_hidden_dim"] or c["width"]
        dims = [c["width"]] + [hidden] * (c["proj_depth"] - 1) + [c["proj_dim"]]
        self.layers = nn.ModuleList(nn.Linear(dims[i], dims[i + 1]) for i in range(len(dims) - 1))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            x = F.gelu(x) if i < len(self.layers) - 1 else x
        return x


class CremaSiT(nn.Module):
    """config: the resolved model config written beside the weights (see export_torch)."""

    def __init__(self, config: dict, *, with_decoder: bool = False):
        super().__init__()
        self.config = dict(config)
        self.encoder = Encoder(config)
        if with_decoder:
            self.decoder = Decoder(config)
            self.projector = Projector(config)
            self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
            self.logit_bias = nn.Parameter(torch.tensor(-10.0))
        else:
            self.decoder = None

    def pool(self, patch_tokens):
        """ST-MEM's downstream features: mean over patch tokens (no SEPs), then `norm`."""
        return self.encoder.norm(patch_tokens.mean(dim=1))

    def features(self, patches, lead_indices):
        return self.pool(self.encoder(patches, lead_indices)[0])

    def logits(self, patches, lead_indices):
        if self.encoder.head is None:
            raise ValueError("this SiT has no classification head (num_classes 0)")
        return self.encoder.head(self.features(patches, lead_indices))

    def reconstruct(self, patches, lead_indices, visible_idx=None):
        """(B, L, N, P) reconstruction of every patch from the visible ones (all if None)."""
        if self.decoder is None:
            raise ValueError("this file holds the encoder only: export with --include_decoder")
        tokens, seps = self.encoder(patches, lead_indices, visible_idx)
        norm = self.encoder.norm
        return self.decoder(norm(tokens), norm(seps), visible_idx, patches.shape[2],
                            lead_indices)


def load_sit(path: str, *, config: dict | None = None) -> CremaSiT:
    """A CremaSiT from an export-torch .safetensors file (config from FILE.json if not given)."""
    from safetensors.torch import load_file

    if config is None:
        with open(os.path.splitext(path)[0] + ".json", encoding="utf-8") as f:
            config = json.load(f)["model"]
    state = load_file(path)
    model = CremaSiT(config, with_decoder=convert.holds_decoder(state))
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval()
