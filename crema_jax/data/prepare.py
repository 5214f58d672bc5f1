"""`crema-jax prepare`: convert a dataset into the preprocessed ArrayRecord cache (see cache.py).

    crema-jax prepare --layout=wfdb_folder --root=/data/cinc2021 --out=/data/cinc2021-cache \
        --workers=8 [--strict] [--target_fs=250] [--preprocess=stmem] [--records_per_shard=1024] \
        [--layout_option=KEY=VALUE ...]

- Records are split into shards in layout order (records_per_shard each); one worker process
  writes one shard at a time.
- Resumable: each shard is written under a temporary name and renamed when complete (its JSON
  sidecar last); a restart skips finished shards, so an interrupted-then-restarted run produces
  exactly the files of an uninterrupted one. Restarting with other settings is refused.
- Bad records are skipped and reported (a table by reason, summary.json with the paths); the last
  line is `prepared N records, skipped M`. --strict stops at the first bad record, exit 1.
"""
from __future__ import annotations

import collections
import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import sys

from absl import flags

from crema_jax.data import cache

FLAGS = flags.FLAGS


def _define(definer, name, *args):
    """Define a flag unless another imported CLI module already did (tests import several)."""
    if name not in FLAGS:
        definer(name, *args)


_define(flags.DEFINE_string, "layout", "wfdb_folder", "dataset layout (layouts.LAYOUTS key)")
_define(flags.DEFINE_string, "root", None, "dataset folder read by the layout")
_define(flags.DEFINE_string, "out", None, "output folder of the cache (created; reused to resume)")
_define(flags.DEFINE_multi_string, "layout_option", [],
        "KEY=VALUE keyword argument of the layout function, repeatable (e.g. label_set=rhythm); "
        "VALUE is parsed as JSON when it can be (numbers, true/false), else kept as a string")
_define(flags.DEFINE_integer, "workers", 2, "worker processes (1 = in this process)")
_define(flags.DEFINE_bool, "strict", False, "stop with an error at the first bad record")
_define(flags.DEFINE_float, "target_fs", 250.0, "sampling rate of the cached signals, Hz")
_define(flags.DEFINE_string, "preprocess", "stmem", "preprocessing preset (preprocess.PRESETS)")
_define(flags.DEFINE_integer, "records_per_shard", 1024, "records per ArrayRecord shard")
_define(flags.DEFINE_enum, "dtype", "int16", sorted(cache.DTYPE_CODES),
        "stored sample type (see cache.py for why int16)")
_define(flags.DEFINE_integer, "stop_after_shards", 0,
        "stop after this many newly written shards, exit 3, as if interrupted "
        "(0 = never; for testing resumption)")


def _layout_options() -> dict:
    options = {}
    for item in FLAGS.layout_option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            sys.exit(f"error: --layout_option={item!r}; expected KEY=VALUE")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def _settings(index, preprocess_cfg) -> dict:
    paths = hashlib.sha1("\n".join(r.path for r in index.records).encode()).hexdigest()
    return {"format": "crema_jax.cache/1", "layout": FLAGS.layout,
            "layout_options": _layout_options(),
            "root": os.path.abspath(FLAGS.root), "target_fs": float(FLAGS.target_fs),
            "preprocess_preset": FLAGS.preprocess, "preprocess": preprocess_cfg,
            "derive_limb_leads": True, "dtype": FLAGS.dtype,
            "records_per_shard": int(FLAGS.records_per_shard),
            "num_records": len(index.records), "records_sha1": paths}


def _check_or_write_settings(out: str, settings: dict) -> None:
    path = os.path.join(out, cache.SETTINGS_FILE)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if changed:
            sys.exit(f"error: {out} holds a cache built with other settings (changed: "
                     f"{', '.join(changed)}); use a new --out folder or delete that one")
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


def main(argv):
    del argv
    from crema_jax.data import layouts
    from crema_jax.data import preprocess as preprocess_lib

    if not FLAGS.root or not FLAGS.out:
        sys.exit("error: --root and --out are required")
    if FLAGS.layout not in layouts.LAYOUTS:
        sys.exit(f"error: --layout={FLAGS.layout!r}; expected one of {sorted(layouts.LAYOUTS)}")
    if FLAGS.preprocess not in preprocess_lib.PRESETS:
        sys.exit(f"error: --preprocess={FLAGS.preprocess!r}; expected one of "
                 f"{sorted(preprocess_lib.PRESETS)}")
    if FLAGS.records_per_shard <= 0:
        sys.exit("error: --records_per_shard must be positive")
    index = layouts.LAYOUTS[FLAGS.layout](FLAGS.root, **_layout_options())
    preprocess_cfg = preprocess_lib.PRESETS[FLAGS.preprocess]().to_dict()
    settings = _settings(index, preprocess_cfg)
    os.makedirs(FLAGS.out, exist_ok=True)
    _check_or_write_settings(FLAGS.out, settings)

    per = FLAGS.records_per_shard
    num_shards = max(1, -(-len(index.records) // per))
    names = [cache.shard_name(s, num_shards) for s in range(num_shards)]
    sidecars = {s: _load_sidecar(FLAGS.out, names[s]) for s in range(num_shards)}
    tasks = [{"out_dir": FLAGS.out, "shard": s, "num_shards": num_shards,
              "records": [{"record_id": r.record_id, "path": str(r.path), "labels": list(r.labels),
                           "split": r.split, "source": r.source}
                          for r in index.records[s * per:(s + 1) * per]],
              "target_fs": float(FLAGS.target_fs), "preprocess": preprocess_cfg,
              "derive_limb_leads": True, "dtype": FLAGS.dtype, "strict": FLAGS.strict}
             for s in range(num_shards) if sidecars[s] is None]
    done = [s for s in sidecars.values() if s is not None]
    counts = [sum(s["num_records"] for s in done), sum(len(s["skipped"]) for s in done)]
    _progress(len(done), num_shards, *counts)
    new = 0
    for result in _run_tasks(tasks, FLAGS.workers):
        if "strict_error" in result:
            sys.stderr.write("\n")
            sys.exit(f"error (--strict): {result['strict_error']}")
        sidecars[names.index(result["file"][:-len(".arrayrecord")])] = result
        done.append(result)
        counts[0] += result["num_records"]
        counts[1] += len(result["skipped"])
        new += 1
        _progress(len(done), num_shards, *counts)
        if FLAGS.stop_after_shards and new >= FLAGS.stop_after_shards:
            sys.stderr.write("\n")
            print(f"stopped after {new} new shards (--stop_after_shards); rerun to resume")
            sys.exit(3)
    sys.stderr.write("\n")
    written, skipped = _finish(FLAGS.out, index, settings, [sidecars[s] for s in range(num_shards)])
    if skipped:
        width = max(len("reason"), *(len(r) for r in skipped))
        print(f"{'reason'.ljust(width)}  skipped")
        for reason, entry in skipped.items():
            print(f"{reason.ljust(width)}  {entry['count']}")
    print(f"prepared {written} records, skipped {sum(e['count'] for e in skipped.values())}")
