"""Starting a run from a params-only checkpoint (import-torch's output, or any crema_jax
checkpoint named by config.train.init_from): the weights come from the checkpoint, the optimizer,
RNG and data order start fresh.

Pure host-side helpers: the architecture check, (un)stacking of scan_layers blocks, and fitting a
checkpoint's nested dict onto the run's abstract params (missing entries keep their fresh init,
mis-shaped entries are an error that lists them all).
"""
from __future__ import annotations

import numpy as np
from absl import logging

from crema_jax.models import families
from crema_jax.runtime import trees


def architecture(model_cfg) -> dict:
    """The family name and architecture fields of a model config (models/families.py), with a
    size entry resolved (size="base" and explicit width=768 etc. are the same architecture).

    A bare encoder (an encoder-only import) has the architecture of the pretraining model it
    came from: the decoder and projection head are the run's to add.
    """
    family = families.family_of(model_cfg)
    return {"name": family.name, **{k: model_cfg[k] for k in family.arch_fields},
            **family.size_fields(model_cfg)}


def check_architecture(run_cfg, ckpt_cfg, *, source: str) -> None:
    """Raises ValueError naming every config.model field where the checkpoint differs."""
    run, ckpt = architecture(run_cfg), architecture(ckpt_cfg)
    diff = [f"config.model.{k}: run {run.get(k)!r}, checkpoint {ckpt.get(k)!r}"
            for k in sorted(set(run) | set(ckpt))
            if run.get(k) != ckpt.get(k)]
    if diff:
        raise ValueError(f"{source}: the checkpoint's model architecture differs from this run's "
                         f"config.model ({'; '.join(diff)}); set config.model to the checkpoint's "
                         f"values")


# Fields that change what the weights mean without changing them: a warm start says so.
MEANING_FIELDS = ("lead_embedding",)


def meaning_changes(run_cfg, ckpt_cfg) -> list[str]:
    """"config.model.F: run X, checkpoint Y" for each of MEANING_FIELDS that differs."""
    return [f"config.model.{k}: run {run_cfg.get(k)!r}, checkpoint {ckpt_cfg.get(k)!r}"
            for k in MEANING_FIELDS if k in run_cfg and run_cfg.get(k) != ckpt_cfg.get(k)]


def fit_params(loaded: dict, template: dict, *,
               source: str) -> tuple[dict, list[str], list[str]]:
    """`loaded` (host arrays) shaped like `template` (arrays or ShapeDtypeStructs).

    Unscanned per-layer blocks {i: block} are stacked when the template holds scan_layers blocks
    (and unstacked the other way). Returns (params with template's keys, where an entry the
    checkpoint lacks is None; those "a/b/c" paths; the checkpoint's entries the template has no
    place for, which were dropped unsaid). Raises ValueError listing every mis-shaped entry.
    """
    missing, misshaped, unused = [], [], []

    def fit(tree, tmpl, path):
        if isinstance(tmpl, dict):
            if trees.is_int_keyed(tree) and tmpl and not trees.is_int_keyed(tmpl):
                tree = trees.stack(tree) if set(tree) == set(range(len(tree))) else tree
            elif (isinstance(tree, dict) and trees.is_int_keyed(tmpl) and tree
                  and not trees.is_int_keyed(tree)):
                tree = trees.unstack(tree, len(tmpl))
            tree = tree if isinstance(tree, dict) else {}
            unused.extend(f"{path}{k}" for k in tree if k not in tmpl)
            return {k: fit(tree.get(k), v, f"{path}{k}/") for k, v in tmpl.items()}
        name = path.rstrip("/")
        if tree is None:
            missing.append(name)
            return None
        value = np.asarray(tree)
        if value.shape != tuple(tmpl.shape):
            misshaped.append(f"{name}: checkpoint {value.shape}, model {tuple(tmpl.shape)}")
            return None
        return value.astype(tmpl.dtype)

    fitted = fit(loaded, template, "")
    if misshaped:
        raise ValueError(f"{source}: {len(misshaped)} parameter(s) have other shapes than this "
                         f"run's model: " + "; ".join(misshaped))
    if missing:
        logging.warning("%s holds no values for %d parameter(s); they keep their fresh init: %s",
                        source, len(missing), ", ".join(missing))
    return fitted, missing, unused


def fill_missing(fitted: dict, fresh: dict) -> dict:
    """`fitted` with its None entries taken from `fresh` (same nesting)."""
    return {k: fill_missing(v, fresh[k]) if isinstance(v, dict) else (fresh[k] if v is None else v)
            for k, v in fitted.items()}
