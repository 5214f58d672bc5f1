"""The batch contract: the arrays that cross from the input pipeline to a model, and the crops.

Every batch is a dict of numpy arrays with fixed shapes (no ragged shape ever reaches `jit`).
B = ECGs in the batch (per process), V = views, C = evaluation crops, L = leads fed
(`data.leads`), N = patches per lead (`data.crop_samples // data.patch_size`), P = samples per
patch, K / M = visible / masked patches per view (fixed by the mask strategy and ratio).

Pretraining batch (`datasets.make_pretrain_dataset`; the train step reads `PRETRAIN_KEYS`):

| key            | shape              | dtype   | meaning                                        |
|----------------|--------------------|---------|------------------------------------------------|
| `patches`      | (B, V, L, N, P)    | float32 | every patch of the crop                        |
| `mask`         | (B, V, L, N)       | bool    | True = hidden from the encoder                 |
| `visible_idx`  | (B, V, K)          | int32   | flat lead-major indices l*N+n, ascending       |
| `masked_idx`   | (B, V, M)          | int32   | flat lead-major indices l*N+n, ascending       |
| `patch_valid`  | (B, V, L, N)       | bool    | False for padding and absent leads             |
| `lead_indices` | (B, L)             | int32   | canonical lead ids (0 = I ... 11 = V6)         |
| `index`        | (B,)               | int64   | record position in the source (host only)      |

Evaluation batch (`datasets.make_eval_dataset`; probe, finetune, embed and predict read
`EVAL_KEYS` through one model function, inference/backbones.py):

| key            | shape              | dtype   | meaning                                        |
|----------------|--------------------|---------|------------------------------------------------|
| `patches`      | (B, C, L, N, P)    | float32 | the C crops of `eval_crop_starts`              |
| `patch_valid`  | (B, C, L, N)       | bool    | False for padding and absent leads             |
| `lead_indices` | (B, L)             | int32   | canonical lead ids                             |
| `labels`       | (B, classes)       | float32 | multi-hot (0 columns when the source has none) |
| `index`        | (B,)               | int64   | record position in the source                  |
| `valid`        | (B,)               | bool    | False on the rows padding the last batch       |

A patch with ANY padded sample is invalid: no reconstruction target and no pooled feature
contains appended zeros.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from crema_jax.data.pipeline import masking

PRETRAIN_KEYS = ("patches", "mask", "visible_idx", "masked_idx", "patch_valid", "lead_indices")
EVAL_KEYS = ("patches", "patch_valid", "lead_indices")


def num_patches(data_cfg: Mapping) -> int:
    crop, patch = int(data_cfg["crop_samples"]), int(data_cfg["patch_size"])
    if patch < 1:  # a checkpoint's saved data path: 0 had been a ZeroDivisionError traceback
        raise ValueError(f"data.patch_size={patch} must be a whole number of samples >= 1")
    if crop % patch:
        raise ValueError(f"data.crop_samples={crop} must be a multiple of data.patch_size={patch}")
    return crop // patch


def eval_crop_starts(length: int, crop: int, num_crops: int) -> list[int]:
    """Where the evaluation crops of a record of `length` samples start: THE crop policy of every
    command (probe, finetune, embed, predict).

    - One crop: the centred one, start (length - crop) // 2.
    - C > 1 crops: starts 0, s, 2s, ... with s = (length - crop) // (C - 1): the first crop opens
      the record, the last ends at (or, for an odd remainder, one sample before) its end. For
      C = 3 this is ST-MEM's formula s = (T - 2250) // 2: 0/125/250 for a 10 s record at 250 Hz,
      0/750/1500 for 15 s, 0/6375/12750 for 60 s.
    - A record no longer than the crop: every crop starts at 0 (zero-padded, patches invalid).
    Always `num_crops` starts, so batches keep one shape.
    """
    if num_crops < 1:
        raise ValueError(f"data.eval_num_crops={num_crops}: expected at least 1")
    spare = max(int(length) - int(crop), 0)
    if num_crops == 1:
        return [spare // 2]
    step = spare // (num_crops - 1)
    return [i * step for i in range(num_crops)]


def crops_text(count: int, samples: int | None = None) -> str:
    """How messages name the evaluation crops: 'one crop of 5000 samples', '3 crops of 2250
    samples' ('one crop', '3 crops' without `samples`)."""
    text = "one crop" if int(count) == 1 else f"{int(count)} crops"
    return text if samples is None else f"{text} of {int(samples)} samples"


def pretrain_spec(data_cfg: Mapping, batch_size: int) -> dict:
    """{key: (shape, dtype)} of the device part of a pretraining batch of `batch_size` ECGs; K and
    M come from one draw of the configured mask strategy (they never depend on the draw)."""
    b, v = int(batch_size), int(data_cfg["num_views"])
    leads, n, p = len(data_cfg["leads"]), num_patches(data_cfg), int(data_cfg["patch_size"])
    visible, masked = masking.mask_sizes(data_cfg["mask"]["name"], leads, n,
                                         float(data_cfg["mask"]["ratio"]))
    return {"patches": ((b, v, leads, n, p), np.float32),
            "mask": ((b, v, leads, n), np.bool_),
            "visible_idx": ((b, v, visible), np.int32),
            "masked_idx": ((b, v, masked), np.int32),
            "patch_valid": ((b, v, leads, n), np.bool_),
            "lead_indices": ((b, leads), np.int32)}


def read_ahead_batches(data_cfg: Mapping) -> dict[str, int]:
    """Batch-sized chunks the pretraining pipeline (datasets.py) holds read ahead in one process
    and its workers, by the field that sets them: each reader (the process, or each of
    data.num_workers workers) keeps data.prefetch_buffer_size chunks when data.read_threads > 0,
    and each worker data.per_worker_buffer_size batches."""
    workers, threads = int(data_cfg["num_workers"]), int(data_cfg["read_threads"])
    return {"data.prefetch_buffer_size":
            max(workers, 1) * int(data_cfg["prefetch_buffer_size"]) if threads else 0,
            "data.per_worker_buffer_size": workers * int(data_cfg["per_worker_buffer_size"])}


def read_ahead_bytes(data_cfg: Mapping, batch_size: int) -> dict[str, int]:
    """The bytes of `read_ahead_batches`, a lower bound: a chunk is counted as one view's
    arrays (views share their crop until the last step), without the records read to make
    it."""
    one_view = {**dict(data_cfg), "num_views": 1}
    batch = sum(int(np.prod(shape)) * np.dtype(dtype).itemsize
                for shape, dtype in pretrain_spec(one_view, batch_size).values())
    return {field: n * batch for field, n in read_ahead_batches(data_cfg).items()}


def device_part(batch: Mapping, keys=PRETRAIN_KEYS) -> dict:
    """The entries a model reads (host-only entries such as `index` stay behind)."""
    return {k: batch[k] for k in keys if k in batch}
