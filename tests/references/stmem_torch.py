"""ST-MEM's encoder, pretraining model and loss in PyTorch, written from docs/reference/stmem.md
for tests only.

Independent of crema_jax: ST-MEM's state_dict key names, its lead-major token order
[lead0: SEP, p0..p29, SEP, lead1: ...] and its per-lead masking (the same kept count per lead).
`jax_to_torch_state` maps crema_jax parameters onto these keys by hand, so a test can load the
JAX weights here without going through crema_jax's own export code.
"""
import numpy as np
import torch
from torch import nn


def sincos(num_patches, dim):
    """(1, N+2, dim): rows 1..N sin|cos of positions 0..N-1, omega_i = 10000^(-i/(dim/2));
    rows 0 and N+1 (the SEP slots) zero."""
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
        # One head as wide as the model has no output projection in ST-MEM.
        project_out = not (heads == 1 and dim_head == dim)
        self.to_out = (nn.Sequential(nn.Linear(heads * dim_head, dim), nn.Dropout(0.0))
                       if project_out else nn.Identity())

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = (t.reshape(b, n, self.heads, self.dim_head).transpose(1, 2)  # b h n d
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
    """ST-MEM's encoder; `forward` gives the logits of its classification head (num_classes>0)."""

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

    def tokens(self, patches, keep=None, lead_ids=None):
        """patches (B, L, N, P); keep (B, L, K) kept patch indices per lead (any order) or None;
        lead_ids: the lead embeddings the L rows take (default 0..L-1: by position, as ST-MEM).
        -> the blocks' output (B, L, K+2, D), lead-major with SEPs first/last per lead."""
        b, nl, n, _ = patches.shape
        x = self.to_patch_embedding(patches) + self.pos_embedding[:, None, 1:n + 1]
        if keep is not None:
            x = torch.gather(x, 2, keep[..., None].expand(-1, -1, -1, x.shape[-1]))
        sep_start = (self.sep_embedding + self.pos_embedding[0, 0]).expand(b, nl, 1, -1)
        sep_end = (self.sep_embedding + self.pos_embedding[0, -1]).expand(b, nl, 1, -1)
        x = torch.cat([sep_start, x, sep_end], dim=2)
        lead_ids = range(nl) if lead_ids is None else lead_ids
        lead = torch.stack([self.lead_embeddings[i] for i in lead_ids])[None, :, None]
        x = (x + lead).reshape(b, -1, x.shape[-1])
        for i in range(self.depth):
            x = getattr(self, f"block{i}")(x)
        return x.reshape(b, nl, -1, x.shape[-1])

    def features(self, patches, lead_ids=None):
        """Downstream features: SEPs dropped, mean over every (lead, patch) token, `norm`."""
        return self.norm(self.tokens(patches, lead_ids=lead_ids)[:, :, 1:-1].mean(dim=(1, 2)))

    def forward(self, patches):
        return self.head(self.features(patches))


class StMemPretrain(nn.Module):
    """Full pretraining model: keys `encoder.*`, the alias `to_patch_embedding.*`, the decoder."""

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
        """keep (B, L, K) visible patch indices per lead (any order) -> (B, L, N, P). Each lead's
        tokens go through the decoder blocks on their own (no cross-lead attention)."""
        b, nl, n, _ = patches.shape
        x = self.encoder.norm(self.encoder.tokens(patches, keep))
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


def stmem_loss(pred, patches, mask):
    """ST-MEM: per-patch normalised target (unbiased var, eps 1e-6), MSE, mean over masked."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    target = (patches - mean) / (var + 1e-6) ** 0.5
    loss = ((pred - target) ** 2).mean(dim=-1)
    return (loss * mask).sum() / mask.sum()


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


def _tensor(x):
    return torch.tensor(np.asarray(x))


def _block_state(p, prefix, out):
    """One pre-norm block of crema_jax's pure-dict params under ST-MEM's `prefix` keys."""
    d = p["attn"]["qkv"]["kernel"].shape[0]
    out[f"{prefix}attn.norm.weight"] = _tensor(p["attn_norm"]["scale"])
    out[f"{prefix}attn.norm.bias"] = _tensor(p["attn_norm"]["bias"])
    out[f"{prefix}attn.fn.to_qkv.weight"] = _tensor(
        np.asarray(p["attn"]["qkv"]["kernel"]).reshape(d, -1).T)
    out[f"{prefix}attn.fn.to_qkv.bias"] = _tensor(np.asarray(p["attn"]["qkv"]["bias"]).reshape(-1))
    out[f"{prefix}attn.fn.to_out.0.weight"] = _tensor(
        np.asarray(p["attn"]["out"]["kernel"]).reshape(-1, d).T)
    out[f"{prefix}attn.fn.to_out.0.bias"] = _tensor(p["attn"]["out"]["bias"])
    out[f"{prefix}ff.norm.weight"] = _tensor(p["mlp_norm"]["scale"])
    out[f"{prefix}ff.norm.bias"] = _tensor(p["mlp_norm"]["bias"])
    out[f"{prefix}ff.fn.net.0.weight"] = _tensor(np.asarray(p["mlp"]["fc1"]["kernel"]).T)
    out[f"{prefix}ff.fn.net.0.bias"] = _tensor(p["mlp"]["fc1"]["bias"])
    out[f"{prefix}ff.fn.net.3.weight"] = _tensor(np.asarray(p["mlp"]["fc2"]["kernel"]).T)
    out[f"{prefix}ff.fn.net.3.bias"] = _tensor(p["mlp"]["fc2"]["bias"])


def jax_to_torch_state(enc, dec=None):
    """ST-MEM state_dict from pure-dict JAX params (enc = encoder dict, dec = decoder dict):
    the encoder's keys, or with `dec` the full pretraining model's (alias included)."""
    sd = {"pos_embedding": _tensor(enc["pos_embedding"]),
          "sep_embedding": _tensor(enc["sep_embedding"])}
    pe = enc["patch_embed"]
    sd["to_patch_embedding.1.weight"] = _tensor(pe["in_norm"]["scale"])
    sd["to_patch_embedding.1.bias"] = _tensor(pe["in_norm"]["bias"])
    sd["to_patch_embedding.2.weight"] = _tensor(np.asarray(pe["proj"]["kernel"]).T)
    sd["to_patch_embedding.2.bias"] = _tensor(pe["proj"]["bias"])
    sd["to_patch_embedding.3.weight"] = _tensor(pe["out_norm"]["scale"])
    sd["to_patch_embedding.3.bias"] = _tensor(pe["out_norm"]["bias"])
    for i, row in enumerate(np.asarray(enc["lead_embeddings"])):
        sd[f"lead_embeddings.{i}"] = _tensor(row)
    for i in sorted(enc["blocks"]):
        _block_state(enc["blocks"][i], f"block{i}.", sd)
    sd["norm.weight"], sd["norm.bias"] = _tensor(enc["norm"]["scale"]), _tensor(enc["norm"]["bias"])
    if dec is None:
        return sd
    full = {f"encoder.{k}": v for k, v in sd.items()}
    full.update({k: v for k, v in sd.items() if k.startswith("to_patch_embedding.")})
    full["mask_embedding"] = _tensor(np.asarray(dec["mask_embedding"]).reshape(1, 1, -1))
    full["decoder_pos_embed"] = _tensor(dec["pos_embedding"])
    full["to_decoder_embedding.weight"] = _tensor(np.asarray(dec["embed"]["kernel"]).T)
    full["to_decoder_embedding.bias"] = _tensor(dec["embed"]["bias"])
    for i in sorted(dec["blocks"]):
        _block_state(dec["blocks"][i], f"decoder_blocks.{i}.", full)
    full["decoder_norm.weight"] = _tensor(dec["norm"]["scale"])
    full["decoder_norm.bias"] = _tensor(dec["norm"]["bias"])
    full["decoder_head.weight"] = _tensor(np.asarray(dec["head"]["kernel"]).T)
    full["decoder_head.bias"] = _tensor(dec["head"]["bias"])
    return full
