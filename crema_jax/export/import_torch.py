"""PyTorch weights -> an Orbax checkpoint (`crema-jax import-torch`) that `pretrain` (continue),
`probe`, `finetune`, `embed` and `predict` read.

The model config is inferred from the tensor shapes (ViT-B from width 768 and 12 blocks; Net1D 12-
or 1-lead from first_conv) and written with the full default config; its data path is the one
export-torch wrote (a hub folder's config.json, or FILE.json beside a weight file), else the
format's preset. Files are loaded safely (safe_load.py: safetensors, or
torch.load(weights_only=True) only) and checked completely before anything is written: on any
error the output directory is left untouched.
"""
from __future__ import annotations

import json
import os
from typing import Mapping

from crema_jax import config as config_lib
from crema_jax import config_checks
from crema_jax.data import presets
from crema_jax.export import (convert, export_torch, hub, hub_folder, infer_config, safe_load,
                               sit_layouts)
from crema_jax.models import families
from crema_jax.models import params as params_lib
from crema_jax.runtime import checkpoint as ckpt_lib
from crema_jax.runtime import files, storage, trees
from crema_jax.runtime import workdir as workdir_lib
from crema_jax.train import warm_start

FORMATS = ("crema", "stmem", "ecgfounder")
PRESET_OF_FORMAT = {"crema": "crema", "stmem": "stmem", "ecgfounder": "ecgfounder"}


# ------------------------------------------------------------------------------------------------
# File -> (params, model config).
# ------------------------------------------------------------------------------------------------
def _crema_model_config(path: str, metadata: Mapping[str, str]):
    text, where = metadata.get("crema_model_config"), "its safetensors metadata"
    side = export_torch.sidecar_path(path)
    if text is None and os.path.isfile(side):
        with open(side, encoding="utf-8", errors="replace") as f:
            side_json = _json(side, f.read())
        if not isinstance(side_json, dict) or not isinstance(side_json.get("model"), dict):
            raise safe_load.CheckpointFileError(
                f"{side}: expected a JSON object with a 'model' object, as export-torch writes")
        saved, where = side_json["model"], side
    elif text is None:
        raise safe_load.CheckpointFileError(
            f"{path}: a crema-layout file needs its model config: in the safetensors metadata "
            f"('crema_model_config') or in {side}, both written by export-torch")
    else:
        saved = _json(f"{path}: its model config", text)
    if not isinstance(saved, dict):
        raise safe_load.CheckpointFileError(f"{path}: its model config is not a JSON object")
    name = families.current_name(str(saved.get("name", "sit_pretrain")))
    if name not in families.MODEL_NAMES or families.family_of(name) is not families.SIT:
        raise safe_load.CheckpointFileError(
            f"{path}: the model config in {where} names model {saved.get('name')!r}; a "
            "crema-layout file holds a SiT (net1d weights: --format=ecgfounder)")
    try:
        model_cfg = config_lib.from_saved({"model": saved}).model
    except (ValueError, OverflowError) as err:
        raise safe_load.CheckpointFileError(f"{path}: its model config has {err}") from None
    return _checked(path, model_cfg, "its model config" if where != side else
                    f"its model config in {side}")


def _checked(path: str, model_cfg, what: str):
    """model_cfg when its fields are in their domains (config_checks.validate_model), before a model
    is built from it: num_heads=-1, patch_size=0 or num_patches=-1 ended in tracebacks or in a
    checkpoint nothing could run."""
    config = config_lib.default_config(model_cfg.name)
    config.model = model_cfg
    try:
        config_checks.validate_model(config)
    except (ValueError, OverflowError) as err:
        raise safe_load.CheckpointFileError(f"{path}: {what} has {err}") from None
    for key, value in model_cfg.items():  # sizes numpy's shapes can hold (10**30 overflowed)
        values = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 2**31
               for v in values):
            raise safe_load.CheckpointFileError(
                f"{path}: {what} has model.{key}={value!r}: expected sizes below 2**31")
    return model_cfg


def _json(what: str, text: str):
    """json.loads, a CheckpointFileError naming `what` for text that is not JSON or nests too
    deep to parse."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as err:  # a 5000-digit number: a ValueError
        raise safe_load.CheckpointFileError(
            f"{what} is not readable JSON ({safe_load.json_problem(err)})") from None


def _saved_lead_embedding(obj) -> str:
    """model.lead_embedding of an ST-MEM-layout file: what crema_jax's export wrote in its JSON
    "config" entry, else "position" (ST-MEM's own rule)."""
    text = obj.get("config") if isinstance(obj, Mapping) else None
    if isinstance(text, str):
        try:
            saved = json.loads(text)
        except (ValueError, RecursionError):
            saved = None
        if isinstance(saved, dict) and saved.get("lead_embedding") in ("canonical", "position"):
            return saved["lead_embedding"]
    return "position"


def _inferred(path: str, infer, sd, fmt: str):
    try:
        return infer(sd)
    except safe_load.CheckpointFileError as err:
        raise safe_load.CheckpointFileError(f"{path}: {err}{_sidecar_hint(path, fmt)}") from None


def _sidecar_hint(path: str, fmt: str) -> str:
    """"; F.json says layout 'crema': use --format=crema" when export-torch's F.json beside
    `path` names another layout than --format; "" otherwise (no such file, or unreadable)."""
    side = export_torch.sidecar_path(path)
    info, _ = export_torch.load_sidecar(side)
    layout = info["layout"] if info is not None else None
    if layout in FORMATS and layout != fmt:
        return f"; {side} says layout {layout!r}: use --format={layout}"
    return ""


def read_torch_weights(path: str, fmt: str):
    """(state_dict, model_cfg, rules, ignored key patterns) for `path` in `fmt`."""
    obj, metadata = safe_load.read_weight_file(path)
    if fmt == "ecgfounder":
        sd = safe_load.strip_prefix(safe_load.extract_state_dict(obj, path, ("state_dict",)),
                                    "module.")
        cfg = _checked(path, _inferred(path, infer_config.infer_net1d_config, sd, fmt),
                       "the model its tensors' shapes give")
        return sd, cfg, convert.ecgfounder_rules(cfg), convert.ECGFOUNDER_IGNORED
    sd = safe_load.strip_prefix(safe_load.extract_state_dict(obj, path, ("model", "state_dict")),
                                "module.")
    if fmt == "stmem":
        cfg, full = _inferred(path, infer_config.infer_stmem_config, sd, fmt)
        cfg = _checked(path, cfg, "the model its tensors' shapes give")
        cfg.lead_embedding = _saved_lead_embedding(obj)
        has_head = any(k.endswith("head.weight") and "decoder" not in k for k in sd)
        rules = sit_layouts.stmem_rules(cfg, jax_prefix="encoder/", include_head=has_head,
                                        include_decoder=full)
        return sd, cfg, rules, ()
    cfg = _crema_model_config(path, metadata)
    # The architecture comes from the tensors; the metadata may only agree with them (the shape
    # check lists every disagreement). A file without a decoder is a bare encoder: nothing the
    # file does not hold is built from the metadata's word alone.
    has_decoder = convert.holds_decoder(sd)
    cfg.name = families.SIT.pretrain_model if has_decoder else families.SIT.encoder_model
    held = {"patch_norms": "encoder.patch_embed.in_norm.weight" in sd,
            "decoder_variant": ("axial" if any(k.startswith("decoder.lead_blocks.") for k in sd)
                                else "per_lead") if has_decoder else cfg.decoder_variant}
    for field, value in held.items():
        if cfg[field] != value:
            raise safe_load.CheckpointFileError(
                f"{path}: its model config says {field}={cfg[field]!r}, its tensors are those "
                f"of {field}={value!r}")
    rules = sit_layouts.crema_rules(
        cfg, jax_prefix="encoder/" if has_decoder else "", include_head=int(cfg.num_classes) > 0,
        include_decoder=has_decoder)
    return sd, cfg, rules, ()


def import_weights(path: str, fmt: str, *, seed: int = 0):
    """(params nested dict, model config, JAX paths freshly initialised) — nothing written."""
    if fmt not in FORMATS:
        raise ValueError(f"--format={fmt!r}: expected one of {FORMATS}")
    sd, cfg, rules, ignored = read_torch_weights(path, fmt)
    if "scan_layers" in cfg:  # unrolled blocks: one params entry per block, as converted (an
        cfg.scan_layers = False  # encoder-only export of a scan_layers run said True)
    params, kept = state_dict_to_params(sd, cfg, rules, fmt=fmt, path=path, ignored=ignored)
    if kept:  # parts the file does not hold: initialise them, then overlay the file's tensors
        template = params_lib.abstract_params(cfg)
        fresh = params_lib.init_params(cfg, seed, only=kept)
        flat = trees.flatten(params)
        flat.update({p: fresh[p] for p in kept})
        params = trees.unflatten_like(flat, template)
    return params, cfg, kept


def state_dict_to_params(sd, cfg, rules, *, fmt: str, path: str, ignored=()):
    """(params, the model's paths the file holds no tensor for). ST-MEM's identity `to_out`
    (one head as wide as the model has none) becomes the identity projection: exactly ST-MEM's
    function."""
    template = params_lib.abstract_params(cfg)
    params, kept = convert.torch_to_jax(sd, rules, template, path=path, layout=fmt,
                                        ignored=ignored)
    if fmt == "stmem":
        identity = [p for p in sit_layouts.identity_out_paths(params, cfg) if p in kept]
        flat = trees.flatten(params)
        shapes = {k: v.shape for k, v in trees.flatten(template).items()}
        for p in identity:
            flat[p] = sit_layouts.identity_out_value(p, shapes[p])
        params = trees.unflatten_like(flat, template)
        kept = [p for p in kept if p not in identity]
    return params, kept


def _summarise(paths: list[str]) -> str:
    groups = {}
    for p in paths:
        head = p.split("/")[0]
        groups[head] = groups.get(head, 0) + 1
    return ", ".join(f"{k} ({n} tensor{'s' if n != 1 else ''})"
                     for k, n in sorted(groups.items()))


def resolve_source(source: str, fmt: str | None
                   ) -> tuple[str, str, export_torch.SavedData, dict]:
    """(weight file, format, the saved data path or why there is none, source record) for a
    weight file, a folder export-torch --hub_folder wrote, or a hub id of either (fetched into
    the hub cache). The data section is the folder's config.json's, or that of the FILE.json
    export-torch wrote beside a weight file (for a hub id, fetched at the weight file's commit)."""
    if hub.is_hub_id(source):
        local, record = hub.fetch(source, hub_folder.CONFIG_FILE)
    else:
        local, record = source, {"path": os.path.abspath(source)}
    if hub_folder.is_folder(local):
        local, layout, data, model = hub_folder.read_folder(local)
        if fmt not in (None, layout):
            raise safe_load.CheckpointFileError(
                f"{source}: a folder of {layout}-layout weights; drop --format={fmt} (the "
                "folder's config.json says its layout)")
        fmt = layout
        where = os.path.join(source, hub_folder.CONFIG_FILE) if os.path.isdir(source) else source
        saved = export_torch.SavedData(where, data, layout=layout, model=model)
    elif os.path.isdir(local):
        raise safe_load.CheckpointFileError(
            f"{source}: a folder without {hub_folder.CONFIG_FILE}; expected a weight file or a "
            "folder export-torch --hub_folder wrote")
    elif fmt is None:
        raise safe_load.CheckpointFileError(
            f"{source}: a weight file needs --format ({'|'.join(FORMATS)})")
    elif hub.is_hub_id(source):  # FILE.json from the hub, not whatever the cache holds
        name = export_torch.sidecar_path(record["file"])
        side = hub.fetch_optional(source, record["commit"], name)
        where = hub.HubRef(record["repo_id"], record["commit"], name).uri()
        saved = (export_torch.read_sidecar_data(side, where) if side is not None else
                 export_torch.SavedData(where, None, f"{where}: not in the repository"))
    else:
        saved = export_torch.read_sidecar_data(export_torch.sidecar_path(local))
    return local, fmt, saved, {**record, "format": fmt}


def _another_models(saved: export_torch.SavedData, fmt: str, model_cfg) -> str:
    """Why FILE.json, or a hub folder's config.json, does not describe the weights ("" when it
    does, or says nothing): written for another layout, or a model of another architecture
    (warm_start.architecture: a JSON left beside other weights had given ECGFounder's Net1D
    ST-MEM's data path; a config.json saying width 128 beside 64-wide weights was taken)."""
    if saved.layout is None or saved.data is None or saved.model is None:
        return ""
    if saved.layout != fmt:
        return (f"{saved.where} was written for {saved.layout}-layout weights, not "
                f"--format={fmt}'s: not these weights' file")
    try:
        theirs = warm_start.architecture(config_lib.from_saved({"model": saved.model}).model)
    except (ValueError, KeyError, TypeError, OverflowError) as err:
        return f"{saved.where}: its model config does not read ({err})"
    ours = warm_start.architecture(model_cfg)
    diff = [f"{k} {theirs.get(k)!r}, the weights' {ours.get(k)!r}"
            for k in sorted(set(ours) | set(theirs)) if theirs.get(k) != ours.get(k)]
    return (f"{saved.where} describes another model ({'; '.join(diff)}): not these weights' "
            "file") if diff else ""


def _earlier_import(out: str) -> str | None:
    """What an earlier import left in `out`, as the refusal says it, when `out` holds only
    `checkpoints/`: only Orbax's temporary step folders (or nothing) -- an interrupted import
    ("checkpoints/0.orbax-checkpoint-tmp-...") -- or only finished steps ("checkpoints/0", as
    an import writes: it had been called files this command did not write). None for any
    other folder (check_output_dir names what it holds; nothing is deleted)."""
    name = workdir_lib.CHECKPOINTS_DIRNAME
    root = os.path.join(out, name)
    try:
        if (os.path.islink(out) or os.listdir(out) != [name]
                or os.path.islink(root) or not os.path.isdir(root)):
            return None
        entries = sorted(os.listdir(root))
    except OSError:
        return None
    if not all(os.path.isdir(os.path.join(root, e)) and not os.path.islink(os.path.join(root, e))
               for e in entries):
        return None
    if all(workdir_lib.is_unfinished_step_name(e) for e in entries):
        where = f"{name}/{entries[0]}" if entries else f"an empty {name}/"
        return (f"--out={out}: an unfinished import from an interrupted run ({where}); remove "
                "the folder or choose another --out")
    if all(e.isdigit() for e in entries):
        return (f"--out={out}: already holds an import ({name}/{entries[0]}); remove the folder "
                "to import again, or choose another --out")
    return None


def run_import(source: str, fmt: str | None, out: str, *, seed: int = 0
               ) -> tuple[str, str, str]:
    """Checks everything, then writes `out/checkpoints/0`; returns the step dir, the model it
    holds in one clause (its family's describe) and where its data path came from. The source
    (the path, or the hub id and the commit fetched) is recorded in the checkpoint's config as
    `source`, which readers of the config leave aside."""
    path, fmt, saved, record = resolve_source(source, fmt)
    if storage.is_remote(out):
        storage.check_url(str(out))
    else:  # a new or empty folder: an import never mixes with other files
        earlier = _earlier_import(out)
        if earlier:
            raise files.OutputError(earlier)
        files.check_output_dir(out, marker=None, flag="--out", inputs=[path], outside=[source],
                               create=False)
    params, model_cfg, kept = import_weights(path, fmt, seed=seed)
    config = config_lib.default_config(model_cfg.name)
    config.model = model_cfg
    other = _another_models(saved, fmt, model_cfg)
    if other:
        saved = export_torch.SavedData(saved.where, None, other)
    if saved.data is not None:  # export-torch's config: the data path the model was trained with
        try:
            config.data = config_lib.from_saved({"model": {"name": model_cfg.name},
                                                 "data": saved.data}).data
            config_checks.validate_data(config)
            config_checks.validate_patches(config)
        except (ValueError, OverflowError) as err:
            raise safe_load.CheckpointFileError(f"{saved.where}: its data path (\"config\"."
                                                f"\"data\") has {err}") from None
        data_from = f"data path from {saved.where}"
    else:
        # The peer's own data path, file to model input, so that embed/probe/finetune/predict
        # give its authors' outputs with no flag (data/presets.py).
        presets.apply(config.data, PRESET_OF_FORMAT[fmt])
        data_from = f"data path: the {PRESET_OF_FORMAT[fmt]} preset" + (
            f"; {saved.why_not}" if saved.why_not else "")
    config.source = record
    if kept:
        print(f"WARNING: freshly initialised (seed {seed}; not in {path}): {_summarise(kept)}; "
              "fine for probing or fine-tuning the encoder, continued pretraining starts them "
              "from scratch")
    step_dir = ckpt_lib.save_model_checkpoint(out, params, config, step=0)
    return str(step_dir), families.family_of(model_cfg).describe(model_cfg), data_from
