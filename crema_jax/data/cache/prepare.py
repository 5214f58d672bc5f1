"""Converting a dataset into the preprocessed ArrayRecord cache (`crema-jax prepare`; its files:
record_format.py).

- Records are split into shards in layout order (records_per_shard each); one worker process
  writes one shard at a time.
- Resumable: each shard is written under a temporary name and renamed when complete (its JSON
  sidecar last); a restart skips finished shards, so an interrupted-then-restarted run produces
  exactly the files of an uninterrupted one. Restarting with other settings is refused
  (settings_file.py).
- An array job (num_hosts H > 1: a SLURM array, TPU VM hosts; one folder they all see, or a
  bucket): host h writes its block of shards only (hosts.py: the same shards, whatever H) and
  the settings.json every host writes or checks (the same bytes); nothing waits for anything.
  The merge is one explicit step once every host is done: merge_only (`--merge`) merges the
  shards' sidecars into index.json and summary.json (refusing, naming the missing shards and
  their hosts, when a shard is not there), so the folder equals a one-host run's byte for byte.
  A killed host is rerun with the same flags: it finishes its own missing shards only.
- The same cache on Apache Beam (any runner): beam_pipeline.py, with this module's plan, shard
  tasks and merge, and shard_writer.build_shard, the one function that writes a shard.
- --root and --out may be URLs (gs://, s3://; runtime/storage.py): records are read from a local
  copy one at a time, each file is written locally and uploaded whole. A remote --out is locked
  per host as a local one is, with the store's conditional write (runtime/workdir.WorkdirLock).
- Memory is flat in the number of records past indexing: what is kept of each finished shard is
  its light sidecar (counts and skips), and the merge streams index.json's rows from the
  sidecar files one shard at a time (sidecars.finish).
- Bad records are skipped and reported (a table by reason; per host, then for the whole cache;
  summary.json with the paths); strict=True stops at the first bad record.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import fnmatch
import math
import multiprocessing
import sys
import time

from crema_jax.data import presets
from crema_jax.data.cache import hosts
from crema_jax.data.cache import record_format, settings_file
from crema_jax.data.cache import sidecars as sidecar_lib
from crema_jax.data.cache.sidecars import PrepareError
from crema_jax.data.cache.shard_writer import build_shard, finish_record_on_interrupt
from crema_jax.data.index import registry
from crema_jax.data.index.dataset_index import DatasetIndex
from crema_jax.data.reading import clinical
from crema_jax.data.reading import read as read_lib
from crema_jax.data.signal.preprocess import stage_config
from crema_jax.runtime import durations, files, processes, storage, workdir


class _Progress:
    """One status line: shards, records, skips, ECG/s of this run and the ETA of this host."""

    def __init__(self, label: str, total: int, done: list, todo_records: int):
        self.label, self.total, self.todo = label, total, todo_records
        self.shards = len(done)
        self.records = sum(s["num_records"] for s in done)
        self.skipped = sum(len(s["skipped"]) for s in done)
        self.seen, self.start = 0, time.monotonic()
        self.show()

    def add(self, sidecar: dict) -> None:
        self.shards += 1
        self.records += sidecar["num_records"]
        self.skipped += len(sidecar["skipped"])
        self.seen += sidecar["num_records"] + len(sidecar["skipped"])
        self.show()

    def show(self) -> None:
        if not self.total:
            return
        elapsed = time.monotonic() - self.start
        eta = ""
        if self.seen and elapsed > 0:
            rate = self.seen / elapsed
            left = max(self.todo - self.seen, 0) / rate
            eta = f", {rate:.0f} ECG/s, ETA {durations.format_duration(left)}"
        sys.stderr.write(f"\rprepare{self.label}: {self.shards}/{self.total} shards, "
                         f"{self.records} records, {self.skipped} skipped{eta}")
        sys.stderr.flush()


# After a Ctrl-C, how long a worker may take to finish its record before it is terminated.
STOP_GRACE_SECONDS = 10.0


def _run_tasks(tasks: list[dict], workers: int):
    """Yield shard results as they finish (worker processes, or in-process when workers <= 1)."""
    if workers <= 1:
        for task in tasks:
            yield build_shard(task)
        return
    # Ctrl-C stops a worker after its record (finish_record_on_interrupt); a parent killed
    # outright ends it, its shard unwritten (processes.worker_pool).
    with processes.worker_pool(workers, finish_record_on_interrupt) as pool:
        futures = []
        try:
            futures += [pool.submit(build_shard, task) for task in tasks]
            for future in concurrent.futures.as_completed(futures):
                yield future.result()
        except KeyboardInterrupt:  # also one that reached this process alone, maybe while
            children = multiprocessing.active_children()  # the pool was still starting
            pool.shutdown(wait=False, cancel_futures=True)
            processes.interrupt_and_join(children, grace=STOP_GRACE_SECONDS)
            raise
        finally:
            for future in futures:
                future.cancel()


def shard_tasks(plan, strict: bool, shards) -> list[dict]:
    """build_shard's task of each shard in `shards`."""
    return [shard_task(plan, strict, s) for s in shards]


def shard_task(plan, strict: bool, s: int) -> dict:
    """build_shard's task of shard s (records [s * R, (s + 1) * R) of the index), JSON data."""
    per = plan.records_per_shard
    opts = plan.task_options
    return {"out_dir": plan.out, "shard": s, "num_shards": len(plan.names),
            "records": [{"record_id": r.record_id, "path": str(r.path), "labels": list(r.labels),
                         "split": r.split, "source": r.source,
                         "meta": record_format.row_meta(r.meta),
                         "reader": read_lib.reader_to_json(r.reader)}
                        for r in plan.index.records[s * per:(s + 1) * per]],
            "target_fs": float(opts["target_fs"]), "preprocess": opts["preprocess_cfg"],
            "derive_limb_leads": True, "dtype": opts["dtype"], "strict": strict,
            "settings_digest": sidecar_lib.settings_digest(plan.settings)}


def prepare(*, layout: str, root: str, out: str, layout_options: dict | None = None,
            workers: int = 2, strict: bool = False, target_fs: float = 250.0,
            preprocess: str = "crema", records_per_shard: int = 1024, dtype: str = "int16",
            stop_after_shards: int = 0, num_hosts: int = 1, host_index: int = 0,
            merge_only: bool = False) -> dict:
    """Builds (or resumes) this host's part of the cache in `out`, and (one host, or
    merge_only) merges the index; prints progress and the skip tables.

    Returns {"records": N, "skipped": {reason: {"count", "paths"}}, "stopped": bool, "merged":
    bool, "shards": range}: the whole cache's figures when merged, else this host's; stopped:
    stop_after_shards new shards were written and the rest was left for a rerun.
    """
    plan = make_plan(layout=layout, root=root, out=out, layout_options=layout_options,
                     target_fs=target_fs, preprocess=preprocess, dtype=dtype,
                     records_per_shard=records_per_shard, num_hosts=num_hosts,
                     host_index=host_index, merge_only=merge_only)
    lock = workdir.WorkdirLock(out, name=lock_name(host_index), stale_seconds=math.inf)
    try:
        claim_output(plan, root, lock=lock, merge_only=merge_only)
        return _prepare_claimed(plan, out, workers=workers, strict=strict,
                                stop_after_shards=stop_after_shards, num_hosts=num_hosts,
                                host_index=host_index)
    finally:
        lock.release()


def lock_name(host_index: int) -> str:
    """One writer per host in a cache folder: a second run of the same host on the same --out
    stops, naming the first (runtime/workdir.WorkdirLock; a killed run's lock is taken over)."""
    return f"crema_jax.prepare-host{host_index}.lock"


def _prepare_claimed(plan, out, *, workers, strict, stop_after_shards, num_hosts,
                     host_index) -> dict:
    mine = plan.mine
    digest = sidecar_lib.settings_digest(plan.settings)
    sidecars = {s: sidecar_lib.light_sidecar(out, plan.names[s], digest) for s in mine}
    retried = [s for s in mine if sidecar_lib.worth_rebuilding(sidecars[s])]
    for s in retried:
        sidecars[s] = None
    if retried:
        print(f"rebuilding {len(retried)} shard(s) that skipped records for unexpected errors "
              f"({plan.names[retried[0]]}{', ...' if len(retried) > 1 else ''})")
    progress, stopped = _write_shards(plan, sidecars, workers=workers, strict=strict,
                                      stop_after_shards=stop_after_shards)
    if stopped:
        return {"records": progress.records, "skipped": {}, "stopped": True, "merged": False,
                "shards": mine}
    if mine:
        sys.stderr.write("\n")
    host_skipped = sidecar_lib.skip_table(sidecars[s] for s in mine)
    if num_hosts > 1 and mine:
        sidecar_lib.print_table(host_skipped,
                                f" (host {host_index}, shards {mine.start}-{mine.stop - 1})")
    if not plan.merges:
        return {"records": progress.records, "skipped": host_skipped, "stopped": False,
                "merged": False, "shards": mine}
    written, skipped = merge(plan, sidecars, num_hosts=num_hosts)
    sidecar_lib.print_table(skipped)
    return {"records": written, "skipped": skipped, "stopped": False, "merged": True,
            "shards": mine}


def _check_flags(*, layout, preprocess, dtype, records_per_shard, num_hosts, host_index) -> None:
    if layout not in registry.LAYOUTS:
        raise PrepareError(f"--layout={layout!r}; expected one of {sorted(registry.LAYOUTS)}")
    if preprocess not in presets.PRESETS:
        raise PrepareError(f"--preprocess={preprocess!r}; expected one of "
                           f"{sorted(presets.PRESETS)}")
    if dtype not in record_format.DTYPE_CODES:
        raise PrepareError(f"--dtype={dtype!r}; expected one of "
                           f"{sorted(record_format.DTYPE_CODES)}")
    if records_per_shard <= 0:
        raise PrepareError("--records_per_shard must be positive")
    hosts.host_shards(1, num_hosts, host_index)  # checks the pair


@dataclasses.dataclass(frozen=True)
class Plan:
    """The cache to build and this host's part of it."""
    out: str
    index: DatasetIndex
    settings: dict              # settings.json: what the cache is built from
    task_options: dict          # target_fs, preprocess_cfg, dtype (and strict, added later)
    records_per_shard: int
    names: list                 # every shard's file name without extension, in shard order
    mine: range                 # the shards this host writes
    merges: bool                # one host (or --merge): writes index.json and summary.json
    label: str                  # " [host h/H]" on progress lines of a many-host run


def make_plan(*, layout, root, out, layout_options=None, target_fs=250.0, preprocess="crema",
              dtype="int16", records_per_shard=1024, num_hosts=1, host_index=0,
              merge_only=False) -> Plan:
    """The flags checked, the dataset indexed (metadata only, no signal read) and its records
    assigned to shards: shard s holds records [s * R, (s + 1) * R) of the layout's order."""
    _check_flags(layout=layout, preprocess=preprocess, dtype=dtype,
                 records_per_shard=records_per_shard, num_hosts=num_hosts, host_index=host_index)
    layout_options = dict(layout_options or {})
    # An absolute root: the cache's record paths name the files wherever it is read from.
    index = registry.build_index(layout, storage.absolute(root), **layout_options)
    if not index.records:
        raise PrepareError(f"--root={root}: the {layout} layout finds no record there; nothing "
                           "to prepare")
    if settings_file.has_patient_ids(index):
        clinical.warn_if_public_salt()   # the cache keeps their salted hashes
    preprocess_cfg = presets.preprocessing(preprocess).to_dict()
    if stage_config(preprocess_cfg, "record") is None:
        raise PrepareError(f"--preprocess={preprocess}: it runs on each crop, not on the record, "
                           "and a cache holds preprocessed records; choose crema, ecgfounder or "
                           "none")
    # How the index is built (e.g. clinical_exports' index_workers) is not what it holds.
    content_options = {k: v for k, v in layout_options.items()
                       if k not in registry.EXECUTION_OPTIONS}
    options = dict(layout=layout, layout_options=content_options, root=root,
                   target_fs=target_fs, preprocess=preprocess, dtype=dtype,
                   records_per_shard=records_per_shard)
    settings = settings_file.cache_settings(index, options, preprocess_cfg)
    num_shards = max(1, -(-len(index.records) // records_per_shard))
    return Plan(
        out=out, index=index, settings=settings,
        task_options=dict(target_fs=target_fs, preprocess_cfg=preprocess_cfg, dtype=dtype),
        records_per_shard=records_per_shard,
        names=[record_format.shard_name(s, num_shards) for s in range(num_shards)],
        mine=range(0) if merge_only else hosts.host_shards(num_shards, num_hosts, host_index),
        merges=merge_only or num_hosts == 1,
        label=f" [host {host_index}/{num_hosts}]" if num_hosts > 1 else "")


def _check_remote_output(out: str) -> None:
    """A remote --out is new, empty or a cache of ours (its settings.json, or only the lock of a
    run that has not written it yet), as a local one."""
    names = storage.listdir(out)
    ours = [n for n in names if n == record_format.SETTINGS_FILE
            or fnmatch.fnmatch(n, lock_name(0).replace("host0", "host*"))]
    if names and not ours:
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise files.OutputError(f"--out={out}: the folder holds files this command did not "
                                f"write ({shown}); choose a new or empty folder")


def claim_output(plan: Plan, root: str, *, lock: workdir.WorkdirLock,
                 merge_only: bool) -> None:
    """The output folder checked, this host's lock taken, its crashed half-written files removed
    (a local --out: a remote one is written under unique temporary names), and the settings
    written or checked against the ones there (every host writes the same bytes; --merge only
    checks)."""
    out = plan.out
    if merge_only:  # before the lock makes the folder: a mistyped --out is left as it was
        settings_file.check_or_write(out, plan.settings, write=False)
    if storage.is_remote(out):
        _check_remote_output(out)
    else:
        # New, empty, or a cache of ours (settings.json): a user's own files are never touched.
        # Hosts starting together see each other's lock and half-written settings.json.
        markers = (record_format.SETTINGS_FILE, f".{record_format.SETTINGS_FILE}.*.tmp",
                   lock_name(0).replace("host0", "host*"))
        files.check_output_dir(out, marker=markers, flag="--out", inputs=[root],
                               create=not merge_only)
    note = lock.acquire()
    if note:
        print(f"prepare: {note}")
    if not storage.is_remote(out):
        own = [plan.names[s] + ext for s in plan.mine for ext in (".arrayrecord", ".json")]
        own.append(record_format.SETTINGS_FILE)
        if plan.merges:
            own += [record_format.INDEX_FILE, record_format.SUMMARY_FILE]
        files.remove_stale_temporaries(out, names=own)   # this host's crashed half-written files
    settings_file.check_or_write(out, plan.settings, write=not merge_only)


def _write_shards(plan: Plan, sidecars: dict, *, workers: int, strict: bool,
                  stop_after_shards: int) -> tuple[_Progress, bool]:
    """Writes this host's shards that have no sidecar yet (filling `sidecars` in); returns the
    progress and whether it stopped after `stop_after_shards` new shards."""
    tasks = shard_tasks(plan, strict, [s for s in plan.mine if sidecars[s] is None])
    progress = _Progress(plan.label, len(plan.mine),
                         [s for s in sidecars.values() if s is not None],
                         sum(len(t["records"]) for t in tasks))
    new = 0
    try:
        for result in _run_tasks(tasks, workers):
            if "strict_error" in result:
                raise PrepareError(f"(--strict) {result['strict_error']}")
            shard = plan.names.index(result["file"][:-len(".arrayrecord")])
            sidecars[shard] = sidecar_lib.light(result)
            progress.add(result)
            new += 1
            if stop_after_shards and new >= stop_after_shards:
                sys.stderr.write("\n")
                return progress, True
    except Exception:  # a full disk, --strict: the error's line starts below the status line
        sys.stderr.write("\n")
        raise
    return progress, False


def merge(plan: Plan, sidecars: dict, *, num_hosts: int) -> tuple[int, dict]:
    """Once every shard's sidecar is there (read from the folder where `sidecars` lacks it),
    writes index.json and summary.json; returns (records written, skip table). A missing shard
    stops it, naming the shard and the hosts that write it: nothing waits."""
    names, num_shards = plan.names, len(plan.names)
    for s in range(num_shards):
        if sidecars.get(s) is None:
            sidecars[s] = sidecar_lib.light_sidecar(plan.out, names[s],
                                                    sidecar_lib.settings_digest(plan.settings))
    left = [names[s] for s in range(num_shards) if sidecars[s] is None]
    if left:
        # The hosts that write them, when the host count is known (a plain --merge's is not:
        # "hosts [0] of 1" had named the one host that was done).
        owners = sorted({hosts.host_of_shard(names.index(n), num_shards, num_hosts)
                         for n in left}) if num_hosts > 1 else []
        raise PrepareError(f"{len(left)} of {num_shards} shards are not written yet ({left[0]}"
                           f"{', ...' if len(left) > 1 else ''}"
                           f"{f'; hosts {owners} of {num_hosts}' if owners else ''}): run (or "
                           "rerun) the hosts that write them, then `crema-jax prepare ... "
                           "--merge`")
    return sidecar_lib.finish(plan.out, plan.index.label_names, plan.settings,
                  [sidecars[s] for s in range(num_shards)])
