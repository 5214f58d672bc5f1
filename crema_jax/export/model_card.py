"""The model card (README.md) of a hub folder, written from its config.json content.

It states what the model is, the data path step by step (the steps of data/presets.py's table for
the model's preset, then the values this model was configured with), the labels, how it was
pretrained, and how to load it in crema_jax and in PyTorch. Everything comes from the folder's
config and the preset registry: nothing about a data path is written twice.
"""
from __future__ import annotations

import json

from crema_jax.data import presets
from crema_jax.data.pipeline import batch as batch_lib
from crema_jax.export import convert


def preset_steps(preset: str) -> list[tuple[str, str]]:
    """(step, what `preset` does there) in pipeline order, from data/presets.py's table; a step
    its column leaves empty or calls "same" is done as in the first (crema) column."""
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in (presets.__doc__ or "").splitlines() if line.startswith("|")]
    if not rows:
        return []
    header = rows[0]
    column = next((i for i, cell in enumerate(header) if cell.startswith(f'"{preset}"')), None)
    if column is None:
        return []
    steps = []
    for row in rows[1:]:
        if len(row) != len(header) or set(row[0]) <= {"-"}:
            continue
        cell = row[column]
        steps.append((row[0], row[1] if cell in ("", "same") else cell))
    return steps


def _what(info: dict, keys) -> list[str]:
    model = info["model"]
    if info["layout"] == "ecgfounder":
        shape = (f"Net1D (ECGFounder's architecture), {model['in_channels']} lead(s), "
                 f"stage widths {model['filters']}, blocks {model['blocks']}, "
                 f"{model['num_classes']} outputs")
    else:
        shape = (f"SiT encoder (CREMA / ST-MEM family), width {model['width']}, depth "
                 f"{model['depth']}, {model['num_heads']} heads, patches of "
                 f"{model['patch_size']} samples, {model['num_classes']} head outputs"
                 + (", with its MAE decoder" if convert.holds_decoder(keys) else ""))
    return ["## What it is", "",
            f"A 12-lead ECG model in crema_jax: {shape}. The weights are `{info['weights']}` "
            f"({len(keys)} tensors) in the `{info['layout']}` PyTorch key layout; the full "
            "configuration is in `config.json`.", ""]


def _data_path(info: dict) -> list[str]:
    path = info["data_path"]
    lines = ["## Data path (file to model input)", "",
             f"The model expects the `{path['preset']}` data path of crema_jax "
             "(`crema_jax/data/presets.py`). Feeding it any other way (another rate, other "
             "filters, no z-score) gives other outputs. Step by step:", ""]
    lines += [f"{i}. **{step}**: {text}" for i, step, text in
              ((i + 1, s, t) for i, (s, t) in enumerate(preset_steps(path["preset"])))]
    values = {k: v for k, v in path.items() if k not in ("preset", "preprocess")}
    lines += ["", "This model's values (`config.json` `data_path`):", "",
              f"- sampling rate: {values.get('target_fs')} Hz ({values.get('resample')} "
              f"resampling); crop: {values.get('crop_samples')} samples, "
              f"{batch_lib.crops_text(values.get('eval_num_crops'))} at evaluation",
              "- " + ", ".join(f"{k}={v}" for k, v in values.items()),
              "- filters and normalisation: "
              + ", ".join(f"{k}={v}" for k, v in path["preprocess"].items()), ""]
    return lines


def _labels(info: dict) -> list[str]:
    labels = info["labels"]
    if labels is None:
        outputs = info["model"].get("num_classes", 0)
        text = ("No classification head: the model gives features." if not outputs else
                f"{outputs} outputs; their names were not recorded with the checkpoint.")
        return ["## Labels", "", text, ""]
    return (["## Labels", "", f"The head's {len(labels)} outputs are ECGFounder's labels "
             "(multi-label: one sigmoid per label), in output order:", ""]
            + [f"{i}. {name}" for i, name in enumerate(labels)] + [""])


def _pretraining(info: dict) -> list[str]:
    pre = info["pretraining"]
    lines = ["## How it was pretrained", ""]
    source = pre.get("imported_from")
    if source:
        if not isinstance(source, dict):  # a hand-edited config: what it says, as it says it
            source = {"path": str(source)}
        origin = source.get("uri") or source.get("path")
        commit = f" at commit {source['commit']}" if source.get("commit") else ""
        lines += [f"Weights imported with `crema-jax import-torch` from `{origin}`{commit} "
                  "(pretrained by that model's authors; see its own card).", ""]
        return lines
    train, data, loss, optim = pre["train"], pre["data"], pre["loss"], pre["optim"]
    where = (f"{data['synthetic_records']} synthetic ECGs" if data["synthetic_records"] else
             f"layout `{data['layout']}`")
    lines += [f"- steps: {pre['step']} of {train['num_steps']}, global batch "
              f"{train['global_batch_size']}, seed {train['seed']}",
              f"- data: {where}", f"- loss: `{loss['name']}`",
              "- optimizer: " + ", ".join(f"{k}={v}" for k, v in optim.items()
                                          if not isinstance(v, dict)),
              "- the full configuration: `config.json` `config`", ""]
    return lines


def _loading(info: dict) -> list[str]:
    lines = ["## Loading", "", "crema_jax (`pip install crema_jax[hub]`): the folder, local or "
             "on the hub, imports with its data path, no flag needed:", "", "```bash",
             "crema-jax import-torch hf://OWNER/REPO --out=/ckpt/model   # or a local folder",
             "crema-jax embed --checkpoint=/ckpt/model --input=RECORDS_DIR --out=features.npy"]
    if info["labels"] is not None:
        lines.append("crema-jax predict --model=ecgfounder --checkpoint=/ckpt/model RECORD")
    lines += ["```", "", "PyTorch:", "", "```python"]
    if info["layout"] == "ecgfounder":
        model = info["model"]
        lines += ["from safetensors.torch import load_file",
                  "from net1d import Net1D  # ECGFounder's own module (PKUDigitalHealth/ECGFounder)",
                  f"model = Net1D(in_channels={model['in_channels']}, base_filters=64, "
                  "ratio=1, filter_list=" + json.dumps(model["filters"]) + ", "
                  "m_blocks_list=" + json.dumps(model["blocks"]) + f", kernel_size="
                  f"{model['kernel']}, stride={model['stride']}, groups_width="
                  f"{model['group_width']}, verbose=False, use_bn=False, use_do=False, "
                  f"n_classes={model['num_classes']})",
                  "model.load_state_dict(load_file(\"model.safetensors\"))"]
    else:
        lines += ["import json",
                  "from crema_jax.export.torch_sit import load_sit  # pip install crema_jax[torch]",
                  "config = json.load(open(\"config.json\"))[\"model\"]",
                  "model = load_sit(\"model.safetensors\", config=config)",
                  "features = model.features(patches, lead_indices)  # (B, L, N, P), (B, L)"]
    return lines + ["```", "", "The input must be prepared as the data path above says.", ""]


def render(info: dict, keys) -> str:
    """README.md of a hub folder whose config.json holds `info` and whose weights have `keys`."""
    tags = ["ecg", "crema_jax", info["layout"]]
    front = ["---", "library_name: crema_jax", "tags:"] + [f"- {t}" for t in tags] + ["---", ""]
    title = "ECGFounder (Net1D)" if info["layout"] == "ecgfounder" else "CREMA SiT"
    body = [f"# {title} for crema_jax", ""]
    for section in (_what(info, list(keys)), _data_path(info), _labels(info),
                    _pretraining(info), _loading(info)):
        body += section
    return "\n".join(front + body)
