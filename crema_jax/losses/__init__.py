"""Losses: pure functions `loss(outputs, batch, *, hyperparams) -> (scalar, metrics)` and the
LOSSES registry. A new loss is one function plus one `register_loss` call (or dict line).

`get_loss(config.loss)` binds a loss's keyword-only hyperparameters from the config.loss fields
of the same name (`bind`). A loss composed of others takes them as functions: a keyword-only
parameter named in LOSS_VALUED (e.g. crema's `contrastive`) is given the registered loss that
config field names, itself bound by the same rule."""
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
# Keyword parameters whose config value is the NAME of another registered loss.
LOSS_VALUED = ("contrastive",)
# The parts of the pretraining model each loss trains: a decoder no loss term reaches stays at
# its random init (its reconstructions mean nothing), likewise a projection head. The
# evaluators report only what the loss trains; a registered loss says what it trains.
PARTS = ("decoder", "projector")
TRAINS = {"mae": ("decoder",), "stmem": ("decoder",), "infonce": ("projector",),
          "simclr": ("projector",), "siglip": ("projector",), "crema": PARTS}


def trained_parts(loss_cfg) -> dict:
    """{"decoder": bool, "projector": bool}: whether config.loss trains the MAE decoder and the
    contrastive projection head (crema with contrastive_weight 0 trains no projection head)."""
    name = loss_cfg["name"]
    weight = float(loss_cfg.get("contrastive_weight", 1.0)) if name == "crema" else 1.0
    parts = TRAINS.get(name, ())
    return {"decoder": "decoder" in parts, "projector": "projector" in parts and weight != 0}


def uses_norm_pix(loss_cfg) -> bool:
    """Whether config.loss's reconstruction targets are patches standardised per patch (its
    predictions are in those units): always for stmem (ST-MEM's objective), else as
    norm_pix_loss says (mae, crema's mae term)."""
    return bool(loss_cfg["norm_pix_loss"]) or loss_cfg["name"] == "stmem"


def untrained(loss_cfg, part: str) -> str:
    """Why the evaluators leave `part` of the model out, for their notes."""
    name = loss_cfg["name"]
    if name in TRAINS:
        return f"loss {name!r} trains no {part}"
    return (f"loss {name!r} was registered without trains= (register_loss(..., "
            f"trains=({part!r},)) has the evaluators report on its {part})")


def register_loss(name, fn, *, trains=None):
    """Add `fn(outputs, batch, *, ...) -> (loss, metrics)` under `name`; returns fn. `trains`:
    the parts of the pretraining model its terms reach, among PARTS ("decoder": it reads
    outputs["pred"]; "projector": outputs["proj"]), which the evaluators then report on (a
    registered L1 reconstruction loss had been reported as training no decoder). Without it
    the evaluators report on neither part and say so, and one view per ECG is allowed."""
    if trains is not None and (isinstance(trains, str)
                               or any(part not in PARTS for part in trains)):
        raise ValueError(f"register_loss({name!r}, trains={trains!r}): expected a tuple of "
                         f"parts among {PARTS}")
    LOSSES[name] = fn
    TRAINS.pop(name, None)
    if trains is not None:
        TRAINS[name] = tuple(trains)
    return fn


def _lookup(name, field):
    if name not in LOSSES:
        raise ValueError(f"config.loss.{field}={name!r}: expected one of {sorted(LOSSES)}")
    return LOSSES[name]


def bind(fn, loss_cfg, *, _outer=()):
    """`fn` with every keyword-only hyperparameter that loss_cfg has a field of the same name for
    (fields it does not take are ignored; missing ones keep the function's default)."""
    kwargs = {}
    for key, param in inspect.signature(fn).parameters.items():
        if param.kind is not inspect.Parameter.KEYWORD_ONLY or key not in loss_cfg:
            continue
        value = loss_cfg[key]
        if key in LOSS_VALUED:
            inner = _lookup(value, key)
            if inner is fn or inner in _outer:
                raise ValueError(f"config.loss.{key}={value!r}: a loss cannot contain itself")
            value = bind(inner, loss_cfg, _outer=_outer + (fn,))
        kwargs[key] = value
    return functools.partial(fn, **kwargs)


def get_loss(loss_cfg):
    """LOSSES[loss_cfg.name], bound to loss_cfg (see `bind`)."""
    return bind(_lookup(loss_cfg["name"], "name"), loss_cfg)


__all__ = ["LOSSES", "CONTRASTIVE", "LOSS_VALUED", "PARTS", "TRAINS",
           "trained_parts", "uses_norm_pix", "untrained", "register_loss", "bind", "get_loss",
           "default_loss_config", "mae", "stmem", "infonce", "simclr", "siglip", "crema"]
