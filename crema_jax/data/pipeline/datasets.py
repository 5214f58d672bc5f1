"""Grain input pipelines: pretraining batches (masked views) and evaluation batches (fixed crops).

Pretraining chain (one seed -> the same batches on every run and after a checkpoint restore):

    RecordOrder  seeded shuffle, reshuffled every epoch -> per-process shard [p::P] -> chunks of
                 B record ids (record_order.py: why chunks)
      -> ReadChunk      read + preprocess / decode each record; failures counted and dropped
      -> NonEmpty       filter: a chunk whose records all failed disappears
      -> PretrainViews  RandomMap: random crop, per-view augment, patchify, mask
      -> to_iter_dataset -> rebatch(B, drop_remainder=True) -> mp_prefetch(num_workers)
      -> ExpandViews    copy the shared crop into V views (in the consuming process)

Each Grain element is a batch-sized chunk of records. Skipped records make a chunk short; `rebatch`
restores the fixed batch size (and passes full chunks through without a copy). Randomness is
per chunk: RandomMap hands each chunk a Generator derived from (seed, chunk position), so there is
no global RNG state and restores are exact.

Evaluation chain: source order, one pass, the crops of `batch.eval_crop_starts`, no masking; the
last partial batch is zero-padded to B with "valid" (B,) bool marking the real rows.

Batch formats: batch.py; the transforms: transforms.py; the sources: sources.py.
"""
from __future__ import annotations

from typing import Any, Mapping

import grain
import jax
from grain.experimental import RebatchIterDataset

from crema_jax.data.pipeline.record_order import RecordOrder
from crema_jax.data.pipeline.skips import SkipStats
from crema_jax.data.pipeline.sources import make_source
from crema_jax.data.pipeline.transforms import (EvalCrops, ExpandViews, NonEmpty, PadBatch,
                                                PretrainViews, ReadChunk, read_record)


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
    if data_cfg["num_epochs"] is None:
        check_one_reads(source)
    order = RecordOrder(len(source), chunk_size=batch, seed=int(data_cfg["seed"]), shuffle=True,
                        num_epochs=data_cfg["num_epochs"], process_index=index,
                        process_count=count)
    ds = _build(data_cfg, source, order, stats, PretrainViews(data_cfg, compact=True))
    ds = _prefetch(RebatchIterDataset(ds, batch, drop_remainder=True), data_cfg)
    return ds.map(ExpandViews(int(data_cfg["num_views"])))


def check_one_reads(source) -> None:
    """ValueError unless at least one record of `source` reads, tried in order until one does.
    An endless stream drops every chunk whose records all fail: with none readable it had
    looped for ever, logging a skip a record (80 MB of log in 90 s) and never a step."""
    reasons: dict[str, int] = {}
    first = None
    for i in range(len(source)):
        _, failure = read_record(source, source[i], strict=False)
        if failure is None:
            return
        reasons[failure[0]] = reasons.get(failure[0], 0) + 1
        first = first or failure[2]
    counts = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items()))
    first = f"; the first: {first}" if first else ""
    raise ValueError(f"no record of the data could be read ({len(source)} tried: "
                     f"{counts or 'the source is empty'}){first}")


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
