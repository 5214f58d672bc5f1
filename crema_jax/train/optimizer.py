"""AdamW with ST-MEM's recipe: lr = base_lr x global_batch / 256, linear warm-up, per-step cosine.

Only trainable nnx.Param values reach the optimizer; the fixed sin-cos position tables are a
separate Variable type and are never updated. Gradient accumulation lives in the train step (a
scan over micro-batches), so one optimizer step = one logged step = one schedule step.
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
    decay_steps = max(total_steps, warmup + 1)  # optax counts warm-up inside decay_steps.
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak, warmup_steps=warmup, decay_steps=decay_steps,
        end_value=float(optim_cfg.min_lr))


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


def make_optimizer(optim_cfg, *, global_batch: int, total_steps: int):
    """(optax transformation, lr schedule) from config.optim."""
    if optim_cfg.name != "adamw":
        raise ValueError(f"config.optim.name={optim_cfg.name!r}: only 'adamw' is implemented")
    schedule = make_schedule(optim_cfg, global_batch=global_batch, total_steps=total_steps)
    b1, b2 = (float(b) for b in optim_cfg.betas)
    adamw = optax.adamw(
        schedule, b1=b1, b2=b2, eps=float(optim_cfg.eps),
        weight_decay=float(optim_cfg.weight_decay),
        mask=weight_decay_mask if optim_cfg.decay_mask else None)
    parts = []
    if float(optim_cfg.grad_clip_norm) > 0:
        parts.append(optax.clip_by_global_norm(float(optim_cfg.grad_clip_norm)))
    parts.append(adamw)
    return optax.chain(*parts), schedule
