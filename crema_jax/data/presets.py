"""THE preset registry: how a record file becomes a model's input, each path a named preset.

`PRESETS[name]` holds the data fields a preset sets (`apply(data_cfg, name)` writes them; the
config's data.preset names the one in use) and its preprocessing (`preprocessing(name)`; the
fields are documented in signal/preprocess.py). Every command reads its data path from here, and
`crema-jax prepare --preprocess=NAME` caches records with the same preprocessing. "none" is a
preprocessing only (no filter, no normalisation: a cache of raw millivolts), not a data path.
The steps of the three data paths, in the order the pipeline runs them:

| step | "crema" (our models' default) | "stmem" (ST-MEM's scripts) | "ecgfounder" (its code) |
|---|---|---|---|
| read | wfdb, leads by name and alias, units to mV | same | same |
| NaN | short runs interpolated | a 10 s window with any NaN is dropped | NaN -> 0 |
| flat lead | a constant lead becomes an absent zero row (out of statistics and pooling) | kept as recorded, pooled like any lead | kept as recorded |
| limb leads | absent III/aVR/aVL/aVF derived | not derived | not derived |
| examples | the whole record | non-overlapping 10 s windows at the record's rate, the remainder dropped; records under 10 s dropped (a skip) | the whole record |
| rate | polyphase to 250 Hz | FFT (scipy.signal.resample) to int(T * 250 / fs) | 500 Hz (polyphase only if the file is not) |
| lead subset | the fed leads selected before any statistics (all presets) | | |
| filters | on the record: order-5 high-pass 0.67 Hz then low-pass 40 Hz, sosfiltfilt | on each crop, same two passes | on the record: notch 50 Hz Q 30, order-4 band-pass 0.67-40 Hz, both (b, a) filtfilt; medfilt baseline (zero edges) subtracted |
| standardise | one z-score of the recorded leads of the record | one z-score of each crop over its leads (std 0 -> zeros) | one z-score of the array, std + 1e-8 |
| crops | 3 crops of 2250 (batch.eval_crop_starts) | the same starts (0, s, 2s; s = (T - 2250) // 2) | one window of 5000, centred |
| averaging | probe: crops' features; finetune: logits | crops' probabilities | one crop |
| fine-tuning recipe | layer-wise lr decay 0.75, drop-path 0.1 | no layer-wise decay, drop-path 0 (evaluate/finetune.py RECIPE_BY_DATA_PATH) | Net1D is probed |
| lead embedding | by lead identity (model.lead_embedding "canonical") | by position ("position"; set by import-torch --format=stmem) | Net1D has none |

`crema` keeps our own choices (one filter and z-score per record is cheaper and sees whole
beats; polyphase resampling of a whole record has no FFT wrap-around at its ends). The peers'
paths exist so that their released weights give their authors' outputs from the raw files.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping

import ml_collections

from crema_jax.data.signal.preprocess import default_preprocess_config


@dataclasses.dataclass(frozen=True)
class Preset:
    preprocessing: Mapping    # how its preprocessing differs from default_preprocess_config()
    data_path: Mapping | None  # the data fields it sets; None: a preprocessing only


_CREMA = dict(target_fs=250.0, resample="polyphase", window_seconds=0.0, nan_policy="interpolate",
              flat_leads="absent", derive_limb_leads=True, crop_samples=2250, patch_size=75,
              eval_num_crops=3, eval_crop_average="embedding")

PRESETS = {
    "crema": Preset(preprocessing={}, data_path=_CREMA),
    "stmem": Preset(
        preprocessing=dict(stage="crop", stats="all"),
        data_path={**_CREMA, "resample": "fft", "window_seconds": 10.0,
                   "nan_policy": "drop_window", "flat_leads": "keep",
                   "derive_limb_leads": False, "eval_crop_average": "probability"}),
    "ecgfounder": Preset(
        preprocessing=dict(filter_type="bandpass", filter_order=4, filter_form="ba",
                           notch_hz=50.0, baseline="median", baseline_edges="zero",
                           norm_eps=1e-8, stats="all"),
        # One "patch" per lead: the whole 10 s window at 500 Hz.
        data_path={**_CREMA, "target_fs": 500.0, "nan_policy": "zero", "flat_leads": "keep",
                   "derive_limb_leads": False, "crop_samples": 5000, "patch_size": 5000,
                   "eval_num_crops": 1}),
    "none": Preset(preprocessing=dict(filter_type="none", normalise="none"), data_path=None),
}
NAMES = tuple(name for name, preset in PRESETS.items() if preset.data_path is not None)


def preprocessing(name: str) -> ml_collections.ConfigDict:
    """A fresh preprocessing config of preset `name` (any of PRESETS, "none" included)."""
    if name not in PRESETS:
        raise ValueError(f"preprocessing preset {name!r}: expected one of {sorted(PRESETS)}")
    cfg = default_preprocess_config()
    for key, value in PRESETS[name].preprocessing.items():
        cfg[key] = value
    return cfg


def _write(data_cfg, name: str) -> None:
    for key, value in PRESETS[name].data_path.items():
        data_cfg[key] = value
    data_cfg.preprocess = preprocessing(name)


def fill_missing(data_cfg, saved_data: dict) -> None:
    """In place: the fields of data_cfg's preset that `saved_data` (a checkpoint's stored data
    section) lacks take the preset's value, not the generic default (a checkpoint written
    before a field existed keeps its data path)."""
    name = data_cfg.get("preset")
    if name not in NAMES:
        return
    reference = data_cfg.copy_and_resolve_references()
    with reference.unlocked():
        _write(reference, name)
    with data_cfg.unlocked():
        for key in reference:
            if key not in saved_data and key != "preset" and reference[key] != data_cfg[key]:
                data_cfg[key] = reference[key]


# What tells the data paths apart (geometry such as target_fs or crop_samples may be tuned
# under a preset's name; these make it another path).
_IDENTITY = ("resample", "nan_policy", "flat_leads", "derive_limb_leads", "eval_crop_average")
_PREPROCESS_IDENTITY = ("stage", "filter_type", "filter_form", "baseline", "notch_hz")


def contradictions(data_cfg) -> list[str]:
    """The fields of data_cfg that contradict the path its data.preset names ("field=ours
    (the preset's)"): a --config.data.preset= override renames the path without setting it."""
    name = data_cfg.get("preset")
    if name not in NAMES:
        return []
    want = PRESETS[name].data_path
    out = [f"{key}={data_cfg[key]!r} ({name}: {want[key]!r})" for key in _IDENTITY
           if key in data_cfg and data_cfg[key] != want[key]]
    ours, theirs = data_cfg.get("preprocess"), preprocessing(name)
    if ours is not None:
        out += [f"preprocess.{key}={ours.get(key)!r} ({name}: {theirs[key]!r})"
                for key in _PREPROCESS_IDENTITY if ours.get(key) != theirs[key]]
    return out


def apply(data_cfg, name: str):
    """Sets the fields of data-path preset `name` on data_cfg (in place) and returns it."""
    if name not in NAMES:
        raise ValueError(f"data.preset={name!r}: expected one of {list(NAMES)}")
    with data_cfg.unlocked():
        _write(data_cfg, name)
        data_cfg.preset = name
    return data_cfg
