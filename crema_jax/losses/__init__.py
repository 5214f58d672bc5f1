"""Losses: pure functions `loss(outputs, batch, *, hyperparams) -> (scalar, metrics)` and the
LOSSES registry. A new loss is one function plus one `register_loss` call (or dict line); its
keyword-only hyperparameters are bound from config.loss fields of the same name by `get_loss`."""
import functools
import inspect

from crema_jax.losses.config import default_loss_config
from crema_jax.losses.contrastive import CONTRASTIVE, infonce, siglip, simclr
from crema_jax.losses.crema import crema
from crema_jax.losses.mae import mae, stmem

LOSSES = {
    "mae": mae,          # MSE on masked patches of every view (lambda = 0)
    "stmem": stmem,      # ST-MEM exactly: normalised targets, view 0
    "infonce": infonce,  # contrastive only, symmetric InfoNCE between the two views
    "simclr": simclr,    # contrastive only, classic NT-Xent (2B-1 candidates)
    "siglip": siglip,    # contrastive only, pairwise sigmoid, learnable temperature/bias
    "crema": crema,      # mae + lambda * contrastive (config.loss.contrastive)
}


def register_loss(name, fn):
    """Add `fn(outputs, batch, *, ...) -> (loss, metrics)` under `name`; returns fn (decorator-
    friendly via functools.partial(register_loss, name))."""
    LOSSES[name] = fn
    return fn


def get_loss(loss_cfg):
    """LOSSES[loss_cfg.name] with its keyword-only hyperparameters bound from loss_cfg fields of
    the same name (fields it does not take are ignored; missing ones keep the function default)."""
    name = loss_cfg["name"]
    if name not in LOSSES:
        raise ValueError(f"config.loss.name={name!r}: expected one of {sorted(LOSSES)}")
    fn = LOSSES[name]
    params = inspect.signature(fn).parameters
    kwargs = {k: loss_cfg[k] for k, p in params.items()
              if p.kind is inspect.Parameter.KEYWORD_ONLY and k in loss_cfg}
    return functools.partial(fn, **kwargs)


__all__ = ["LOSSES", "CONTRASTIVE", "register_loss", "get_loss", "default_loss_config", "mae",
           "stmem", "infonce", "simclr", "siglip", "crema"]
