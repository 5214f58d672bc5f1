"""`crema-jax prepare --runner=NAME`: the cache built as an Apache Beam pipeline, on the
DirectRunner (this machine), Dataflow, or Flink / Spark through Beam's portable runner.

    index (here, metadata only) -> shard assignment (prepare.make_plan: shard s holds records
    [s * R, (s + 1) * R) of the layout's order) -> the plan file (every shard's task, one JSON
    line each, in --out) -> one element per shard, (shard, byte span of its task): read +
    canonical ECG + preprocess + ArrayRecord shard and sidecar (shard_writer.build_shard, the one
    function that writes a shard, whoever runs it) -> every shard's light sidecar (counts and
    skips) -> index.json and summary.json, the rows streamed from the sidecar files one shard at
    a time (sidecars.finish) -> the plan file removed

settings.json is written before the pipeline starts, as the local path does. The cache is
byte-identical to a local `crema-jax prepare` with the same flags (tests/data/cache/
test_prepare_beam.py compares the files). Skipped records are counted by Beam counters, one per
reason (namespace crema_jax.prepare, name skipped/REASON), and listed with their paths in
summary.json. Memory stays flat in the number of records: the launcher drops the index once the
plan file is written, a worker holds one shard's records at a time, and the merge holds one
shard's rows at a time (bench/data.py --prepare_memory measures it). A shard whose sidecar is
already in --out is not written again, so a rerun resumes a failed job.

apache_beam is the optional [beam] extra, imported only inside the functions that run the
pipeline: the local path and Beam's workers import this module's callers without it.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import re

from crema_jax.data.cache import prepare, record_format
from crema_jax.data.cache import sidecars as sidecar_lib
from crema_jax.data.cache.shard_writer import build_shard
from crema_jax.runtime import storage, workdir

COUNTERS = "crema_jax.prepare"     # the Beam counters' namespace
PLAN_FILE = "prepare_plan.jsonl"   # the shard tasks while the pipeline runs (write_plan)
_SKIPPED = "skipped/"              # counter name prefix, then the skip reason
# A PrepareError raised in a worker process reaches the launcher as the text of the worker's
# traceback (DirectRunner's multi_processing mode: a RuntimeError): its last such line.
_WORKER_PREPARE_ERROR = re.compile(r"PrepareError: (.*)$", re.MULTILINE)


def beam_flags(runner: str, options: dict) -> list[str]:
    """--runner and the --beam_option KEY=VALUE pairs as Beam's command-line flags (True: a bare
    --KEY, False: left out, as Beam's boolean flags are switches)."""
    if runner == "DirectRunner":
        # Its worker processes write to this terminal; a failure reaches the launcher, which
        # reports it in one line, so they log only critical errors unless the user chose.
        options = {"default_sdk_harness_log_level": "CRITICAL", **options}
    flags = [f"--runner={runner}"]
    for key, value in options.items():
        if value is True:
            flags.append(f"--{key}")
        elif value is not False:
            flags.append(f"--{key}={value}")
    return flags


def write_plan(plan: prepare.Plan, strict: bool) -> list[tuple[int, int, int]]:
    """Every shard's task (prepare.shard_task), one JSON line each, streamed into PLAN_FILE in
    the output folder; returns each shard's (shard, byte offset, length) in that file: all the
    pipeline carries, whatever the number of records."""
    spans = []

    def write(tmp):
        spans.clear()
        with open(tmp, "wb") as f:
            for s in range(len(plan.names)):
                line = json.dumps(prepare.shard_task(plan, strict, s), sort_keys=True) + "\n"
                spans.append((s, f.tell(), len(line.encode())))
                f.write(line.encode())
    storage.write_atomic(storage.join(plan.out, PLAN_FILE), write)
    return spans


def write_shard(span: tuple[int, int, int], plan_path: str) -> dict:
    """build_shard of the shard whose task is at `span` of the plan file, unless the shard is
    already complete in the output (a rerun); the skips counted by reason. Returns the shard's
    light sidecar (sidecars.light: no record rows). A bad record under --strict fails the
    pipeline."""
    from apache_beam.metrics import Metrics  # the optional [beam] extra (module docstring)

    _, offset, length = span
    task = json.loads(storage.read_range(plan_path, offset, length))
    name = record_format.shard_name(task["shard"], task["num_shards"])
    sidecar = sidecar_lib.load_sidecar(task["out_dir"], name, task["settings_digest"])
    if sidecar is None or sidecar_lib.worth_rebuilding(sidecar):
        sidecar = build_shard(task)
        if "strict_error" in sidecar:
            raise prepare.PrepareError(f"(--strict) {sidecar['strict_error']}")
    Metrics.counter(COUNTERS, "records_written").inc(sidecar["num_records"])
    for skip in sidecar["skipped"]:
        Metrics.counter(COUNTERS, _SKIPPED + skip["reason"]).inc()
    return sidecar_lib.light(sidecar)


def merge_sidecars(sidecars: list[dict], out: str, label_names: list, settings: dict) -> int:
    """index.json and summary.json from every shard's light sidecar, in shard order (the rows
    streamed from the sidecar files: sidecars.finish)."""
    written, _ = sidecar_lib.finish(out, label_names, settings,
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
    options = PipelineOptions(flags)
    problem = _options_problem(options)
    if problem:
        raise prepare.PrepareError(f"--beam_option: {problem}")
    return beam.Pipeline(options=options)


def _options_problem(options) -> str | None:
    """What Beam refuses in `options`, in one line, or None. Beam parses them only when a
    pipeline runs: a bad value had printed 129 lines of usage after --out was written, an
    unknown option (a typo) had been dropped with a warning."""
    said = io.StringIO()
    beam_log = logging.getLogger("apache_beam.options.pipeline_options")
    level = beam_log.level
    beam_log.setLevel(logging.ERROR)  # its "Discarding unparseable args": said here instead
    try:
        with contextlib.redirect_stderr(said):
            known = options.get_all_options(retain_unknown_options=False)
            given = options.get_all_options(retain_unknown_options=True)
    except SystemExit:  # argparse's usage error
        lines = said.getvalue().strip().splitlines()
        return lines[-1].split("error: ", 1)[-1] if lines else "options Beam does not read"
    finally:
        beam_log.setLevel(level)
    unknown = sorted(set(given) - set(known))
    return f"Beam has no option {', '.join(unknown)}" if unknown else None


def run_pipeline(pipeline, out: str, spans: list, label_names: list,
                 settings: dict) -> dict[str, int]:
    """Runs the pipeline to the end; returns its counters."""
    import apache_beam as beam  # the optional [beam] extra (module docstring)

    _ = (pipeline
         | "shard assignment" >> beam.Create(spans)
         | "read, preprocess, write shards" >> beam.Map(
             write_shard, plan_path=storage.join(out, PLAN_FILE))
         | "every shard" >> beam.combiners.ToList()
         | "index and summary" >> beam.Map(merge_sidecars, out=out, label_names=label_names,
                                           settings=settings))
    beam_log = logging.getLogger("apache_beam.runners.common")
    beam_log.addFilter(_drop_own_errors)
    try:
        result = pipeline.run()
        result.wait_until_finish()
    except prepare.PrepareError:
        raise
    except Exception as err:  # noqa: BLE001 - a worker's PrepareError arrives as text.
        if "KeyboardInterrupt" in str(err):  # Ctrl-C inside the DirectRunner: `interrupted`,
            raise KeyboardInterrupt from None  # not a 223-line traceback
        found = _WORKER_PREPARE_ERROR.findall(str(err))
        if not found:
            raise
        raise prepare.PrepareError(found[-1]) from None
    finally:
        beam_log.removeFilter(_drop_own_errors)
    return _counters(result)


def _drop_own_errors(record: logging.LogRecord) -> bool:
    """Beam logs a failing element's traceback before it raises; a PrepareError (--strict's bad
    record) is then the command's one error line, so its traceback is not logged too."""
    error = record.exc_info[1] if record.exc_info else None
    return not isinstance(error, prepare.PrepareError)


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
    lock = workdir.WorkdirLock(out, name=prepare.lock_name(0), stale_seconds=math.inf)
    plan_path = storage.join(out, PLAN_FILE)
    try:
        prepare.claim_output(plan, root, lock=lock, merge_only=False)
        try:
            spans = write_plan(plan, strict)
            label_names, settings = list(plan.index.label_names), plan.settings
            del plan  # the index: from here on, nothing in this process grows with the records
            counters = run_pipeline(pipeline, out, spans, label_names, settings)
        finally:  # done or failed, the plan is this run's own (a rerun writes it again)
            storage.remove(plan_path)
    finally:
        lock.release()
    summary = sidecar_lib.read_summary(out)
    reasons = {name[len(_SKIPPED):]: count for name, count in sorted(counters.items())
               if name.startswith(_SKIPPED) and count}
    sidecar_lib.print_table({reason: {"count": count} for reason, count in reasons.items()})
    return {"records": summary["records_written"], "skipped": summary["skipped"],
            "counters": counters}
