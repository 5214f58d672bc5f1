"""`crema-jax prepare --runner=NAME`: the cache built as an Apache Beam pipeline, on the
DirectRunner (this machine), Dataflow, or Flink / Spark through Beam's portable runner.

    index (here, metadata only) -> shard assignment (prepare.make_plan: shard s holds records
    [s * R, (s + 1) * R) of the layout's order) -> one element per shard: read + canonical ECG
    + preprocess + ArrayRecord shard and sidecar (shard_writer.build_shard, the one function
    that writes a shard, whoever runs it) -> every sidecar -> index.json and summary.json
    (prepare.finish)

settings.json is written before the pipeline starts, as the local path does. The cache is
byte-identical to a local `crema-jax prepare` with the same flags (tests/data/cache/
test_prepare_beam.py compares the files). Skipped records are counted by Beam counters, one per
reason (namespace crema_jax.prepare, name skipped/REASON), and listed with their paths in
summary.json. A worker holds one shard's records at a time; the index travels as shard tasks
(metadata: path, labels, split, source of each record), never a signal. A shard whose sidecar
is already in --out is not written again, so a rerun resumes a failed job.

apache_beam is the optional [beam] extra, imported only inside the functions that run the
pipeline: the local path and Beam's workers import this module's callers without it.
"""
from __future__ import annotations

import logging
import math

from crema_jax.data.cache import prepare, record_format
from crema_jax.data.cache.shard_writer import build_shard
from crema_jax.runtime import storage, workdir

COUNTERS = "crema_jax.prepare"     # the Beam counters' namespace
_SKIPPED = "skipped/"              # counter name prefix, then the skip reason


def beam_flags(runner: str, options: dict) -> list[str]:
    """--runner and the --beam_option KEY=VALUE pairs as Beam's command-line flags (True: a bare
    --KEY, False: left out, as Beam's boolean flags are switches)."""
    flags = [f"--runner={runner}"]
    for key, value in options.items():
        if value is True:
            flags.append(f"--{key}")
        elif value is not False:
            flags.append(f"--{key}={value}")
    return flags


def write_shard(task: dict) -> dict:
    """build_shard(task) on a Beam worker, unless the shard is already complete in the output
    (a rerun); the skips counted by reason. A bad record under --strict fails the pipeline."""
    from apache_beam.metrics import Metrics  # the optional [beam] extra (module docstring)

    name = record_format.shard_name(task["shard"], task["num_shards"])
    sidecar = prepare.load_sidecar(task["out_dir"], name)
    if sidecar is None:
        sidecar = build_shard(task)
        if "strict_error" in sidecar:
            raise prepare.PrepareError(f"(--strict) {sidecar['strict_error']}")
    Metrics.counter(COUNTERS, "records_written").inc(sidecar["num_records"])
    for skip in sidecar["skipped"]:
        Metrics.counter(COUNTERS, _SKIPPED + skip["reason"]).inc()
    return sidecar


def merge_sidecars(sidecars: list[dict], out: str, label_names: list, settings: dict) -> int:
    """index.json and summary.json from every shard's sidecar, in shard order."""
    written, _ = prepare.finish(out, label_names, settings,
                                sorted(sidecars, key=lambda s: s["file"]))
    return written


def _counters(result) -> dict[str, int]:
    """{counter name: committed value} of this pipeline's crema_jax.prepare counters ({} where
    the runner reports none)."""
    from apache_beam.metrics.metric import MetricsFilter  # the optional [beam] extra

    try:
        found = result.metrics().query(MetricsFilter().with_namespace(COUNTERS))["counters"]
    except (NotImplementedError, KeyError, AttributeError):
        return {}
    totals: dict[str, int] = {}
    for counter in found:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + int(value)
    return totals


def new_pipeline(flags: list[str]):
    """A Beam pipeline on the runner the flags name; an unknown runner or option is refused
    here, before anything is written. Beam's import logs optional GCP clients' absence as a
    root WARNING, which a command's output does not need: raised to ERROR meanwhile."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        import apache_beam as beam  # the optional [beam] extra (module docstring)
        from apache_beam.options.pipeline_options import PipelineOptions
    finally:
        root.setLevel(level)
    return beam.Pipeline(options=PipelineOptions(flags))


def run_pipeline(pipeline, plan: prepare.Plan, tasks: list[dict]) -> dict[str, int]:
    """Runs the pipeline to the end; returns its counters."""
    import apache_beam as beam  # the optional [beam] extra (module docstring)

    _ = (pipeline
         | "shard assignment" >> beam.Create(tasks)
         | "read, preprocess, write shards" >> beam.Map(write_shard)
         | "every sidecar" >> beam.combiners.ToList()
         | "index and summary" >> beam.Map(merge_sidecars, out=plan.out,
                                           label_names=list(plan.index.label_names),
                                           settings=plan.settings))
    result = pipeline.run()
    result.wait_until_finish()
    return _counters(result)


def prepare_on_beam(*, layout: str, root: str, out: str, layout_options: dict | None = None,
                    strict: bool = False, target_fs: float = 250.0, preprocess: str = "crema",
                    records_per_shard: int = 1024, dtype: str = "int16",
                    runner: str = "DirectRunner", beam_options: dict | None = None) -> dict:
    """Builds the whole cache in `out` on Beam's `runner`; prints the skip table from the
    counters. Returns {"records": N, "skipped": {reason: {"count", "paths"}}, "counters": ...}
    (the skip table of summary.json)."""
    pipeline = new_pipeline(beam_flags(runner, dict(beam_options or {})))
    plan = prepare.make_plan(layout=layout, root=root, out=out, layout_options=layout_options,
                             target_fs=target_fs, preprocess=preprocess, dtype=dtype,
                             records_per_shard=records_per_shard)
    lock = None if storage.is_remote(out) else workdir.WorkdirLock(
        out, name=prepare.lock_name(0), stale_seconds=math.inf)
    try:
        prepare.claim_output(plan, root, lock=lock, merge_only=False)
        tasks = prepare.shard_tasks(plan, strict, range(len(plan.names)))
        counters = run_pipeline(pipeline, plan, tasks)
    finally:
        if lock is not None:
            lock.release()
    summary = prepare.read_summary(out)
    reasons = {name[len(_SKIPPED):]: count for name, count in sorted(counters.items())
               if name.startswith(_SKIPPED) and count}
    prepare.print_table({reason: {"count": count} for reason, count in reasons.items()})
    return {"records": summary["records_written"], "skipped": summary["skipped"],
            "counters": counters}
