"""Data paths: how a record file becomes a model's input, each a named preset (data.preset).

A preset sets every data field that decides the path, step by step; `apply(data_cfg, name)`
writes them. The steps, in the order the pipeline runs them:

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

from crema_jax.data.signal import preprocess as preprocess_lib

NAMES = ("crema", "stmem", "ecgfounder")


def _crema(cfg) -> None:
    cfg.target_fs = 250.0
    cfg.resample = "polyphase"
    cfg.window_seconds = 0.0
    cfg.nan_policy = "interpolate"
    cfg.flat_leads = "absent"
    cfg.derive_limb_leads = True
    cfg.preprocess = preprocess_lib.PRESETS["crema"]()
    cfg.crop_samples, cfg.patch_size, cfg.eval_num_crops = 2250, 75, 3
    cfg.eval_crop_average = "embedding"


def _stmem(cfg) -> None:
    _crema(cfg)
    cfg.resample = "fft"
    cfg.window_seconds = 10.0
    cfg.nan_policy = "drop_window"
    cfg.flat_leads = "keep"
    cfg.derive_limb_leads = False
    cfg.preprocess = preprocess_lib.PRESETS["stmem"]()
    cfg.eval_crop_average = "probability"


def _ecgfounder(cfg) -> None:
    _crema(cfg)
    cfg.target_fs = 500.0
    cfg.nan_policy = "zero"
    cfg.flat_leads = "keep"
    cfg.derive_limb_leads = False
    cfg.preprocess = preprocess_lib.PRESETS["ecgfounder"]()
    cfg.crop_samples = cfg.patch_size = 5000  # one "patch" per lead: the whole 10 s window
    cfg.eval_num_crops = 1


_APPLY = {"crema": _crema, "stmem": _stmem, "ecgfounder": _ecgfounder}


def fill_missing(data_cfg, saved_data: dict) -> None:
    """In place: the fields of data_cfg's preset that `saved_data` (a checkpoint's stored data
    section) lacks take the preset's value, not the generic default (a checkpoint written
    before a field existed keeps its data path)."""
    name = data_cfg.get("preset")
    if name not in _APPLY:
        return
    reference = data_cfg.copy_and_resolve_references()
    with reference.unlocked():
        _APPLY[name](reference)
    with data_cfg.unlocked():
        for key in reference:
            if key not in saved_data and key != "preset" and reference[key] != data_cfg[key]:
                data_cfg[key] = reference[key]


def apply(data_cfg, name: str):
    """Sets the fields of preset `name` on data_cfg (in place) and returns it."""
    if name not in _APPLY:
        raise ValueError(f"data.preset={name!r}: expected one of {list(NAMES)}")
    with data_cfg.unlocked():
        _APPLY[name](data_cfg)
        data_cfg.preset = name
    return data_cfg
