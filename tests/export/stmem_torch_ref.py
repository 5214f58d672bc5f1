"""ST-MEM's encoder and pretraining model in PyTorch, written from reference-stmem.md for tests.

Independent of crema_jax: ST-MEM's key names and its lead-major token order
[lead0: SEP, p0..p29, SEP, lead1: ...] with per-lead masking (equal kept count per lead).
"""
import numpy as np
import torch
from torch import nn


def sincos(num_patches, dim):
    """(1, N+2, dim): rows 1..N sin|cos of positions 0..N-1, omega_i = 10000^(-i/(dim/2))."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2) / (dim / 2))
    ang = np.arange(num_patches)[:, None] * omega[None]
    table = np.zeros((1, num_patches + 2, dim))
    table[0, 1:-1] = np.concatenate([np.sin(ang), np.cos(ang)], 1)
    return torch.tensor(table, dtype=torch.float32)


class PreNorm(nn.Module):
    def __init__(self, dim, fn):
        super().__init__()
        self.norm, self.fn = nn.LayerNorm(dim), fn

    def forward(self, x):
        return self.fn(self.norm(x))


class Attention(nn.Module):
    def __init__(self, dim, heads, dim_head):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        self.to_qkv = nn.Linear(dim, 3 * heads * dim_head)
        # reference-stmem.md: one head as wide as the model has no output projection.
        project_out = not (heads == 1 and dim_head == dim)
        self.to_out = (nn.Sequential(nn.Linear(heads * dim_head, dim), nn.Dropout(0.0))
                       if project_out else nn.Identity())

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = (t.reshape(b, n, self.heads, self.dim_head).transpose(1, 2)
                   for t in self.to_qkv(x).chunk(3, dim=-1))
        attn = (q @ k.transpose(-1, -2) * self.dim_head ** -0.5).softmax(-1)
        return self.to_out((attn @ v).transpose(1, 2).reshape(b, n, -1))


class FeedForward(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0),
                                 nn.Linear(hidden, dim), nn.Dropout(0.0))

    def forward(self, x):
        return self.net(x)


class TransformerBlock(nn.Module):
    def __init__(self, dim, heads, dim_head, hidden):
        super().__init__()
        self.attn = PreNorm(dim, Attention(dim, heads, dim_head))
        self.ff = PreNorm(dim, FeedForward(dim, hidden))

    def forward(self, x):
        x = x + self.attn(x)
        return x + self.ff(x)


class StMemEncoder(nn.Module):
    def __init__(self, width, depth, heads, dim_head=64, mlp_ratio=4, patch=75, n=30, leads=12,
                 num_classes=0):
        super().__init__()
        self.n, self.patch, self.depth = n, patch, depth
        self.to_patch_embedding = nn.Sequential(nn.Identity(), nn.LayerNorm(patch),
                                                nn.Linear(patch, width), nn.LayerNorm(width))
        self.pos_embedding = nn.Parameter(sincos(n, width), requires_grad=False)
        self.sep_embedding = nn.Parameter(torch.randn(width) * 0.02)
        self.lead_embeddings = nn.ParameterList(
            nn.Parameter(torch.randn(width) * 0.02) for _ in range(leads))
        for i in range(depth):
            setattr(self, f"block{i}", TransformerBlock(width, heads, dim_head, mlp_ratio * width))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes) if num_classes else None

    def encode(self, patches, keep=None):
        """patches (B, L, N, P); keep (B, L, K) patch indices per lead or None.
        -> blocks' output (B, L, K+2, D), lead-major with SEPs first/last per lead."""
        b, nl, n, _ = patches.shape
        x = self.to_patch_embedding(patches) + self.pos_embedding[:, None, 1:n + 1]
        if keep is not None:
            x = torch.gather(x, 2, keep[..., None].expand(-1, -1, -1, x.shape[-1]))
        sep_start = (self.sep_embedding + self.pos_embedding[0, 0]).expand(b, nl, 1, -1)
        sep_end = (self.sep_embedding + self.pos_embedding[0, -1]).expand(b, nl, 1, -1)
        x = torch.cat([sep_start, x, sep_end], dim=2)
        lead = torch.stack(list(self.lead_embeddings))[None, :nl, None]
        x = (x + lead).reshape(b, -1, x.shape[-1])
        for i in range(self.depth):
            x = getattr(self, f"block{i}")(x)
        return x.reshape(b, nl, -1, x.shape[-1])

    def features(self, patches):
        return self.norm(self.encode(patches)[:, :, 1:-1].mean(dim=(1, 2)))

    def forward(self, patches):
        return self.head(self.features(patches))


class StMemPretrain(nn.Module):
    """Full pretraining model: keys `encoder.*`, alias `to_patch_embedding.*`, decoder."""

    def __init__(self, width, depth, heads, dec_width=256, dec_depth=4, dec_heads=4, **kw):
        super().__init__()
        self.encoder = StMemEncoder(width, depth, heads, **kw)
        self.to_patch_embedding = self.encoder.to_patch_embedding
        n, patch = self.encoder.n, self.encoder.patch
        self.to_decoder_embedding = nn.Linear(width, dec_width)
        self.mask_embedding = nn.Parameter(torch.randn(1, 1, dec_width) * 0.02)
        self.decoder_pos_embed = nn.Parameter(sincos(n, dec_width), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            TransformerBlock(dec_width, dec_heads, 64, 4 * dec_width) for _ in range(dec_depth))
        self.decoder_norm = nn.LayerNorm(dec_width, eps=1e-6)
        self.decoder_head = nn.Linear(dec_width, patch)

    def reconstruct(self, patches, keep):
        """keep (B, L, K) visible patch indices per lead -> (B, L, N, P)."""
        b, nl, n, _ = patches.shape
        x = self.encoder.norm(self.encoder.encode(patches, keep))
        x = self.to_decoder_embedding(x)                                  # (B, L, K+2, W)
        w = x.shape[-1]
        grid = self.mask_embedding.expand(b, nl * n, w).reshape(b, nl, n, w).clone()
        grid.scatter_(2, keep[..., None].expand(-1, -1, -1, w), x[:, :, 1:-1])
        x = torch.cat([x[:, :, :1], grid, x[:, :, -1:]], dim=2) + self.decoder_pos_embed
        x = x.reshape(b * nl, n + 2, w)
        for block in self.decoder_blocks:
            x = block(x)
        x = self.decoder_head(self.decoder_norm(x))
        return x.reshape(b, nl, n + 2, -1)[:, :, 1:-1]


def randomise_norms(module, seed):
    """Non-trivial LayerNorm affine params, so a swapped scale/bias cannot go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            elif isinstance(m, nn.Linear):
                m.bias.copy_(0.05 * torch.randn(m.bias.shape, generator=g))
    return module
