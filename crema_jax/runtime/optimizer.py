"""The one optimizer of pretraining and fine-tuning: AdamW with a linear warm-up from 0 then a
per-step cosine, optional global-norm clipping and optional per-parameter lr multipliers
(fine-tuning's layer-wise decay).

Pretraining follows ST-MEM's recipe from config.optim (lr = base_lr x global_batch / 256); the
fine-tuning recipe calls `adamw` with its own rate and multipliers. Only trainable nnx.Param
values reach the optimizer; the fixed sin-cos position tables are a separate Variable type and
are never updated. Gradient accumulation lives in the train step (a scan over micro-batches), so
one optimizer step = one logged step = one schedule step.
"""
from __future__ import annotations

import jax
import optax


def scaled_learning_rate(optim_cfg, global_batch: int) -> float:
    """The peak lr. ST-MEM/MAE scale linearly with batch: base_lr x global_batch / 256."""
    base = float(optim_cfg.base_lr)
    if optim_cfg.scale_lr_with_batch:
        return base * global_batch / 256.0
    return base


def make_schedule(optim_cfg, *, global_batch: int, total_steps: int) -> optax.Schedule:
    """Linear warm-up from 0, then cosine down to min_lr at total_steps (both per step)."""
    peak = scaled_learning_rate(optim_cfg, global_batch)
    warmup = int(optim_cfg.warmup_steps)
    if warmup < 0 or total_steps <= 0:
        raise ValueError(f"config.optim.warmup_steps={warmup} / config.train.num_steps="
                         f"{total_steps}: expected warm-up >= 0 and a positive step count")
    return warmup_cosine(peak, warmup_steps=warmup, total_steps=total_steps,
                         end_value=float(optim_cfg.min_lr))


def warmup_cosine(peak: float, *, warmup_steps: int, total_steps: int,
                  end_value: float = 0.0) -> optax.Schedule:
    """0 -> peak linearly over warmup_steps, then cosine down to end_value at total_steps."""
    decay_steps = max(total_steps, warmup_steps + 1)  # optax counts warm-up inside decay_steps.
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=warmup_steps, decay_steps=decay_steps,
        end_value=end_value)


_NO_DECAY_LEAVES = ("bias", "scale")          # LayerNorm scale/bias and every Linear bias.
_NO_DECAY_NAMES = ("embedding", "token", "sep")  # SEP, lead, mask embeddings (ViT practice).


def weight_decay_mask(params) -> dict:
    """True where weight decay applies: matrices, except embedding tables and tokens.

    Used only when config.optim.decay_mask is on; ST-MEM decays every trained parameter.
    """
    def decays(path, leaf) -> bool:
        names = [str(getattr(k, "key", getattr(k, "name", k))).lower() for k in path]
        if getattr(leaf, "ndim", 0) <= 1 or (names and names[-1] in _NO_DECAY_LEAVES):
            return False
        is_kernel = bool(names) and names[-1] == "kernel"
        return is_kernel or not any(tag in n for n in names for tag in _NO_DECAY_NAMES)
    return jax.tree_util.tree_map_with_path(decays, params)


def scale_by_tree(scales) -> optax.GradientTransformation:
    """Multiply each update by its entry of a fixed tree (layer-wise lr decay, incl. weight decay,
    which AdamW also scales by the lr: the same as per-group lrs in PyTorch/timm)."""
    def init(params):
        del params
        return optax.EmptyState()

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, s: u * s.astype(u.dtype), updates, scales), state

    return optax.GradientTransformation(init, update)


def adamw(schedule, *, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float,
          decay_mask: bool = False, grad_clip_norm: float = 0.0, lr_scales=None):
    """clip (if grad_clip_norm > 0) -> AdamW(schedule) -> per-parameter lr multipliers (if a
    `lr_scales` tree is given). decay_mask: weight decay only where `weight_decay_mask` says."""
    b1, b2 = (float(b) for b in betas)
    parts = []
    if float(grad_clip_norm) > 0:
        parts.append(optax.clip_by_global_norm(float(grad_clip_norm)))
    parts.append(optax.adamw(schedule, b1=b1, b2=b2, eps=float(eps),
                             weight_decay=float(weight_decay),
                             mask=weight_decay_mask if decay_mask else None))
    if lr_scales is not None:
        parts.append(scale_by_tree(lr_scales))
    return optax.chain(*parts)


def make_optimizer(optim_cfg, *, global_batch: int, total_steps: int):
    """(optax transformation, lr schedule) of pretraining, from config.optim."""
    if optim_cfg.name != "adamw":
        raise ValueError(f"config.optim.name={optim_cfg.name!r}: only 'adamw' is implemented")
    schedule = make_schedule(optim_cfg, global_batch=global_batch, total_steps=total_steps)
    tx = adamw(schedule, betas=optim_cfg.betas, eps=optim_cfg.eps,
               weight_decay=optim_cfg.weight_decay, decay_mask=bool(optim_cfg.decay_mask),
               grad_clip_norm=optim_cfg.grad_clip_norm)
    return tx, schedule
