"""Frozen-feature extraction: backbones from checkpoints, sharded over a 1-D "data" mesh.

One jitted function (compiled once per batch shape) maps an evaluation batch
(B, C crops, L, N, P) to per-crop features (B, C, D): the backbone's parameters are replicated,
the batch is split over every available device. The batch size is rounded up to a multiple of
the device count and the pipeline pads the last batch, so no shape ever changes.

Multi-crop averaging (ST-MEM evaluates 3 crops at offsets 0/125/250): ST-MEM averages the
PREDICTIONS of its fine-tuned model. For the linear probe we average the FEATURES of the crops
instead, so the probe trains and predicts on one vector per ECG (a linear head on averaged
features equals averaged logits of the per-crop heads, before the nonlinearity); fine-tuning
averages the logits (crema_jax/evaluate/finetuning.py).

Backbones (registry BACKBONES): "sit" (the SiT encoder of a pretraining or fine-tuned
checkpoint; ST-MEM features = norm(mean of patch tokens)) and "net1d" (ECGFounder's Net1D,
time-averaged last-stage features of the whole 10 s record).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

RANDOM = "random"  # --checkpoint=random: a freshly initialised backbone (the baseline)


@dataclasses.dataclass
class Backbone:
    name: str
    graphdef: Any
    state: Any
    config: Any  # the full ConfigDict (model + data sections at least)
    apply: Callable  # (graphdef, state, patches (B,C,L,N,P), lead_indices (B,L), valid) -> (B,C,D)
    width: int


def data_mesh(devices=None) -> jax.sharding.Mesh:
    devices = jax.devices() if devices is None else list(devices)
    return jax.make_mesh((len(devices),), ("data",), axis_types=(AxisType.Auto,), devices=devices)


def round_batch(batch_size: int, mesh) -> int:
    """The smallest multiple of the mesh's device count that holds batch_size records."""
    n = mesh.devices.size
    return max(n, int(math.ceil(batch_size / n)) * n)


# ------------------------------------------------------------------------------------ backbones
def _flatten(tree, prefix=()) -> dict:
    """Nested dict -> {path of str keys: leaf} (Orbax may return list indices as str)."""
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(_flatten(v, prefix + (str(k),)))
        return out
    return {prefix: tree}


def _load_pure(state, params: dict, what: str):
    """Copy a checkpoint's nested dict into an nnx.State, naming any missing or misshapen key."""
    want, have = _flatten(nnx.to_pure_dict(state)), _flatten(params)
    missing = sorted(set(want) - set(have))
    if missing:
        raise ValueError(f"{what}: checkpoint lacks parameters {['/'.join(m) for m in missing[:5]]}"
                         f" ({len(missing)} missing); does --backbone match the checkpoint?")
    for key, target in want.items():
        if tuple(np.shape(have[key])) != tuple(target.shape):
            raise ValueError(f"{what}: parameter {'/'.join(key)} has shape {np.shape(have[key])} "
                             f"in the checkpoint, the model expects {tuple(target.shape)}")
    nested = {}
    for key, target in want.items():
        node = nested
        for k in key[:-1]:
            node = node.setdefault(int(k) if k.isdigit() else k, {})
        node[int(key[-1]) if key[-1].isdigit() else key[-1]] = jnp.asarray(have[key], target.dtype)
    nnx.replace_by_pure_dict(state, nested)
    return state


def sit_encoder(model_cfg, params: dict | None, *, seed: int = 0):
    """(graphdef, state) of a bare SiT encoder, loaded from a pretraining checkpoint's
    "encoder" subtree (or a bare-encoder checkpoint); params=None = random init.

    A head in model_cfg (num_classes > 0) that the checkpoint lacks keeps its fresh init.
    """
    from crema_jax.models import build_encoder
    encoder = build_encoder(model_cfg, rngs=nnx.Rngs(seed))
    graphdef, state = nnx.split(encoder)
    if params is None:
        return graphdef, state
    params = params.get("encoder", params)
    if "head" in nnx.to_pure_dict(state) and "head" not in params:
        fresh_head = nnx.to_pure_dict(state)["head"]
        params = {**params, "head": fresh_head}
    elif "head" not in nnx.to_pure_dict(state) and "head" in params:
        params = {k: v for k, v in params.items() if k != "head"}
    return graphdef, _load_pure(state, params, "SiT encoder")


def _sit_apply(graphdef, state, patches, lead_indices, patch_valid):
    from crema_jax.models import encode_features
    return encode_features(graphdef, state, patches, lead_indices, patch_valid)


def _net1d_apply(graphdef, state, patches, lead_indices, patch_valid):
    """Net1D sees whole crops (B*C, in_channels, T); leads the batch lacks are zero-filled."""
    del patch_valid  # a CNN has no token mask; absent leads are already zeros.
    model = nnx.merge(graphdef, state)
    b, c, num_leads = patches.shape[:3]
    x = patches.reshape(b * c, num_leads, -1)
    if model.in_channels != num_leads:
        onehot = jax.nn.one_hot(jnp.repeat(lead_indices, c, axis=0), 12, dtype=x.dtype)
        x = jnp.einsum("blc,blt->bct", onehot, x)[:, : model.in_channels]
    return model.features(x).reshape(b, c, -1)


def _model_width(state) -> int:
    return int(nnx.to_pure_dict(state)["norm"]["scale"].shape[0])


def load_sit(checkpoint: str, *, model_size: str = "tiny", seed: int = 0) -> Backbone:
    from crema_jax.train import checkpoint as ckpt
    if checkpoint == RANDOM:
        from crema_jax.train.config import default_config
        config = default_config()
        config.model.size = model_size
        params = None
    else:
        params, config, _ = ckpt.load_model_checkpoint(checkpoint)
    model_cfg = config.model.copy_and_resolve_references()
    with model_cfg.unlocked():
        model_cfg.num_classes = 0  # frozen features only; a fine-tuned head is not needed
    graphdef, state = sit_encoder(model_cfg, params, seed=seed)
    return Backbone("sit", graphdef, state, config, _sit_apply, _model_width(state))


def load_net1d(checkpoint: str, *, model_size: str = "", seed: int = 0) -> Backbone:
    from crema_jax.models.net1d import Net1D, default_net1d_config
    from crema_jax.train import checkpoint as ckpt
    if checkpoint == RANDOM:
        from crema_jax.train.config import default_config
        config = default_config()
        config.model = default_net1d_config()
        params = None
    else:
        params, config, _ = ckpt.load_model_checkpoint(checkpoint)
    model = Net1D(config.model, rngs=nnx.Rngs(seed))
    graphdef, state = nnx.split(model)
    if params is not None:
        state = _load_pure(state, params, "Net1D")
    return Backbone("net1d", graphdef, state, config, _net1d_apply,
                    int(config.model.filters[-1]))


BACKBONES = {"sit": load_sit, "net1d": load_net1d}


def load_backbone(name: str, checkpoint: str, *, model_size: str = "tiny",
                  seed: int = 0) -> Backbone:
    if name not in BACKBONES:
        raise ValueError(f"--backbone={name!r}: expected one of {sorted(BACKBONES)}")
    return BACKBONES[name](checkpoint, model_size=model_size, seed=seed)


# ------------------------------------------------------------------------------------ extraction
def make_feature_fn(backbone: Backbone, mesh):
    """jit(features) with replicated params and the batch split over the mesh's "data" axis."""
    batch = NamedSharding(mesh, P("data"))
    replicated = NamedSharding(mesh, P())

    def fn(state, patches, lead_indices, patch_valid):
        return backbone.apply(backbone.graphdef, state, patches, lead_indices, patch_valid)

    jitted = jax.jit(fn, in_shardings=(replicated, batch, batch, batch), out_shardings=batch)
    state = jax.device_put(backbone.state, replicated)
    return lambda b: jitted(state, b["patches"], b["lead_indices"], b["patch_valid"])


def extract(feature_fn, batches: Iterable[dict]) -> dict:
    """Runs feature_fn over evaluation batches; keeps real rows (the pipeline's "valid").

    Returns {"features": (n, C, D) float32 per crop, "labels": (n, K), "index": (n,) int64}.
    Dispatch is asynchronous: the next batch is read while the devices compute.
    """
    pending, out = [], {"features": [], "labels": [], "index": []}

    def collect(item):
        feats, batch = item
        keep = np.asarray(batch.get("valid", np.ones(len(batch["index"]), bool)))
        out["features"].append(np.asarray(feats, np.float32)[keep])
        out["labels"].append(np.asarray(batch["labels"])[keep])
        out["index"].append(np.asarray(batch["index"], np.int64)[keep])

    for batch in batches:
        pending.append((feature_fn(batch), batch))
        if len(pending) > 1:
            collect(pending.pop(0))
    for item in pending:
        collect(item)
    if not out["index"]:
        raise ValueError("feature extraction: the dataset yielded no readable records")
    return {k: np.concatenate(v) for k, v in out.items()}
