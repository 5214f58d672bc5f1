"""Grain input pipelines: pretraining batches (masked views) and evaluation batches (fixed crops).

Pretraining chain (one seed -> the same batches on every run and after a checkpoint restore):

    RecordOrder  seeded shuffle, reshuffled every epoch -> per-process shard [p::P] -> chunks of
                 B record ids (one vectorised lookup per batch; see below)
      -> ReadChunk      read + preprocess / decode each record; failures counted and dropped
      -> NonEmpty       filter: a chunk whose records all failed disappears
      -> PretrainViews  RandomMap: random crop, per-view augment, patchify, mask
      -> to_iter_dataset -> rebatch(B, drop_remainder=True) -> mp_prefetch(num_workers)
      -> ExpandViews    copy the shared crop into V views (in the consuming process)

Why chunks instead of one Grain op per record: Grain spends ~10 us of bookkeeping per op per
element (~90 us for a source-shuffle-repeat-slice-map-filter-map chain, measured), and
grain's index_shuffle costs ~65 us per element on datasets of ~1e3 records. The cache target
(>= 5,000 ECGs/s per worker = 200 us per ECG including the read) leaves no room for that, so each
Grain element is a batch-sized chunk of records. Skipped records make a chunk short; `rebatch`
restores the fixed batch size (and passes full chunks through without a copy). Randomness is
per chunk: RandomMap hands each chunk a Generator derived from (seed, chunk position), so there is
no global RNG state and restores are exact.

Evaluation chain: source order, one pass, the crops of `batch.eval_crop_starts`, no masking; the
last partial batch is zero-padded to B with "valid" (B,) bool marking the real rows.

Batch formats: crema_jax/data/batch.py.
"""
from __future__ import annotations

import sys
from typing import Any, Mapping, Sequence

import grain
import jax
import ml_collections
import numpy as np
from grain.experimental import RebatchIterDataset

from crema_jax.data import augment as augment_lib
from crema_jax.data import batch as batch_lib
from crema_jax.data import masking
from crema_jax.data import preprocess as preprocess_lib
from crema_jax.data import records
from crema_jax.data.leads import LEADS
from crema_jax.data import sources as sources_lib
from crema_jax.data.sources import SkipStats, WfdbSource


# ---------------------------------------------------------------- record order

class RecordOrder:
    """Grain data source whose element k is the k-th chunk of record ids of this process.

    Global order: epoch e is a permutation of range(n) drawn from default_rng([seed, e]) (or the
    identity when shuffle=False); epochs are concatenated; this process takes every
    process_count-th position starting at process_index; chunk k holds positions [kB, (k+1)B).
    """

    def __init__(self, num_records: int, *, chunk_size: int, seed: int, shuffle: bool,
                 num_epochs: int | None, process_index: int, process_count: int):
        if num_records <= 0:
            raise ValueError("the data source holds no records (check data.root / data.split)")
        self.n, self.chunk, self.seed, self.shuffle = num_records, chunk_size, seed, shuffle
        self.num_epochs, self.pi, self.pc = num_epochs, process_index, process_count
        total = sys.maxsize if num_epochs is None else num_records * num_epochs
        self.per_process = len(range(process_index, total, process_count))
        self._perms: dict[int, np.ndarray] = {}

    def __getstate__(self):
        return {**self.__dict__, "_perms": {}}  # Workers rebuild permutations on demand.

    def __len__(self) -> int:
        return -(-self.per_process // self.chunk)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) >= 2:  # Keep the two latest: chunks rarely span more epochs.
                self._perms.pop(min(self._perms))
            self._perms[epoch] = (np.random.default_rng([self.seed, epoch]).permutation(self.n)
                                  if self.shuffle else np.arange(self.n))
        return self._perms[epoch]

    def __getitem__(self, k: int) -> np.ndarray:
        local = np.arange(k * self.chunk, min((k + 1) * self.chunk, self.per_process))
        positions = self.pi + self.pc * local
        epochs, within = np.divmod(positions, self.n)
        out = np.empty(len(positions), np.int64)
        for epoch in np.unique(epochs):
            sel = epochs == epoch
            out[sel] = self._permutation(int(epoch))[within[sel]]
        return out

    def __repr__(self) -> str:
        return (f"RecordOrder(n={self.n}, chunk={self.chunk}, seed={self.seed}, "
                f"shuffle={self.shuffle}, epochs={self.num_epochs}, shard={self.pi}/{self.pc})")


# ---------------------------------------------------------------- reading, with skips

class ReadChunk(grain.transforms.Map):
    """Record ids -> loaded records; a failure is counted and dropped (raised when strict)."""

    def __init__(self, source: Any, stats: SkipStats, strict: bool):
        self.source, self.stats, self.strict = source, stats, strict

    def map(self, ids: np.ndarray) -> list[dict]:
        loaded = []
        for index in ids:
            ref = self.source[int(index)]
            try:
                element = self.source.load(ref)
            except records.RecordError as e:
                if self.strict:
                    raise
                self.stats.record(e.reason, str(e.path), str(e))
                continue
            except Exception as e:  # noqa: BLE001 - any record may be broken in a new way.
                message = f"{ref['path']}: unexpected {type(e).__name__} while reading: {e}"
                if self.strict:
                    raise RuntimeError(message) from e
                self.stats.record("unexpected_error", ref["path"], message)
                continue
            element["index"], element["labels"] = ref["index"], ref["labels"]
            loaded.append(element)
        return loaded


class NonEmpty(grain.transforms.Filter):
    def filter(self, chunk: Sequence) -> bool:
        return len(chunk) > 0


# ---------------------------------------------------------------- crops, views, masks

def lead_rows(names: Sequence[str]) -> np.ndarray:
    """Canonical row ids of the configured leads (data.leads), in the configured order."""
    unknown = [name for name in names if name not in LEADS]
    if unknown or not names:
        raise ValueError(f"data.leads: expected names from {LEADS}, got {tuple(names)}")
    return np.asarray([LEADS.index(name) for name in names], dtype=np.int32)


class _Geometry:
    def __init__(self, data_cfg: Mapping):
        self.rows = lead_rows(tuple(data_cfg["leads"]))
        # Plain slicing (a view) when all 12 leads are used in canonical order.
        self.row_sel = slice(None) if tuple(self.rows) == tuple(range(len(LEADS))) else self.rows
        self.crop = int(data_cfg["crop_samples"])
        self.patch = int(data_cfg["patch_size"])
        self.num_patches = batch_lib.num_patches(data_cfg)
        pre = data_cfg["preprocess"]
        # A crop-stage preset (ST-MEM's) filters and standardises each crop after cutting it.
        self.crop_preprocess = (ml_collections.ConfigDict(dict(pre)) if pre is not None
                                and pre["stage"] == "crop" else None)
        self.fs = float(data_cfg["target_fs"])

    def fill(self, out: np.ndarray, element: Mapping, starts: Sequence[int]) -> np.ndarray:
        """Write crop [start, start+crop) of the selected rows for each start into out[c]
        (C, L, crop); zero-pad the ends; return the real samples per crop (C,). A quantised
        signal (cache) is scaled here, in the same pass that copies a crop; a crop-stage preset
        then runs on the real samples, on all crops of one length in one vectorised call."""
        real = np.empty(len(starts), np.int64)
        scale = element.get("scale")
        for c, start in enumerate(starts):
            window = element["signal"][self.row_sel, start:start + self.crop]
            real[c] = window.shape[1]
            if scale is None:
                out[c, :, :real[c]] = window
            else:
                np.multiply(window, scale[self.row_sel, None], out=out[c, :, :real[c]],
                            casting="unsafe")
            out[c, :, real[c]:] = 0.0
        if self.crop_preprocess is not None:
            present = np.asarray(element["lead_present"], bool)[self.rows]
            groups = [slice(None)] if (real == real[0]).all() else [[c] for c in range(len(real))]
            for sel in groups:
                n = int(real[sel][0])
                if n >= 2:
                    out[sel, :, :n] = preprocess_lib.preprocess(
                        out[sel, :, :n], self.fs, self.crop_preprocess, lead_present=present)
        return real

    def patch_valid(self, lead_valid: np.ndarray, real: np.ndarray) -> np.ndarray:
        """lead_valid (..., L), real samples (...) -> (..., L, N). A patch with ANY padding is
        invalid: no reconstruction target or pooled feature should contain appended zeros."""
        full = (real // self.patch)[..., None, None]
        return lead_valid[..., None] & (np.arange(self.num_patches) < full)


class PretrainViews(grain.transforms.RandomMap):
    """Chunk of loaded records -> stacked pretraining arrays (the batch.py format).

    compact=True (the pipeline's setting) emits a crop shared by all views once, as patches
    (n, 1, L, N, P); ExpandViews restores the V axis after the worker processes.
    """

    def __init__(self, data_cfg: Mapping, *, compact: bool = False):
        self.compact = compact
        self.geo = _Geometry(data_cfg)
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
        self.geo = _Geometry(data_cfg)
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


# ---------------------------------------------------------------- sources and datasets

def cache_source(data_cfg: Mapping, *, split: str = ""):
    """The prepared cache of data.cache_dir, checked against the data path: it must hold records
    resampled and preprocessed as data_cfg says (CacheSource raises, naming the setting), and a
    cache holds whole records, so windowed or crop-stage paths need the raw files."""
    from crema_jax.data import cache

    reading = sources_lib.Reading.from_data_config(data_cfg)
    if reading.window_seconds > 0 or reading.native_rate or (
            data_cfg["preprocess"] is not None and reading.preprocess is None):
        raise ValueError(f"data.cache_dir: a cache holds whole preprocessed records; the "
                         f"{data_cfg['preset']!r} data path (windows, FFT resampling or per-crop "
                         "preprocessing) reads the raw records (data.root) instead")
    # `crema-jax prepare` reads every record with NaN runs interpolated and constant leads
    # absent (read_record's defaults); a path that reads them otherwise needs the raw files.
    for field, cached in (("nan_policy", "interpolate"), ("flat_leads", "absent")):
        if getattr(reading, field) != cached:
            raise ValueError(f"data.cache_dir: a cache holds records read with data.{field}="
                             f"{cached!r}; the {data_cfg['preset']!r} data path reads them with "
                             f"{getattr(reading, field)!r}, so it reads the raw records "
                             "(data.root) instead")
    return cache.CacheSource(data_cfg["cache_dir"], split=split,
                             expect_target_fs=data_cfg["target_fs"],
                             expect_preprocess=reading.preprocess,
                             expect_derive_limb_leads=reading.derive_limb_leads)


def make_source(data_cfg: Mapping, *, split: str | None = None):
    """The configured source: synthetic ECGs when data.synthetic_records > 0, the ArrayRecord cache
    when data.cache_dir is set, else raw WFDB records of data.layout under data.root. `split`
    ("" = all records) defaults to data.split (synthetic records have no splits)."""
    split = data_cfg["split"] if split is None else split
    if int(data_cfg["synthetic_records"]) > 0:
        from crema_jax.data import synthetic

        return synthetic.synthetic_source(data_cfg)
    if data_cfg["cache_dir"]:
        return cache_source(data_cfg, split=split)
    from crema_jax.data import layouts  # Only raw-WFDB pipelines need the layout registry.

    if not data_cfg["root"]:
        raise ValueError("data.root: set the dataset folder (or data.cache_dir for a cache)")
    index = layouts.build_index(data_cfg["layout"], data_cfg["root"],
                                **dict(data_cfg["layout_options"]))
    infos = [info for info in index.records if not split or info.split == split]
    return WfdbSource(infos, index.label_names,
                      reading=sources_lib.Reading.from_data_config(data_cfg),
                      keep_in_memory=bool(data_cfg["keep_in_memory"]))


def _shard(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if not 0 <= index < count:
        raise ValueError(f"process_index={index} must be in [0, process_count={count})")
    return index, count


def _build(data_cfg: Mapping, source: Any, order: RecordOrder, stats: SkipStats | None,
           transform: Any) -> grain.IterDataset:
    stats = SkipStats() if stats is None else stats
    if data_cfg["skip_log_dir"]:
        stats.log_dir = data_cfg["skip_log_dir"]
    ds = grain.MapDataset.source(order).seed(int(data_cfg["seed"]))
    ds = ds.map(ReadChunk(source, stats, bool(data_cfg["strict"]))).filter(NonEmpty())
    ds = ds.random_map(transform) if isinstance(transform, grain.transforms.RandomMap) \
        else ds.map(transform)
    return ds.to_iter_dataset(grain.ReadOptions(
        num_threads=int(data_cfg["read_threads"]),
        prefetch_buffer_size=int(data_cfg["prefetch_buffer_size"])))


def _prefetch(ds: grain.IterDataset, data_cfg: Mapping) -> grain.IterDataset:
    if int(data_cfg["num_workers"]) > 0:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=int(data_cfg["num_workers"]),
            per_worker_buffer_size=int(data_cfg["per_worker_buffer_size"])))
    return ds


def _batch_size(data_cfg: Mapping) -> int:
    if data_cfg["batch_size"] is None:
        raise ValueError("data.batch_size: set the per-process batch size")
    return int(data_cfg["batch_size"])


def make_pretrain_dataset(data_cfg: Mapping, *, source: Any = None,
                          process_index: int | None = None, process_count: int | None = None,
                          stats: SkipStats | None = None) -> grain.IterDataset:
    """Batches of masked views (batch.py's pretraining format), B = data.batch_size per process.

    `source` defaults to `make_source(data_cfg)`; process_index/count default to JAX's.
    `stats` receives the skip counts (exact when data.num_workers == 0).
    data.num_epochs None = an endless stream, reshuffled every epoch.
    """
    source = make_source(data_cfg) if source is None else source
    index, count = _shard(process_index, process_count)
    batch = _batch_size(data_cfg)
    order = RecordOrder(len(source), chunk_size=batch, seed=int(data_cfg["seed"]), shuffle=True,
                        num_epochs=data_cfg["num_epochs"], process_index=index,
                        process_count=count)
    ds = _build(data_cfg, source, order, stats, PretrainViews(data_cfg, compact=True))
    ds = _prefetch(RebatchIterDataset(ds, batch, drop_remainder=True), data_cfg)
    return ds.map(ExpandViews(int(data_cfg["num_views"])))


def make_eval_dataset(data_cfg: Mapping, *, source: Any = None, split: str | None = None,
                      process_index: int | None = None, process_count: int | None = None,
                      stats: SkipStats | None = None) -> grain.IterDataset:
    """One pass over the split in source order: batch.py's evaluation batches (the crops of
    `batch.eval_crop_starts`, labels, the last batch padded and marked by "valid")."""
    source = make_source(data_cfg, split=split) if source is None else source
    index, count = _shard(process_index, process_count)
    batch = _batch_size(data_cfg)
    order = RecordOrder(len(source), chunk_size=batch, seed=int(data_cfg["seed"]), shuffle=False,
                        num_epochs=1, process_index=index, process_count=count)
    ds = _build(data_cfg, source, order, stats, EvalCrops(data_cfg))
    ds = RebatchIterDataset(ds, batch, drop_remainder=False).map(PadBatch(batch))
    return _prefetch(ds, data_cfg)
