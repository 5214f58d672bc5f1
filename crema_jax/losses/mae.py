"""Masked-patch reconstruction losses (MAE, ST-MEM)."""
import jax.numpy as jnp

NORM_PIX_EPS = 1e-6  # ST-MEM/MAE: (x - mean) / sqrt(var + 1e-6)


def normalise_patches(patches):
    """Per-patch standardisation over the last axis with the UNBIASED variance (ddof=1), as
    ST-MEM's PyTorch `.var(dim=-1)`."""
    x = patches.astype(jnp.float32)
    mean = x.mean(axis=-1, keepdims=True)
    var = x.var(axis=-1, keepdims=True, ddof=1)
    return (x - mean) / jnp.sqrt(var + NORM_PIX_EPS)


def masked_mse(pred, patches, weights, *, norm_pix_loss):
    """Mean over weighted patches of the per-patch MSE over its samples.
    pred/patches (..., P); weights (...) bool/float; returns (loss, number of patches)."""
    target = normalise_patches(patches) if norm_pix_loss else patches.astype(jnp.float32)
    per_patch = jnp.mean(jnp.square(pred.astype(jnp.float32) - target), axis=-1)
    w = weights.astype(jnp.float32)
    count = w.sum()
    return (per_patch * w).sum() / jnp.maximum(count, 1.0), count


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
