"""A folder another person can load by name (`crema-jax export-torch --hub_folder=DIR`), read back
by `crema-jax import-torch DIR` (or `hf://OWNER/REPO` once uploaded) with no further flag.

    DIR/model.safetensors   the weights in the family's default PyTorch layout (crema for a SiT,
                            ecgfounder for Net1D; metadata as export-torch's .safetensors)
    DIR/config.json         {"library_name": "crema_jax", "layout", "weights", "model" (the
                            architecture), "data_path" (the preset's fields with this model's
                            values: rate, crop, filters), "labels" (or null), "pretraining"
                            (step and the sections that say how), "config" (the full config,
                            its machine-local paths blank: export_torch.LOCAL_FIELDS)}
    DIR/README.md           the model card: what the model is, its data path step by step, its
                            labels, how it was pretrained, how to load it in crema_jax and PyTorch

The data path a model expects is the one thing a loader cannot infer from the tensors, so the
folder carries it and `import-torch` restores it: every command then feeds the model as it was
trained.
"""
from __future__ import annotations

import json
import os

from crema_jax import config as config_lib
from crema_jax.data import presets
from crema_jax.export import export_torch, model_card, safe_load
from crema_jax.inference import predict
from crema_jax.models import families
from crema_jax.runtime import checkpoint as ckpt_lib
from crema_jax.runtime import files, made_folders

LIBRARY = "crema_jax"
CONFIG_FILE, WEIGHTS_FILE, CARD_FILE = "config.json", "model.safetensors", "README.md"
FILES = (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE)


def is_folder(path: str) -> bool:
    """Whether `path` is a folder holding a crema_jax config.json."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, CONFIG_FILE))


def data_path_entry(data_cfg) -> dict:
    """The preset's data fields (data/presets.py) with this config's values, and its filters."""
    preset = data_cfg.preset
    fields = presets.PRESETS[preset].data_path if preset in presets.NAMES else {}
    return {"preset": preset, **{key: data_cfg[key] for key in fields},
            "preprocess": data_cfg.preprocess.to_dict()}


def labels_of(model_cfg) -> list[str] | None:
    """ECGFounder's label names for a head over its vocabulary; None for any other model."""
    if not families.family_of(model_cfg).predicts_labels:
        return None
    names = predict.label_names()
    return names if int(model_cfg.num_classes) == len(names) else None


def folder_config(config, saved: dict, step: int, *, layout: str) -> dict:
    """config.json's content for a checkpoint's config (`saved`: as stored, with its source)."""
    full = export_torch.shared_config(config)
    pretraining = {"step": int(step), "train": full["train"], "optim": full["optim"],
                   "loss": full["loss"], "data": {k: full["data"][k] for k in
                                                  ("layout", "synthetic_records")}}
    if "source" in saved:  # imported weights: their origin, as import-torch recorded it
        pretraining["imported_from"] = _shared_source(saved["source"])
    return {"library_name": LIBRARY, "layout": layout, "weights": WEIGHTS_FILE,
            "model": export_torch.resolved_model_config(config.model),
            "data_path": data_path_entry(config.data), "labels": labels_of(config.model),
            "pretraining": pretraining, "config": full}


def _shared_source(source):
    """import-torch's record of where weights came from, a local file by its name alone (its
    folder is this machine's); a hub id, or a hand-edited record, as it is."""
    if isinstance(source, dict) and isinstance(source.get("path"), str):
        return {**source, "path": os.path.basename(source["path"])}
    return source


def write_folder(checkpoint: str, folder: str, *, include_decoder: bool = False,
                 overwrite: bool = False) -> list[str]:
    """Writes FILES into `folder` (new, empty, or with overwrite one this wrote); their paths."""
    files.check_output_dir(folder, marker=FILES if overwrite else None, flag="--hub_folder",
                           inputs=[checkpoint], outside=[checkpoint], create=False)
    if overwrite and os.path.isdir(folder) and os.listdir(folder):
        _check_written_here(folder)
    params, config, step = config_lib.load_checkpoint(checkpoint)
    saved = ckpt_lib.load_saved_config(checkpoint)
    layout = families.family_of(config.model).export_layouts[0]
    state_dict = export_torch.build_state_dict(params, config.model, layout=layout,
                                               include_decoder=include_decoder)
    info = folder_config(config, saved, step, layout=layout)
    card = model_card.render(info, state_dict.keys())  # all made before any file is written
    text = json.dumps(info, indent=1)
    paths = [os.path.join(folder, name) for name in FILES]
    # All three written before any replaces an old one: new weights never sit beside the old
    # config.json (whose data path import-torch would then have restored).
    with made_folders.removed_on_failure(folder):
        os.makedirs(folder, exist_ok=True)
        files.write_atomic_group([
            (paths[1], export_torch.safetensors_writer(state_dict, info["model"])),
            (paths[0], lambda tmp: _write_text(tmp, text)),
            (paths[2], lambda tmp: _write_text(tmp, card))])
    return paths


def _check_written_here(folder: str) -> None:
    """--overwrite replaces a folder this command wrote, and nothing else: only FILES in it, and
    a config.json of ours (a user's folder with a README.md of their own passed as 'ours', and
    --overwrite replaced the README)."""
    foreign = sorted(set(os.listdir(folder)) - set(FILES))
    if foreign:
        raise files.OutputError(f"--hub_folder={folder}: the folder holds files this command did "
                                f"not write ({', '.join(foreign[:3])}); --overwrite replaces only "
                                "a folder export-torch wrote")
    try:
        with open(os.path.join(folder, CONFIG_FILE), encoding="utf-8") as f:
            ours = json.load(f).get("library_name") == LIBRARY
    except (OSError, ValueError, AttributeError, RecursionError):  # nested too deeply, too
        ours = False
    if not ours:
        raise files.OutputError(f"--hub_folder={folder}: its {CONFIG_FILE} is missing or was not "
                                "written by export-torch; --overwrite replaces only a folder "
                                "export-torch wrote")


def _write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def read_folder(folder: str) -> tuple[str, str, dict, dict | None]:
    """(weight file, layout, saved data section, "model" or None when it is no object) of a
    folder write_folder wrote; a CheckpointFileError naming the file and field otherwise."""
    path = os.path.join(folder, CONFIG_FILE)
    with open(path, "rb") as f:
        info = safe_load.parse_json(f.read(), path)  # nested too deeply, a 5000-digit number
    if not isinstance(info, dict) or info.get("library_name") != LIBRARY:
        raise safe_load.CheckpointFileError(
            f"{path}: expected a crema_jax folder config (\"library_name\": \"{LIBRARY}\", as "
            "export-torch --hub_folder writes); for a bare weight file pass the file and --format")
    layout, weights = info.get("layout"), info.get("weights")
    if layout not in export_torch.LAYOUTS:
        raise safe_load.CheckpointFileError(
            f"{path}: \"layout\" is {layout!r}; expected one of {export_torch.LAYOUTS}")
    if not isinstance(weights, str) or os.path.basename(weights) != weights or not weights:
        raise safe_load.CheckpointFileError(
            f"{path}: \"weights\" is {weights!r}; expected a file name in the folder")
    model = info.get("model") if isinstance(info.get("model"), dict) else None
    return os.path.join(folder, weights), layout, export_torch.saved_data(info, path), model

