"""The Grain transforms of the pipelines (datasets.py): reading a chunk of records with skips,
pretraining views (crop, augment, patchify, mask), evaluation crops, and padding the last batch.
Batch formats: batch.py.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import grain
import numpy as np

from crema_jax.data.cache.source import DamagedCacheError
from crema_jax.data.pipeline import batch as batch_lib
from crema_jax.data.pipeline import masking
from crema_jax.data.pipeline.crops import CropGeometry
from crema_jax.data.pipeline.skips import SkipStats
from crema_jax.data.reading.ecg import RecordError, read_failure
from crema_jax.data.signal import augment as augment_lib


def read_record(source: Any, ref: Mapping, *, strict: bool) -> tuple[dict | None, tuple | None]:
    """(loaded record, None), or (None, (reason, path, message)) for a record that fails to
    read: a RecordError's reason, any other exception "unexpected_error". A DamagedCacheError
    is always raised (a damaged cache stops the run unless its source skips, cache/source.py);
    strict raises every failure."""
    try:
        return source.load(ref), None
    except DamagedCacheError:
        raise
    except Exception as e:  # noqa: BLE001 - any record may be broken in a new way.
        if strict and isinstance(e, RecordError):
            raise
        failure = read_failure(e, ref["path"])
        if strict:
            raise RuntimeError(failure[2]) from e
        return None, failure


class ReadChunk(grain.transforms.Map):
    """Record ids -> loaded records; a failure is counted and dropped (raised when strict)."""

    def __init__(self, source: Any, stats: SkipStats, strict: bool):
        self.source, self.stats, self.strict = source, stats, strict

    def map(self, ids: np.ndarray) -> list[dict]:
        loaded = []
        for index in ids:
            ref = self.source[int(index)]
            element, failure = read_record(self.source, ref, strict=self.strict)
            if failure is not None:
                self.stats.record(*failure, index=int(index))
                continue
            element["index"], element["labels"] = ref["index"], ref["labels"]
            loaded.append(element)
        return loaded


class NonEmpty(grain.transforms.Filter):
    def filter(self, chunk: Sequence) -> bool:
        return len(chunk) > 0


class PretrainViews(grain.transforms.RandomMap):
    """Chunk of loaded records -> stacked pretraining arrays (the batch.py format).

    compact=True (the pipeline's setting) emits a crop shared by all views once, as patches
    (n, 1, L, N, P); ExpandViews restores the V axis after the worker processes.
    """

    def __init__(self, data_cfg: Mapping, *, compact: bool = False):
        self.compact = compact
        self.geo = CropGeometry(data_cfg)
        self.num_views = int(data_cfg["num_views"])
        self.independent_crops = bool(data_cfg["independent_view_crops"])
        self.fs = float(data_cfg["target_fs"])
        self.mask_name = data_cfg["mask"]["name"]
        masking.get_mask_fn(self.mask_name)  # Fail early, naming data.mask.name.
        self.ratio = float(data_cfg["mask"]["ratio"])
        self.augment = dict(data_cfg["augment"])
        self.augment["names"] = tuple(self.augment["names"])

    def _start(self, length: int, rng: np.random.Generator) -> int:
        spare = length - self.geo.crop
        return int(rng.integers(0, spare + 1)) if spare > 0 else 0

    @property
    def shared_crop(self) -> bool:
        """Views identical before masking: the crop is emitted once, ExpandViews copies it."""
        return self.compact and not self.independent_crops and not self.augment["names"]

    def random_map(self, chunk: Sequence[dict], rng: np.random.Generator) -> dict:
        geo, n, views = self.geo, len(chunk), self.num_views
        num_leads, num_patches = len(geo.rows), geo.num_patches
        crops = 1 if self.shared_crop else views
        signals = np.empty((n, crops, num_leads, geo.crop), np.float32)
        real = np.empty((n, views), np.int64)
        lead_valid = np.empty((n, views, num_leads), bool)
        for i, element in enumerate(chunk):
            length = element["signal"].shape[1]
            lead_valid[i] = np.asarray(element["lead_present"], bool)[geo.rows]
            filled = views if self.independent_crops else 1
            real[i, :filled] = geo.fill(signals[i, :filled], element,
                                        [self._start(length, rng) for _ in range(filled)])
        if not self.independent_crops:  # Same crop, different masks (and augmentations).
            real[:, 1:] = real[:, :1]
            if crops > 1:
                signals[:, 1:] = signals[:, :1]
        if self.augment["names"]:
            for i in range(n):
                for v in range(views):
                    signals[i, v], lead_valid[i, v] = augment_lib.apply_augmentations(
                        signals[i, v], lead_valid[i, v], rng, self.augment, self.fs)
        mask, visible, masked = masking.batch_masks(self.mask_name, rng, n * views, num_leads,
                                                    num_patches, self.ratio)
        return {
            "patches": signals.reshape(n, crops, num_leads, num_patches, geo.patch),
            "mask": mask.reshape(n, views, num_leads, num_patches),
            "visible_idx": visible.reshape(n, views, -1),
            "masked_idx": masked.reshape(n, views, -1),
            "patch_valid": geo.patch_valid(lead_valid, real),
            "lead_indices": np.broadcast_to(geo.rows, (n, num_leads)).copy(),
            "index": np.asarray([e["index"] for e in chunk], np.int64),
        }


class ExpandViews(grain.transforms.Map):
    """(B, 1, L, N, P) patches -> (B, V, L, N, P) when all views share one crop.

    Runs after mp_prefetch, in the consuming process: workers then send each crop once through
    shared memory (allocating fresh shared memory, ~150 us per ECG of 216 kB, was the largest cost
    of a worker) and the copy happens where the batch is used anyway.
    """

    def __init__(self, num_views: int):
        self.num_views = num_views

    def map(self, batch: dict) -> dict:
        if batch["patches"].shape[1] != self.num_views:
            batch = dict(batch)
            batch["patches"] = np.repeat(batch["patches"], self.num_views, axis=1)
        return batch


class EvalCrops(grain.transforms.Map):
    """Chunk of loaded records -> the eval crops of each (no masking) and multi-hot labels."""

    def __init__(self, data_cfg: Mapping):
        self.geo = CropGeometry(data_cfg)
        self.num_crops = int(data_cfg["eval_num_crops"])

    def map(self, chunk: Sequence[dict]) -> dict:
        geo, n, crops = self.geo, len(chunk), self.num_crops
        signals = np.empty((n, crops, len(geo.rows), geo.crop), np.float32)
        real = np.empty((n, crops), np.int64)
        lead_valid = np.empty((n, crops, len(geo.rows)), bool)
        for i, element in enumerate(chunk):
            signal = element["signal"]
            lead_valid[i] = np.asarray(element["lead_present"], bool)[geo.rows]
            real[i] = geo.fill(signals[i], element,
                               batch_lib.eval_crop_starts(signal.shape[1], geo.crop, crops))
        return {
            "patches": signals.reshape(n, crops, len(geo.rows), geo.num_patches, geo.patch),
            "patch_valid": geo.patch_valid(lead_valid, real),
            "lead_indices": np.broadcast_to(geo.rows, (n, len(geo.rows))).copy(),
            "labels": np.stack([np.asarray(e["labels"], np.float32) for e in chunk]),
            "index": np.asarray([e["index"] for e in chunk], np.int64),
        }


class PadBatch(grain.transforms.Map):
    """Pad a (possibly short) last batch to batch_size with zero rows; add "valid" (B,) bool."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size

    def map(self, batch: Mapping) -> dict:
        n = len(batch["index"])
        out = {key: np.concatenate([value, np.zeros((self.batch_size - n,) + value.shape[1:],
                                                    value.dtype)])
               for key, value in batch.items()}
        out["valid"] = np.arange(self.batch_size) < n
        return out
