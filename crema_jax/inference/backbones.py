"""Trained models applied to evaluation batches: the one model path of probe, finetune, embed and
predict.

A backbone is a checkpoint's model (or a fresh one: --checkpoint=random) plus what it expects of
its input. What a kind of model is lives in its family (models/families.py); the runner of a
family (RUNNERS, keyed by family name) says how to apply one:
- `data_config`: the data section its batches are built with (rate, crop, patch, preprocessing,
  number of evaluation crops);
- `build`: the nnx module holding the checkpoint's params (a SiT encoder, optionally with a
  classification head; Net1D);
- `features` / `logits`: per-crop outputs (B, C, D) / (B, C, classes) of an evaluation batch
  (crema_jax/data/pipeline/batch.py).

Crop averaging: the linear probe and `embed` average the crops' FEATURES (one vector per ECG; a
linear head on averaged features equals the average of the per-crop heads' logits); fine-tuning
and `embed --logits` / `predict` average the crops' LOGITS (ST-MEM averages predictions).

Everything is jitted once per batch shape and sharded over the data-parallel mesh of the
available devices (runtime/mesh.py make_mesh()): parameters replicated, the batch split (its size
rounded up to a multiple of the device count; the pipeline pads the last batch).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from crema_jax import config as config_lib
from crema_jax import models
from crema_jax.data import presets
from crema_jax.data.pipeline import batch as batch_lib
from crema_jax.data.reading.leads import LEADS
from crema_jax.models import families
from crema_jax.models import params as params_lib
from crema_jax.runtime import mesh as mesh_lib

RANDOM = "random"  # --checkpoint=random: a freshly initialised backbone (the baseline)


# ------------------------------------------------------------------------------------ runners
class SitRunner:
    """The SiT encoder of a pretraining or fine-tuned checkpoint; ST-MEM features =
    norm(mean of the valid patch tokens), the crops of the checkpoint's own data section."""

    family = families.SIT

    def data_config(self, config, preset=None):
        """The checkpoint's own data path, or `preset` applied to it."""
        cfg = config.data.copy_and_resolve_references()
        if preset is None:
            return cfg
        cfg = presets.apply(cfg, preset)
        patch, count = int(config.model.patch_size), int(config.model.num_patches)
        if (cfg.patch_size, cfg.crop_samples) != (patch, patch * count):
            # (it had failed in the model: "patches have 1 patches per lead")
            raise ValueError(
                f"--preset={preset} cuts crops of {cfg.crop_samples} samples in patches of "
                f"{cfg.patch_size}, but this SiT reads {count} patches of {patch} samples "
                f"({count * patch}) a lead: that data path does not fit this model (without "
                "--preset, the checkpoint's own data path is used)")
        return cfg

    def build(self, config, params, *, seed: int, num_classes: int = 0, drop_path: float = 0.0):
        """(graphdef, state) of a bare encoder; params None = random init. A head of
        num_classes (0 = none) that the checkpoint lacks keeps its fresh init."""
        cfg = self.family.encoder_config(config.model, num_classes=num_classes,
                                         drop_path=drop_path)
        graphdef, state = nnx.split(models.build_model(cfg, rngs=nnx.Rngs(seed)))
        if params is None:
            return graphdef, state
        params = self.family.encoder_params(params)
        fresh = nnx.to_pure_dict(state)
        if "head" in fresh and "head" not in params:
            params["head"] = fresh["head"]
        elif "head" not in fresh:
            params.pop("head", None)
        return graphdef, params_lib.fill_state(state, params, "SiT encoder")

    def features(self, graphdef, state, batch):
        return models.encode_features(graphdef, state, batch["patches"], batch["lead_indices"],
                                      batch["patch_valid"])

    def logits(self, graphdef, state, batch, rng=None):
        b, c = batch["patches"].shape[:2]
        flat = lambda x: x.reshape((b * c,) + x.shape[2:])  # noqa: E731 - crops as records
        leads = jnp.repeat(batch["lead_indices"], c, axis=0)
        out = models.classify(graphdef, state, flat(batch["patches"]), leads,
                              flat(batch["patch_valid"]), rng, train=rng is not None)
        return out.reshape(b, c, -1)


class Net1dRunner:
    """ECGFounder's Net1D: its authors' data path (500 Hz, 10 s, their preprocessing, one crop),
    time-averaged last-stage features."""

    family = families.NET1D

    def data_config(self, config, preset=None):
        """The checkpoint's data path (ECGFounder's when it names none of its own: an older
        import, or our default "crema", which cannot feed a Net1D), at the model's rate and
        window: one crop of num_samples at sample_rate."""
        cfg = config.data.copy_and_resolve_references()
        if preset is None and cfg.preset == "crema":
            preset = self.family.default_preset
        if preset is not None:
            presets.apply(cfg, preset)
        with cfg.unlocked():
            cfg.target_fs = float(config.model.sample_rate)
            cfg.crop_samples = cfg.patch_size = int(config.model.num_samples)
            cfg.eval_num_crops = 1
        return cfg

    def build(self, config, params, *, seed: int, num_classes: int = 0, drop_path: float = 0.0):
        """(graphdef, state); params None = random init. With params the model is built
        abstractly and filled (params_lib.merge): a random init first had compiled each layer's
        initialiser eagerly, then been overwritten (10 s of a one-record predict at ECGFounder's
        size)."""
        del num_classes, drop_path
        if params is None:
            return nnx.split(models.build_model(config.model, rngs=nnx.Rngs(seed)))
        return nnx.split(params_lib.merge(config.model, params))

    def _inputs(self, model, batch):
        """(B*C, in_channels, T): the crops' leads in canonical rows; leads the batch lacks
        are zeros."""
        patches, lead_indices = batch["patches"], batch["lead_indices"]
        b, c, num_leads = patches.shape[:3]
        x = patches.reshape(b * c, num_leads, -1)
        if model.in_channels != num_leads:
            onehot = jax.nn.one_hot(jnp.repeat(lead_indices, c, axis=0), 12, dtype=x.dtype)
            x = jnp.einsum("blc,blt->bct", onehot, x)[:, : model.in_channels]
        return x

    def features(self, graphdef, state, batch):
        model = nnx.merge(graphdef, state)
        b, c = batch["patches"].shape[:2]
        return model.features(self._inputs(model, batch)).reshape(b, c, -1)

    def logits(self, graphdef, state, batch, rng=None):
        del rng
        model = nnx.merge(graphdef, state)
        b, c = batch["patches"].shape[:2]
        return model(self._inputs(model, batch)).reshape(b, c, -1)


# Family name -> its runner.
RUNNERS = {runner.family.name: runner for runner in (SitRunner(), Net1dRunner())}


def runner_of(config):
    """The runner of the config's model family."""
    return RUNNERS[families.family_of(config.model).name]


# ------------------------------------------------------------------------------------ loading
@dataclasses.dataclass
class Backbone:
    runner: Any      # a RUNNERS entry
    graphdef: Any
    state: Any
    config: Any      # the full config (model + data sections at least)
    num_classes: int  # of the loaded head; 0 = features only

    @property
    def family(self) -> families.Family:
        return self.runner.family

    @property
    def name(self) -> str:
        """The family's name (a --backbone value)."""
        return self.family.name


def load_config_and_params(checkpoint: str, *, backbone: str = "", model_size: str = "tiny",
                           flag: str = "--backbone"):
    """(full config, params or None) of a checkpoint, or of a fresh model for 'random'
    (`backbone`: a family name, models/families.py; a model with sizes is of `model_size`). A
    `backbone` that contradicts the checkpoint's model is an error naming `flag`."""
    if checkpoint == RANDOM:
        family = families.family_named(backbone or families.SIT.name, flag=flag)
        config = config_lib.default_config(family.default_model)
        if family.has_sizes:
            config.model.size = model_size
        return config, None
    params, config, _ = config_lib.load_checkpoint(checkpoint)
    if backbone and families.family_of(config.model).name != backbone:
        raise ValueError(f"{flag}={backbone}: {checkpoint} holds a "
                         f"{config.model.name!r} model")
    return config, params


def load(checkpoint: str, *, backbone: str = "", model_size: str = "tiny", seed: int = 0,
         with_head: bool = False) -> Backbone:
    """The backbone of a checkpoint (or 'random'); with_head keeps its classification head."""
    config, params = load_config_and_params(checkpoint, backbone=backbone, model_size=model_size)
    return build(config, params, seed=seed, with_head=with_head)


def build(config, params, *, seed: int = 0, with_head: bool = False) -> Backbone:
    """The backbone of a config and its params (None: randomly initialised from `seed`)."""
    runner = runner_of(config)
    classes = int(config.model.num_classes) if with_head else 0
    graphdef, state = runner.build(config, params, seed=seed, num_classes=classes)
    return Backbone(runner, graphdef, state, config, classes)


EVAL_READ_THREADS = 2


def _set_by_evaluation(runner, config, leads, *, batch_size: int, num_workers: int) -> dict:
    """The data fields every evaluation sets itself, whatever the checkpoint's config holds:
    the leads, how records are read (batches, workers, threads) and from where (no split, no
    cache, no synthetic records), one pass. What an evaluation reads from a record is the rest
    (`architecture`)."""
    return {"leads": runner.family.input_leads(config.model, leads),
            "batch_size": int(batch_size), "num_workers": int(num_workers),
            # In-process reading runs on two threads ahead of the model: the filters,
            # resampling and running median release the GIL, ~1.6x the records per second on 2
            # cores (bench/data.py, eval table); worker processes parallelise by themselves.
            "read_threads": EVAL_READ_THREADS if int(num_workers) == 0 else 0,
            "prefetch_buffer_size": 2 * EVAL_READ_THREADS,  # batches read ahead
            "split": "", "cache_dir": "", "strict": False, "synthetic_records": 0,
            "num_epochs": 1}


def eval_data_config(backbone_or_config, leads, *, batch_size: int, num_workers: int = 0,
                     preset: str | None = None):
    """The data section a backbone's evaluation batches are built with (the same data path and
    crops in every command), for `leads` (canonical names). `preset` (a --preset flag) replaces
    the checkpoint's data path (data/presets.py); None keeps it."""
    config = getattr(backbone_or_config, "config", backbone_or_config)
    runner = runner_of(config)
    cfg = runner.data_config(config, preset or None)
    with cfg.unlocked():
        for field, value in _set_by_evaluation(runner, config, leads, batch_size=batch_size,
                                               num_workers=num_workers).items():
            cfg[field] = value
    return cfg


# ------------------------------------------------------------------------------------ identity
# Data fields, besides those every evaluation sets (_set_by_evaluation), that do not change what
# an evaluation reads from a record: where the records are and how pretraining fed them (masks,
# views, buffers). Every other field (the preset, the rate, preprocess, resampling, NaN and
# flat-lead policies, crops, and the augmentations a fine-tuning recipe of augment "config"
# trains with) does.
_NOT_READ_BY_EVALUATION = frozenset({
    "independent_view_crops", "keep_in_memory", "layout", "layout_options", "mask", "num_views",
    "per_worker_buffer_size", "root", "seed", "skip_damaged_cache_records", "skip_log_dir"})


def architecture(config) -> str:
    """What a random init copies: the model config and the data path, every field of it that
    decides an evaluation's crops (a summary of preset, rate and crops had let two checkpoints
    of other preprocessing share features)."""
    runner = runner_of(config)
    data_cfg = runner.data_config(config, None).to_dict()
    ignored = _NOT_READ_BY_EVALUATION | set(_set_by_evaluation(
        runner, config, LEADS, batch_size=1, num_workers=0))
    text = json.dumps({"model": config.model.to_dict(),
                       "data": {k: v for k, v in data_cfg.items() if k not in ignored}},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def weights_digest(config, params, seed: int) -> str:
    """A digest of what a model computes with: its architecture and data path (`architecture`:
    the same weights under another config or preprocessing had reused the first one's
    features) and every parameter's name, dtype, shape and bytes (a checkpoint retrained or
    replaced at the same path is another model), or for a random init (params None) its
    architecture and the seed it is drawn with (the benchmark suite's: a task file whose seed
    changed had reused the features of the other seed's random weights)."""
    digest = hashlib.sha256()
    if params is None:
        digest.update(f"random:{architecture(config)}:seed={int(seed)}".encode())
    else:
        digest.update(f"trained:{architecture(config)}|".encode())
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
            array = np.ascontiguousarray(np.asarray(leaf))
            digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype}|{array.shape}|".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()[:16]


# ------------------------------------------------------------------------------------ applying
def data_path_summary(data_cfg, averaging: str = "") -> str:
    """The data path and the crops it cuts, e.g. 'crema: 250 Hz, 3 crops of 2250 samples,
    embedding averaging' (two models with the same summary read the same crops); `averaging`
    replaces data.eval_crop_average where a command averages otherwise (fine-tuning: logits)."""
    crops = batch_lib.crops_text(data_cfg.eval_num_crops, data_cfg.crop_samples)
    return (f"{data_cfg.preset}: {data_cfg.target_fs:g} Hz, {crops}, "
            f"{averaging or data_cfg.eval_crop_average} averaging")


def describe_data_path(data_cfg, preset_flag: str = "", averaging: str = "") -> str:
    """One line naming the data path a command uses and where it came from."""
    origin = "--preset" if preset_flag else "the checkpoint's config"
    name, details = data_path_summary(data_cfg, averaging).split(": ", 1)
    return f"data path: {name} (from {origin}; {details})"


def make_apply(backbone: Backbone, mesh, *, output: str = "features"):
    """jit(per-crop features or logits) with replicated params and the batch split over the
    mesh: batch dict (batch.py EVAL_KEYS) -> (B, C, D)."""
    if output == "logits" and backbone.num_classes <= 0:
        raise ValueError("this checkpoint has no classification head (config.model.num_classes "
                         "is 0); write features instead")
    fn = backbone.runner.features if output == "features" else backbone.runner.logits
    batch_sh, replicated = mesh_lib.batch_sharding(mesh), mesh_lib.replicated(mesh)

    # The parameters pass as a flat list of arrays: flattening the nnx.State at every call cost
    # ~0.7 ms of Python per batch for Net1D (~200 arrays), 3% of a batch-1 forward on CPU.
    leaves, treedef = jax.tree.flatten(backbone.state)

    def apply(leaves, patches, lead_indices, patch_valid):
        return fn(backbone.graphdef, jax.tree.unflatten(treedef, leaves),
                  {"patches": patches, "lead_indices": lead_indices, "patch_valid": patch_valid})

    jitted = jax.jit(apply, in_shardings=(replicated, batch_sh, batch_sh, batch_sh),
                     out_shardings=batch_sh)
    leaves = jax.device_put(leaves, replicated)
    return lambda b: jitted(leaves, b["patches"], b["lead_indices"], b["patch_valid"])


class NoRecordsError(ValueError):
    """Every record of an evaluation pass was skipped (the skip counts say why)."""


def run(apply_fn, batches: Iterable[dict], on_batch=None) -> dict | None:
    """apply_fn over evaluation batches, keeping the real rows (the batches' "valid").

    Returns {"outputs": (n, C, D) float32 per crop, "labels": (n, K), "index": (n,) int64};
    with `on_batch`, each batch's real rows go to on_batch(that dict of the batch) instead, as
    it finishes, and None is returned. Dispatch is asynchronous: the next batch is read while
    the devices compute.
    """
    pending, out = [], {"outputs": [], "labels": [], "index": []}

    def collect(item):
        result, batch = item
        keep = np.asarray(batch["valid"])
        piece = {"outputs": np.asarray(result, np.float32)[keep],
                 "labels": np.asarray(batch["labels"])[keep],
                 "index": np.asarray(batch["index"], np.int64)[keep]}
        if on_batch is not None:
            on_batch(piece)
            out["index"].append(piece["index"])
            return
        for key, value in piece.items():
            out[key].append(value)

    for batch in batches:
        pending.append((apply_fn(batch), batch))
        if len(pending) > 1:
            collect(pending.pop(0))
    for item in pending:
        collect(item)
    if not out["index"]:
        raise NoRecordsError("the dataset yielded no readable records")
    return None if on_batch is not None else {k: np.concatenate(v) for k, v in out.items()}


def probabilities(logits, label_type: str) -> np.ndarray:
    """Label probabilities (float64, numpy) of logits (..., classes): a softmax over the classes
    for "multiclass", else a sigmoid per label (multilabel), neither overflowing at any logit
    (the softmax less its row's maximum; the sigmoid of x < 0 as e^x / (1 + e^x): 1 / (1 +
    exp(-x)) overflows below x = -709, and through tanh every x below about -37 gave 0)."""
    logits = np.asarray(logits, np.float64)
    if label_type == "multiclass":
        e = np.exp(logits - logits.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
    e = np.exp(-np.abs(logits))   # never above 1
    return np.where(logits >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
