"""An independent PyTorch re-implementation of ST-MEM, written from reference-stmem.md, with
ST-MEM's state_dict key names. Used to check the JAX SiT/decoder numerics and tree layout."""
import torch
from torch import nn


class Attention(nn.Module):
    def __init__(self, dim, heads, head_dim):
        super().__init__()
        self.heads, self.scale = heads, head_dim ** -0.5
        self.to_qkv = nn.Linear(dim, 3 * heads * head_dim, bias=True)
        self.to_out = nn.Sequential(nn.Linear(heads * head_dim, dim), nn.Dropout(0.0))

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in (q, k, v))  # b h t d
        attn = (q @ k.transpose(-1, -2) * self.scale).softmax(dim=-1)
        return self.to_out((attn @ v).transpose(1, 2).reshape(b, t, -1))


class FeedForward(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.0),
                                 nn.Linear(hidden, dim), nn.Dropout(0.0))

    def forward(self, x):
        return self.net(x)


class PreNorm(nn.Module):
    def __init__(self, dim, fn):
        super().__init__()
        self.norm, self.fn = nn.LayerNorm(dim), fn

    def forward(self, x):
        return self.fn(self.norm(x))


class TransformerBlock(nn.Module):
    def __init__(self, dim, heads, head_dim, hidden):
        super().__init__()
        self.attn = PreNorm(dim, Attention(dim, heads, head_dim))
        self.ff = PreNorm(dim, FeedForward(dim, hidden))

    def forward(self, x):
        x = x + self.attn(x)
        return x + self.ff(x)


class StMemEncoder(nn.Module):
    def __init__(self, patch, n, dim, depth, heads, head_dim, num_leads=12, num_classes=0):
        super().__init__()
        self.depth = depth
        self.to_patch_embedding = nn.Sequential(nn.Identity(), nn.LayerNorm(patch),
                                                nn.Linear(patch, dim), nn.LayerNorm(dim))
        self.pos_embedding = nn.Parameter(torch.zeros(1, n + 2, dim), requires_grad=False)
        self.sep_embedding = nn.Parameter(torch.zeros(dim))
        self.lead_embeddings = nn.ParameterList([nn.Parameter(torch.zeros(dim))
                                                 for _ in range(num_leads)])
        for i in range(depth):
            setattr(self, f"block{i}", TransformerBlock(dim, heads, head_dim, 4 * dim))
        self.norm = nn.LayerNorm(dim)
        if num_classes:
            self.head = nn.Linear(dim, num_classes)

    def tokens(self, patches, keep=None, lead_ids=None):
        """patches (B, L, N, P); keep (B, L, k) kept patch ids per lead (any order) or None;
        lead_ids: which lead embeddings the L rows use (default 0..L-1).
        Returns the blocks' outputs (B, L, k+2, D) in ST-MEM's lead-major [SEP, patches, SEP]."""
        b, num_leads = patches.shape[:2]
        x = self.to_patch_embedding(patches) + self.pos_embedding[:, None, 1:-1]
        if keep is not None:
            x = torch.gather(x, 2, keep[..., None].expand(-1, -1, -1, x.shape[-1]))
        sep = self.sep_embedding.expand(b, num_leads, 1, -1)
        x = torch.cat([sep + self.pos_embedding[:, None, :1], x,
                       sep + self.pos_embedding[:, None, -1:]], dim=2)
        lead_ids = list(range(num_leads)) if lead_ids is None else list(lead_ids)
        x = x + torch.stack([self.lead_embeddings[i] for i in lead_ids])[None, :, None]
        t = x.shape[2]
        x = x.reshape(b, num_leads * t, -1)
        for i in range(self.depth):
            x = getattr(self, f"block{i}")(x)
        return x.reshape(b, num_leads, t, -1)

    def features(self, patches, lead_ids=None):
        return self.norm(self.tokens(patches, lead_ids=lead_ids)[:, :, 1:-1].mean(dim=(1, 2)))


class StMemPretrain(nn.Module):
    def __init__(self, encoder, patch, n, dim, dec_dim=256, dec_depth=4, dec_heads=4):
        super().__init__()
        self.encoder = encoder
        self.mask_embedding = nn.Parameter(torch.zeros(1, 1, dec_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, n + 2, dec_dim), requires_grad=False)
        self.to_decoder_embedding = nn.Linear(dim, dec_dim)
        self.decoder_blocks = nn.ModuleList([TransformerBlock(dec_dim, dec_heads, 64, 4 * dec_dim)
                                             for _ in range(dec_depth)])
        self.decoder_norm = nn.LayerNorm(dec_dim, eps=1e-6)
        self.decoder_head = nn.Linear(dec_dim, patch)

    def forward(self, patches, keep):
        """keep (B, L, k) kept patch ids per lead in ST-MEM's shuffled order."""
        b, num_leads, n, _ = patches.shape
        x = self.encoder.norm(self.encoder.tokens(patches, keep))
        x = self.to_decoder_embedding(x)                                   # (B, L, k+2, W)
        w = x.shape[-1]
        grid = self.mask_embedding.expand(b * num_leads, n, w).reshape(b, num_leads, n, w).clone()
        grid.scatter_(2, keep[..., None].expand(-1, -1, -1, w), x[:, :, 1:-1])
        x = torch.cat([x[:, :, :1], grid, x[:, :, -1:]], dim=2) + self.decoder_pos_embed[:, None]
        x = x.reshape(b * num_leads, n + 2, w)
        for block in self.decoder_blocks:
            x = block(x)
        x = self.decoder_head(self.decoder_norm(x))
        return x.reshape(b, num_leads, n + 2, -1)[:, :, 1:-1]


def stmem_loss(pred, patches, mask):
    """ST-MEM: per-patch normalised target (unbiased var, eps 1e-6), MSE, mean over masked."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True)
    target = (patches - mean) / (var + 1e-6) ** 0.5
    loss = ((pred - target) ** 2).mean(dim=-1)
    return (loss * mask).sum() / mask.sum()


def jax_to_torch_state(enc, dec=None):
    """ST-MEM state_dict from pure-dict JAX params (enc = encoder dict, dec = decoder dict)."""
    import numpy as np

    def t(x):
        return torch.tensor(np.asarray(x))

    def block(p, prefix, out):
        d = p["attn"]["qkv"]["kernel"].shape[0]
        out[f"{prefix}attn.norm.weight"] = t(p["attn_norm"]["scale"])
        out[f"{prefix}attn.norm.bias"] = t(p["attn_norm"]["bias"])
        out[f"{prefix}attn.fn.to_qkv.weight"] = t(np.asarray(p["attn"]["qkv"]["kernel"]).reshape(d, -1).T)
        out[f"{prefix}attn.fn.to_qkv.bias"] = t(np.asarray(p["attn"]["qkv"]["bias"]).reshape(-1))
        out[f"{prefix}attn.fn.to_out.0.weight"] = t(np.asarray(p["attn"]["out"]["kernel"]).reshape(-1, d).T)
        out[f"{prefix}attn.fn.to_out.0.bias"] = t(p["attn"]["out"]["bias"])
        out[f"{prefix}ff.norm.weight"] = t(p["mlp_norm"]["scale"])
        out[f"{prefix}ff.norm.bias"] = t(p["mlp_norm"]["bias"])
        out[f"{prefix}ff.fn.net.0.weight"] = t(np.asarray(p["mlp"]["fc1"]["kernel"]).T)
        out[f"{prefix}ff.fn.net.0.bias"] = t(p["mlp"]["fc1"]["bias"])
        out[f"{prefix}ff.fn.net.3.weight"] = t(np.asarray(p["mlp"]["fc2"]["kernel"]).T)
        out[f"{prefix}ff.fn.net.3.bias"] = t(p["mlp"]["fc2"]["bias"])

    sd = {"pos_embedding": t(enc["pos_embedding"]), "sep_embedding": t(enc["sep_embedding"])}
    pe = enc["patch_embed"]
    sd["to_patch_embedding.1.weight"] = t(pe["in_norm"]["scale"])
    sd["to_patch_embedding.1.bias"] = t(pe["in_norm"]["bias"])
    sd["to_patch_embedding.2.weight"] = t(np.asarray(pe["proj"]["kernel"]).T)
    sd["to_patch_embedding.2.bias"] = t(pe["proj"]["bias"])
    sd["to_patch_embedding.3.weight"] = t(pe["out_norm"]["scale"])
    sd["to_patch_embedding.3.bias"] = t(pe["out_norm"]["bias"])
    for i, row in enumerate(np.asarray(enc["lead_embeddings"])):
        sd[f"lead_embeddings.{i}"] = t(row)
    for i in sorted(enc["blocks"]):
        block(enc["blocks"][i], f"block{i}.", sd)
    sd["norm.weight"], sd["norm.bias"] = t(enc["norm"]["scale"]), t(enc["norm"]["bias"])
    if dec is None:
        return sd
    full = {f"encoder.{k}": v for k, v in sd.items()}
    full["mask_embedding"] = t(np.asarray(dec["mask_embedding"]).reshape(1, 1, -1))
    full["decoder_pos_embed"] = t(dec["pos_embedding"])
    full["to_decoder_embedding.weight"] = t(np.asarray(dec["embed"]["kernel"]).T)
    full["to_decoder_embedding.bias"] = t(dec["embed"]["bias"])
    for i in sorted(dec["blocks"]):
        block(dec["blocks"][i], f"decoder_blocks.{i}.", full)
    full["decoder_norm.weight"], full["decoder_norm.bias"] = (t(dec["norm"]["scale"]),
                                                              t(dec["norm"]["bias"]))
    full["decoder_head.weight"] = t(np.asarray(dec["head"]["kernel"]).T)
    full["decoder_head.bias"] = t(dec["head"]["bias"])
    return full
