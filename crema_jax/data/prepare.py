"""Converting a dataset into the preprocessed ArrayRecord cache (`crema-jax prepare`, cache.py).

- Records are split into shards in layout order (records_per_shard each); one worker process
  writes one shard at a time.
- Resumable: each shard is written under a temporary name and renamed when complete (its JSON
  sidecar last); a restart skips finished shards, so an interrupted-then-restarted run produces
  exactly the files of an uninterrupted one. Restarting with other settings is refused.
- Bad records are skipped and reported (a table by reason, summary.json with the paths); the last
  line is `prepared N records, skipped M`. strict=True stops at the first bad record.
"""
from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import sys

from crema_jax import files
from crema_jax.data import cache


class PrepareError(ValueError):
    """A cache that cannot be built as asked; the message says why."""


def _settings(index, opts: dict, preprocess_cfg) -> dict:
    paths = hashlib.sha1("\n".join(r.path for r in index.records).encode()).hexdigest()
    return {"format": "crema_jax.cache/1", "layout": opts["layout"],
            "layout_options": opts["layout_options"],
            "root": os.path.abspath(opts["root"]), "target_fs": float(opts["target_fs"]),
            "preprocess_preset": opts["preprocess"], "preprocess": preprocess_cfg,
            "derive_limb_leads": True, "dtype": opts["dtype"],
            "records_per_shard": int(opts["records_per_shard"]),
            "num_records": len(index.records), "records_sha1": paths}


def _check_or_write_settings(out: str, settings: dict) -> None:
    path = os.path.join(out, cache.SETTINGS_FILE)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if changed:
            raise PrepareError(f"{out} holds a cache built with other settings (changed: "
                               f"{', '.join(changed)}); use a new --out folder")
    else:
        cache.write_json_atomic(path, settings)


def _progress(done: int, total: int, records: int, skipped: int) -> None:
    sys.stderr.write(f"\rprepare: {done}/{total} shards, {records} records, {skipped} skipped")
    sys.stderr.flush()


def _run_tasks(tasks: list[dict], workers: int):
    """Yield shard results as they finish (worker processes, or in-process when workers <= 1)."""
    if workers <= 1:
        for task in tasks:
            yield cache.build_shard(task)
        return
    # spawn: worker processes must not inherit a parent's threads (JAX, Grain, pytest).
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = [pool.submit(cache.build_shard, task) for task in tasks]
        try:
            for future in concurrent.futures.as_completed(futures):
                yield future.result()
        finally:
            for future in futures:
                future.cancel()


def _load_sidecar(out: str, name: str) -> dict | None:
    path = os.path.join(out, name + ".json")
    if not (os.path.isfile(path) and os.path.isfile(os.path.join(out, name + ".arrayrecord"))):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _finish(out: str, index, settings: dict, sidecars: list[dict]) -> tuple[int, dict]:
    rows = [row for sidecar in sidecars for row in sidecar["records"]]
    skipped = collections.defaultdict(list)
    for sidecar in sidecars:
        for skip in sidecar["skipped"]:
            skipped[skip["reason"]].append(skip["path"])
    cache.write_json_atomic(os.path.join(out, cache.INDEX_FILE), {
        "settings": settings, "label_names": list(index.label_names),
        "shards": [{"file": s["file"], "num_records": s["num_records"]} for s in sidecars],
        "records": rows})
    summary = {"records_written": len(rows),
               "skipped": {reason: {"count": len(paths), "paths": sorted(paths)}
                           for reason, paths in sorted(skipped.items())}}
    cache.write_json_atomic(os.path.join(out, cache.SUMMARY_FILE), summary)
    return len(rows), summary["skipped"]


def prepare(*, layout: str, root: str, out: str, layout_options: dict | None = None,
            workers: int = 2, strict: bool = False, target_fs: float = 250.0,
            preprocess: str = "crema", records_per_shard: int = 1024, dtype: str = "int16",
            stop_after_shards: int = 0) -> dict:
    """Builds (or resumes) the cache in `out`; prints progress and the skip table.

    Returns {"records": N, "skipped": {reason: {"count", "paths"}}, "stopped": bool} (stopped:
    stop_after_shards new shards were written and the rest was left for a rerun)."""
    from crema_jax.data import layouts
    from crema_jax.data import preprocess as preprocess_lib

    if layout not in layouts.LAYOUTS:
        raise PrepareError(f"--layout={layout!r}; expected one of {sorted(layouts.LAYOUTS)}")
    if preprocess not in preprocess_lib.PRESETS:
        raise PrepareError(f"--preprocess={preprocess!r}; expected one of "
                           f"{sorted(preprocess_lib.PRESETS)}")
    if dtype not in cache.DTYPE_CODES:
        raise PrepareError(f"--dtype={dtype!r}; expected one of {sorted(cache.DTYPE_CODES)}")
    if records_per_shard <= 0:
        raise PrepareError("--records_per_shard must be positive")
    layout_options = dict(layout_options or {})
    index = layouts.build_index(layout, root, **layout_options)
    preprocess_cfg = preprocess_lib.PRESETS[preprocess]().to_dict()
    if preprocess_cfg["stage"] != "record":
        raise PrepareError(f"--preprocess={preprocess}: it runs on each crop, not on the record, "
                           "and a cache holds preprocessed records; choose crema, ecgfounder or "
                           "none")
    settings = _settings(index, dict(layout=layout, layout_options=layout_options, root=root,
                                     target_fs=target_fs, preprocess=preprocess, dtype=dtype,
                                     records_per_shard=records_per_shard), preprocess_cfg)
    # New, empty, or a cache of ours (its settings.json): a user's own files are never touched.
    files.check_output_dir(out, marker=cache.SETTINGS_FILE, flag="--out", inputs=[root])
    files.remove_stale_temporaries(out)   # a crashed run's half-written shards
    _check_or_write_settings(out, settings)

    per = records_per_shard
    num_shards = max(1, -(-len(index.records) // per))
    names = [cache.shard_name(s, num_shards) for s in range(num_shards)]
    sidecars = {s: _load_sidecar(out, names[s]) for s in range(num_shards)}
    tasks = [{"out_dir": out, "shard": s, "num_shards": num_shards,
              "records": [{"record_id": r.record_id, "path": str(r.path), "labels": list(r.labels),
                           "split": r.split, "source": r.source, "reader": r.reader}
                          for r in index.records[s * per:(s + 1) * per]],
              "target_fs": float(target_fs), "preprocess": preprocess_cfg,
              "derive_limb_leads": True, "dtype": dtype, "strict": strict}
             for s in range(num_shards) if sidecars[s] is None]
    done = [s for s in sidecars.values() if s is not None]
    counts = [sum(s["num_records"] for s in done), sum(len(s["skipped"]) for s in done)]
    _progress(len(done), num_shards, *counts)
    new = 0
    for result in _run_tasks(tasks, workers):
        if "strict_error" in result:
            sys.stderr.write("\n")
            raise PrepareError(f"(--strict) {result['strict_error']}")
        sidecars[names.index(result["file"][:-len(".arrayrecord")])] = result
        done.append(result)
        counts[0] += result["num_records"]
        counts[1] += len(result["skipped"])
        new += 1
        _progress(len(done), num_shards, *counts)
        if stop_after_shards and new >= stop_after_shards:
            sys.stderr.write("\n")
            return {"records": counts[0], "skipped": {}, "stopped": True}
    sys.stderr.write("\n")
    written, skipped = _finish(out, index, settings, [sidecars[s] for s in range(num_shards)])
    if skipped:
        width = max(len("reason"), *(len(r) for r in skipped))
        print(f"{'reason'.ljust(width)}  skipped")
        for reason, entry in skipped.items():
            print(f"{reason.ljust(width)}  {entry['count']}")
    return {"records": written, "skipped": skipped, "stopped": False}
