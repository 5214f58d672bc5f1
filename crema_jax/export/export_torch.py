"""A checkpoint's weights as a PyTorch state_dict, plus FILE.json (config): crema-jax export-torch.

- FILE.safetensors: flat keys, metadata {"format": "pt", "crema_model_config": JSON}.
- FILE.json: the layout, step, model config and the full config (LOCAL_FIELDS blank), whose data
  section `import-torch FILE` restores.
- FILE.pth (stmem, ecgfounder): torch.save of plain tensors and numbers, loadable with
  torch.load(weights_only=True): ST-MEM's {'model': state_dict, 'epoch', 'config'} wrapping, or
  ECGFounder's {'state_dict': ..., 'epoch'}.
Layouts: crema (crema_jax/export/torch_sit.py loads it), stmem (ST-MEM's keys; configs ST-MEM
cannot express are refused with the reason), ecgfounder (Net1D checkpoints; default for them).
"""
from __future__ import annotations

import io
import json
import os
from typing import NamedTuple

import numpy as np
import safetensors.numpy

from crema_jax import config as config_lib
from crema_jax.export import convert, safe_load, sit_layouts
from crema_jax.models import families
from crema_jax.runtime import checkpoint as ckpt_lib
from crema_jax.runtime import made_folders, storage, trees

LAYOUTS = ("crema", "stmem", "ecgfounder")
# Config fields that say where one machine keeps things (datasets and their options, caches,
# logs, other checkpoints): an exported config is shared, so they are written blank. The model
# and its data path (rate, crop, leads, filters) stay: a reader needs those.
LOCAL_FIELDS = ("data.root", "data.cache_dir", "data.skip_log_dir", "data.layout_options",
                "train.init_from", "train.compilation_cache_dir", "evals.fewshot_probe.root",
                "evals.fewshot_probe.layout_options")
# FILE.json larger than this is not export-torch's (it writes a few KiB): not parsed.
SIDECAR_MAX_BYTES = 64 << 20


class ExportError(ValueError):
    """A checkpoint that cannot be written in the requested layout; the message says why."""


def resolved_model_config(model_cfg) -> dict:
    """The model config as a dict with the size entry resolved (width/depth/heads/head_dim)."""
    return {**model_cfg.to_dict(), **families.family_of(model_cfg).size_fields(model_cfg)}


def shared_config(config) -> dict:
    """The config as JSON for an exported file: LOCAL_FIELDS blank ("" or {})."""
    full = ckpt_lib.config_to_json_dict(config)
    for field in LOCAL_FIELDS:
        *parents, key = field.split(".")
        section = full
        for name in parents:
            section = section.get(name) if isinstance(section, dict) else None
        if isinstance(section, dict) and key in section:
            section[key] = {} if isinstance(section[key], dict) else ""
    return full


def build_state_dict(params, model_cfg, *, layout: str, include_decoder: bool
                     ) -> dict[str, np.ndarray]:
    """The torch state_dict (numpy arrays) of `params` in `layout`; raises ExportError."""
    family = families.family_of(model_cfg)
    if layout not in family.export_layouts:
        raise ExportError(f"a {family.title} checkpoint exports as --layout="
                          f"{' or '.join(family.export_layouts)}, not {layout}")
    if include_decoder and not family.has_decoder_model:
        raise ExportError(f"--include_decoder: a {family.title} model has no decoder")
    if layout == "ecgfounder":
        sd = convert.jax_to_torch(params, convert.ecgfounder_rules(model_cfg), layout=layout)
        return {**sd, **convert.ecgfounder_unused_batchnorm(model_cfg)}
    params = sit_layouts.unstack_blocks(params)
    prefix = sit_layouts.sit_prefix(params)
    if include_decoder and "decoder" not in params:
        raise ExportError("--include_decoder: this checkpoint holds an encoder only (no decoder)")
    if layout == "stmem":
        problems = sit_layouts.stmem_incompatibilities(model_cfg, include_decoder=include_decoder)
        if problems:
            raise ExportError("this model cannot be written as an ST-MEM checkpoint: "
                              + "; ".join(problems))
    if layout == "stmem":  # blocks ST-MEM builds without `to_out` must hold the identity
        flat = trees.flatten(params)
        for path in sit_layouts.identity_out_paths(params, model_cfg):
            if path.startswith("decoder/") and not include_decoder:
                continue
            want = sit_layouts.identity_out_value(path, np.shape(flat[path]))
            if not np.array_equal(np.asarray(flat[path], np.float32), want):
                raise ExportError(
                    f"{path}: ST-MEM has no output projection for one head as wide as the model "
                    "(its to_out is an identity), and this one is not the identity; export "
                    "with --layout=crema instead")
    encoder = params.get("encoder", params)
    rules = sit_layouts.SIT_LAYOUTS[layout](
        model_cfg, jax_prefix=prefix, include_head="head" in encoder,
        include_decoder=include_decoder)
    # ST-MEM's full file has no projection head or SigLIP scalars: those stay behind.
    unused = sit_layouts.PRETRAIN_ONLY if not include_decoder else (
        ("projector/", "logit_scale", "logit_bias") if layout == "stmem" else ())
    if layout == "stmem":
        unused = unused + tuple(sit_layouts.identity_out_paths(params, model_cfg))
    return convert.jax_to_torch(params, rules, layout=layout, allow_unused=unused)


def safetensors_writer(state_dict, model_config: dict):
    """The write(path) of a .safetensors file with the model config in its metadata."""
    meta = {"format": "pt", "crema_model_config": json.dumps(model_config)}
    return lambda p: _write_bytes(p, safetensors.numpy.save(state_dict, metadata=meta))


def _write_bytes(path: str, data: bytes) -> None:
    """`data` written by Python: a full disk is then an OSError (runtime/files.py names the
    output with it). Serialised in memory first because the native writers lose it: safetensors
    raised its own SafetensorError, torch.save a RuntimeError ("unexpected pos 10176 vs 10070"),
    each ending in a traceback. The cost: the export holds the file's bytes in memory beside the
    arrays (one more model size at its peak, ~1.2 GB for 300 M float32 parameters)."""
    with open(path, "wb") as f:
        f.write(data)


def sidecar_path(out: str) -> str:
    """FILE.json, the config written beside the weight file FILE.safetensors or FILE.pth."""
    return os.path.splitext(out)[0] + ".json"


def saved_data(info: dict, path: str) -> dict:
    """"config"."data" of what an export wrote at `path` (FILE.json, or a hub folder's
    config.json): the data path its model was trained with."""
    full = info.get("config")
    data = full.get("data") if isinstance(full, dict) else None
    if not isinstance(data, dict):
        raise safe_load.CheckpointFileError(f"{path}: \"config\".\"data\" (the data path) is "
                                            "missing or not an object")
    return data


class SavedData(NamedTuple):
    """The data path an import restores: `data`, the "config"."data" of the file `where`, or
    None (the format's preset is taken) with `why_not` saying why ("" for no such file).
    `layout` and `model`: what FILE.json, or a hub folder's config.json, says the weights
    are (None: it says nothing), which import-torch compares with the weights."""
    where: str
    data: dict | None
    why_not: str = ""
    layout: str | None = None
    model: dict | None = None


def load_sidecar(side: str, where: str | None = None) -> tuple[dict | None, str]:
    """(FILE.json's content, "") when `side` is export-torch's own FILE.json: a JSON object of at
    most SIDECAR_MAX_BYTES whose "layout" is one of LAYOUTS and whose "model" is an object. Else
    (None, why): no such file (why ""), too large, not JSON, or another program's file (a
    config.json-like file beside third-party weights). `where` names it in `why`."""
    where = where or side
    try:
        if not os.path.isfile(side):
            return None, ""
        if os.path.getsize(side) > SIDECAR_MAX_BYTES:
            return None, f"{where} is over {SIDECAR_MAX_BYTES} bytes: not export-torch's"
        with open(side, "rb") as f:
            info = safe_load.parse_json(f.read(), where)
    except safe_load.CheckpointFileError as err:
        return None, str(err)
    except OSError as err:
        return None, f"{where} is unreadable ({err.strerror or type(err).__name__})"
    if (not isinstance(info, dict) or info.get("layout") not in LAYOUTS
            or not isinstance(info.get("model"), dict)):
        return None, (f"{where} is not export-torch's (no \"layout\" of {'|'.join(LAYOUTS)} with "
                      "a \"model\" object)")
    return info, ""


def read_sidecar_data(side: str, where: str | None = None) -> SavedData:
    """The data path in `side`, the FILE.json beside a weight file, when it is export-torch's own
    and holds its config; else SavedData(where, None, why) (load_sidecar; or the model alone, no
    "config"). export-torch's FILE.json whose config has no data object: a CheckpointFileError."""
    where = where or side
    info, why = load_sidecar(side, where)
    if info is not None and "config" not in info:
        why = f"{where} holds the model config only (no \"config\")"
    if info is None or "config" not in info:
        return SavedData(where, None, why)
    return SavedData(where, saved_data(info, where), layout=info["layout"], model=info["model"])


def write_files(state_dict, out: str, *, layout: str, model_config: dict, full_config: dict,
                step: int, include_decoder: bool) -> tuple[str, str]:
    """Writes FILE (.safetensors or .pth) and FILE.json as a pair (both written before either
    replaces an old one); returns both paths."""
    info = {"layout": layout, "include_decoder": include_decoder, "step": step,
            "num_keys": len(state_dict), "model": model_config, "config": full_config}
    if out.endswith(".safetensors"):
        save = safetensors_writer(state_dict, model_config)
    elif out.endswith((".pth", ".pt")):
        if layout == "crema":
            raise ExportError(f"--out={out}: the crema layout is written as .safetensors "
                              "only; expected FILE.safetensors (or --layout=stmem for a .pth)")
        torch = safe_load.import_torch("Writing a .pth file")
        tensors = {k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}
        key = "state_dict" if layout == "ecgfounder" else "model"
        obj = {key: tensors, "epoch": int(step), "config": json.dumps(model_config)}
        def save(tmp):
            buffer = io.BytesIO()  # see _write_bytes; a file object: torch rejects some names
            torch.save(obj, buffer)
            _write_bytes(tmp, buffer.getbuffer())
    else:
        raise ExportError(f"--out={out}: expected a .safetensors or .pth file name")
    side = sidecar_path(out)
    def dump(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(info, f, indent=1)
    with made_folders.removed_on_failure(os.path.dirname(out)):
        storage.write_atomic_group([(out, save), (side, dump)])  # or uploads them (a URL)
    return out, side


def run_export(checkpoint: str, out: str, *, layout: str | None = None,
               include_decoder: bool = False, overwrite: bool = False) -> tuple[str, str]:
    """Checks the outputs (not the checkpoint, not existing files unless overwrite), converts,
    then writes FILE and FILE.json atomically."""
    if not out.endswith((".safetensors", ".pth", ".pt")):
        raise ExportError(f"--out={out}: expected a .safetensors or .pth file name")
    for path in (out, sidecar_path(out)):
        storage.check_output_file(path, inputs=[checkpoint], overwrite=overwrite)
    params, config, step = config_lib.load_checkpoint(checkpoint)
    model_cfg = config.model
    layout = layout or families.family_of(model_cfg).export_layouts[0]
    state_dict = build_state_dict(params, model_cfg, layout=layout,
                                  include_decoder=include_decoder)
    return write_files(state_dict, out, layout=layout, model_config=resolved_model_config(
        model_cfg), full_config=shared_config(config), step=step,
        include_decoder=include_decoder)
