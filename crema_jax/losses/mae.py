"""Masked-patch reconstruction losses (MAE, ST-MEM).

`normalise_patches` and `masked_mse` are written once for two array namespaces: jax.numpy in
float32 (the training loss) and numpy in float64 (the held-back reconstruction figures of
evaluate/reconstruction.py, which must mean the same thing).
"""
import jax.numpy as jnp
import numpy as np

NORM_PIX_EPS = 1e-6  # ST-MEM/MAE: (x - mean) / sqrt(var + 1e-6)


def _float(xp):
    return np.float64 if xp is np else jnp.float32


def normalise_patches(patches, *, xp=jnp):
    """Per-patch standardisation over the last axis with the UNBIASED variance (ddof=1), as
    ST-MEM's PyTorch `.var(dim=-1)`. xp: jax.numpy (float32) or numpy (float64)."""
    x = patches.astype(_float(xp))
    mean = x.mean(axis=-1, keepdims=True)
    var = x.var(axis=-1, keepdims=True, ddof=1)
    return (x - mean) / xp.sqrt(var + NORM_PIX_EPS)


def masked_mse(pred, patches, weights, *, norm_pix_loss, xp=jnp):
    """Mean over weighted patches of the per-patch MSE over its samples.
    pred/patches (..., P); weights (...) bool/float; returns (loss, number of patches).
    xp: jax.numpy (float32) or numpy (float64)."""
    dtype = _float(xp)
    target = normalise_patches(patches, xp=xp) if norm_pix_loss else patches.astype(dtype)
    per_patch = xp.mean(xp.square(pred.astype(dtype) - target), axis=-1)
    w = weights.astype(dtype)
    count = w.sum()
    return (per_patch * w).sum() / xp.maximum(count, 1.0), count


def _weights(batch):
    mask = batch["mask"]
    if "patch_valid" in batch:  # padding and absent leads are never reconstruction targets
        mask = mask & batch["patch_valid"]
    return mask


def mae(outputs, batch, *, norm_pix_loss=True):
    """MSE on masked (and valid) patches of every view, averaged over those patches."""
    loss, count = masked_mse(outputs["pred"], batch["patches"], _weights(batch),
                             norm_pix_loss=norm_pix_loss)
    return loss, {"loss/mae": loss, "mae/masked_patches": count}


def stmem(outputs, batch):
    """ST-MEM's objective exactly: normalised-target MSE on the masked patches of view 0."""
    loss, count = masked_mse(outputs["pred"][:, 0], batch["patches"][:, 0],
                             _weights(batch)[:, 0], norm_pix_loss=True)
    return loss, {"loss/mae": loss, "mae/masked_patches": count}
