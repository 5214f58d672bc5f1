"""Input-pipeline throughput: ECGs/s from raw WFDB, CODE-15% HDF5 and the ArrayRecord cache.

    python bench/data.py [--records=512] [--batches=12] [--views=2] [--tables=pretrain,eval] [--repeats=3]

Writes synthetic 10 s, 500 Hz WFDB records (synthetic.write_synthetic_wfdb) and the same number
of synthetic 10 s, 400 Hz exams in CODE-15%'s HDF5 files (synthetic.write_synthetic_code15) to a
temporary folder, builds a cache from the WFDB records with `crema-jax prepare`, then times the
full pretraining pipeline (read/decode -> crop -> patchify -> mask -> batches of 64) with
num_workers 0 (in-process) and 2 (Grain mp_prefetch), after a warm-up that also absorbs worker
start-up. Targets per worker process: cache >= 5,000 ECGs/s, raw 500 Hz WFDB and CODE-15% HDF5
>= 200 ECGs/s. "ECGs per CPU-s" (in-process rows) is the throughput of one dedicated core, the
stable figure on a shared machine. The CODE-15% cost breakdown times each step of one exam's
way alone (CPU ms per ECG): the HDF5 row read, the reader's canonical Ecg at 400 Hz, polyphase
resampling to 250 Hz, the crema preprocessing, and the pipeline's own work (the rest).

`--tables=prepare` times `crema-jax prepare` itself, whole runs of the command (indexing and
start-up included): ECGs/s of the local path (worker processes, no Beam) and of the Beam
DirectRunner with 1 and 2 workers (the [beam] extra), on --records synthetic records:

    python bench/data.py --tables=prepare --records=2000

`--tables=clinical` times the same command on hospital exports (`--layout=clinical_exports`,
2 workers): --records synthetic records written in each format by the test suite's writers
(tests/data/clinical_files.py: DICOM, HL7 aECG, GE MUSE, EDF+, Philips XLI, SCP-ECG Huffman):

    python bench/data.py --tables=clinical --records=500

`--prepare_memory=N` prepares N synthetic records on the DirectRunner (2 worker processes) and
prints the peak resident memory of the whole process tree (sampled from /proc every 0.2 s) and
of its largest process: run it at 5,000 and 20,000 records to see it flat in the record count.

A second table times the evaluation pipeline (what embed, probe and predict read) from the raw
records under each data path (data/presets.py: crema, stmem, ecgfounder), in-process; the
target is the same >= 200 ECGs/s per process.
"""
from __future__ import annotations

import argparse
import collections
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import flags

from crema_jax.data import config as config_lib
from crema_jax.data import presets, synthetic
from crema_jax.data.index import registry
from crema_jax.data.pipeline import datasets as pipeline
from crema_jax.data.pipeline import sources
from crema_jax.data.pipeline.transforms import PretrainViews
from crema_jax.data.reading import arrays, read as read_lib
from crema_jax.data.signal import preprocess
from crema_jax.data.signal.resample import resample


def _throughput(cfg, batches: int, warmup: int) -> tuple[float, float | None]:
    """(ECGs/s wall clock, ECGs per CPU-second of this process or None with workers).

    The CPU figure is what one dedicated core does; on a shared machine it is the stable number
    (wall clock then depends on how many other processes compete for the cores).
    """
    iterator = iter(pipeline.make_pretrain_dataset(cfg, process_index=0, process_count=1))
    for _ in range(warmup):
        next(iterator)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(iterator)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    if hasattr(iterator, "close"):
        iterator.close()
    count = batches * cfg.batch_size
    return count / elapsed, (count / cpu if cfg.num_workers == 0 else None)


def _eval_throughput(cfg, repeats: int) -> tuple[float, float]:
    """(ECGs/s wall clock, ECGs per CPU-second) of whole passes of the evaluation pipeline over
    the records, in-process, timed from the first read to the last batch (read-ahead threads
    do no work outside the timed span); the median of `repeats` passes (a shared machine's rate
    moves by a quarter from run to run). The folder is indexed once, before any pass."""
    source = sources.make_source(cfg)
    rates, per_cpu = [], []
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        count = sum(int(b["valid"].sum()) for b in pipeline.make_eval_dataset(
            cfg, source=source, process_index=0, process_count=1))
        rates.append(count / (time.perf_counter() - start))
        per_cpu.append(count / (time.process_time() - cpu))
    return float(np.median(rates)), float(np.median(per_cpu))


def _cpu_ms(fn, items) -> float:
    start = time.process_time()
    for item in items:
        fn(item)
    return (time.process_time() - start) / len(items) * 1e3


def _code15_breakdown(root: str, n: int = 128) -> list[tuple[str, float]]:
    """CPU ms per exam of each step of the CODE-15% path (see the module docstring)."""
    import h5py  # optional heavy import (HDF5's C library): the CODE-15% rows only

    infos = registry.build_index("code15", root).records[:n]
    parts = {}

    def row(info):
        file, index = arrays.split_locator(info.path)
        if file not in parts:
            parts[file] = h5py.File(file, "r")["tracings"]
        return parts[file][index]

    native = [read_lib.read(i.path, i.reader, target_fs=None) for i in infos]  # also a warm-up
    resampled = [read_lib.read(i.path, i.reader, target_fs=250.0) for i in infos]
    crema = presets.preprocessing("crema")
    loaded = [{"signal": preprocess.preprocess(e.signal, e.fs, crema,
                                               lead_present=e.lead_present),
               "lead_present": e.lead_present, "index": k} for k, e in enumerate(resampled)]
    views = PretrainViews(config_lib.default_data_config(), compact=True)
    chunks = [loaded[k:k + 64] for k in range(0, len(loaded), 64)]
    rng = np.random.default_rng(0)
    return [("HDF5 row read (h5py; part of the next step)", _cpu_ms(row, infos)),
            ("reader to the canonical Ecg at 400 Hz", _cpu_ms(
                lambda i: read_lib.read(i.path, i.reader, target_fs=None), infos)),
            ("polyphase 400 -> 250 Hz", _cpu_ms(
                lambda e: resample(e.signal, e.fs, 250.0), native)),
            ("crema preprocessing (filters, z-score)", _cpu_ms(
                lambda e: preprocess.preprocess(e.signal, e.fs, crema,
                                                lead_present=e.lead_present), resampled)),
            ("pipeline: crop, patches, masks (per ECG of a chunk of 64)", _cpu_ms(
                lambda c: views.random_map(c, rng), chunks) / 64)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=512)
    parser.add_argument("--batches", type=int, default=12, help="timed batches per row")
    parser.add_argument("--views", type=int, default=2, help="views per ECG (2 = CREMA)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="passes per evaluation-table row (the median is printed)")
    parser.add_argument("--tables", default="pretrain,eval",
                        help="comma-separated: pretrain (sources x workers, with the CODE-15%% "
                             "breakdown), eval (the evaluation pipeline by data path), prepare "
                             "(the prepare command: local path and Beam DirectRunner), clinical "
                             "(prepare on each hospital export format)")
    parser.add_argument("--prepare_memory", default="",
                        help="only this: peak RSS of DirectRunner prepares of N[,N...] records")
    args = parser.parse_args()
    tables = set(args.tables.split(","))
    if not tables or tables - {"pretrain", "eval", "prepare", "clinical"}:
        parser.error(f"--tables={args.tables!r}: expected a comma-separated subset of "
                     "pretrain,eval,prepare,clinical")
    flags.FLAGS.mark_as_parsed()  # Grain workers read absl flags.

    with tempfile.TemporaryDirectory() as tmp:
        raw_dir = os.path.join(tmp, "wfdb")
        sizes = [int(n) for n in args.prepare_memory.split(",") if n]
        synthetic.write_synthetic_wfdb(raw_dir, MEMORY_DISTINCT if sizes else args.records,
                                       fs=500.0, seconds=10.0)
        if sizes:
            for records in sizes:
                _prepare_memory(tmp, raw_dir, records)
            return
        if "prepare" in tables:
            _prepare_table(tmp, raw_dir, args.records)
        if "clinical" in tables:
            _clinical_table(tmp, raw_dir, args.records)
        if "pretrain" in tables:
            _pretrain_tables(tmp, raw_dir, args)
        if "eval" in tables:
            _eval_table(raw_dir, args)
    print(f"\nload average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


def _pretrain_tables(tmp: str, raw_dir: str, args) -> None:
    """Pretraining pipeline by source and worker count, and the CODE-15% cost breakdown."""
    cache_dir, code15_dir = os.path.join(tmp, "cache"), os.path.join(tmp, "code15")
    synthetic.write_synthetic_code15(code15_dir, args.records, parts=2)
    cli = os.path.join(os.path.dirname(sys.executable), "crema-jax")
    start = time.perf_counter()
    subprocess.run([cli, "prepare", f"--root={raw_dir}", f"--out={cache_dir}",
                    "--workers=2", "--records_per_shard=128"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    prepare_s = time.perf_counter() - start
    rows = []
    for name, source in (("raw WFDB 500 Hz", {"root": raw_dir}),
                         ("CODE-15 HDF5 400 Hz", {"layout": "code15", "root": code15_dir}),
                         ("ArrayRecord cache", {"cache_dir": cache_dir})):
        for workers in (0, 2):
            cfg = config_lib.default_data_config()
            cfg.split, cfg.batch_size, cfg.num_views = "", 64, args.views
            cfg.num_workers = workers
            for key, value in source.items():
                setattr(cfg, key, value)
            # Raw reading is ~100x slower: time fewer batches so a row takes seconds.
            timed = args.batches if "cache" in name else max(2, args.batches // 4)
            rate, per_cpu = _throughput(cfg, timed, warmup=2 if workers else 1)
            rows.append((name, workers, rate, rate / max(workers, 1), per_cpu))
    code15_cpu = next(r[4] for r in rows if r[0].startswith("CODE-15") and r[1] == 0)
    breakdown = _code15_breakdown(code15_dir)

    print(f"\nprepare: {args.records} records (500 Hz, 10 s) -> cache in {prepare_s:.1f} s "
          f"with 2 workers; batches of 64, {args.views} view(s), random_per_lead 0.75\n")
    print(f"| {'source':<19} | workers | ECGs/s total | ECGs/s per worker | ECGs per CPU-s |")
    print(f"|{'-' * 21}|---------|--------------|-------------------|----------------|")
    for name, workers, rate, per, per_cpu in rows:
        cpu = f"{per_cpu:>14,.0f}" if per_cpu else f"{'-':>14}"
        print(f"| {name:<19} | {workers:>7} | {rate:>12,.0f} | {per:>17,.0f} | {cpu} |")
    print(f"\nCODE-15% HDF5 path, CPU ms per exam (in-process; {code15_cpu:,.0f} ECGs per CPU-s "
          f"= {1e3 / code15_cpu:.2f} ms):\n")
    print(f"| {'step':<58} | CPU ms |")
    print(f"|{'-' * 60}|--------|")
    for step, ms in breakdown:
        print(f"| {step:<58} | {ms:>6.2f} |")
    print(f"| {'sum of the steps after the first':<58} | "
          f"{sum(ms for _, ms in breakdown[1:]):>6.2f} |")


_DIRECT = ["--runner=DirectRunner", "--beam_option=direct_running_mode=multi_processing"]
PREPARE_RUNS = (("local path", "--workers=1"), ("local path", "--workers=2"),
                ("Beam DirectRunner", "--beam_option=direct_num_workers=1"),
                ("Beam DirectRunner", "--beam_option=direct_num_workers=2"))


def _prepare_cmd(raw_dir: str, out: str, *extra: str) -> list[str]:
    cli = os.path.join(os.path.dirname(sys.executable), "crema-jax")
    return [cli, "prepare", f"--root={raw_dir}", f"--out={out}", "--records_per_shard=128",
            *extra]


def _prepare_table(tmp: str, raw_dir: str, records: int) -> None:
    """Whole `crema-jax prepare` runs: local path and DirectRunner, 1 and 2 workers."""
    rows = []
    for i, (path, flag) in enumerate(PREPARE_RUNS):
        extra = [flag] if path == "local path" else [*_DIRECT, flag]
        start = time.perf_counter()
        subprocess.run(_prepare_cmd(raw_dir, os.path.join(tmp, f"prepared{i}"), *extra),
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rows.append((path, flag.rsplit("=", 1)[1], records / (time.perf_counter() - start)))
    print(f"\nprepare: {records} synthetic records (500 Hz, 10 s) -> cache, whole command "
          "runs (indexing and start-up included), records_per_shard 128:\n")
    print(f"| {'path':<17} | workers | ECGs/s |")
    print(f"|{'-' * 19}|---------|--------|")
    for path, workers, rate in rows:
        print(f"| {path:<17} | {workers:>7} | {rate:>6,.0f} |")


def _clinical_table(tmp: str, raw_dir: str, records: int) -> None:
    """Whole `crema-jax prepare --layout=clinical_exports` runs (2 workers), one format each."""
    import wfdb

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from tests.data import clinical_files

    names = sorted(f[:-4] for f in os.listdir(raw_dir) if f.endswith(".hea"))[:records]
    signals = [wfdb.rdrecord(os.path.join(raw_dir, n)).p_signal.T for n in names]
    rows = []
    for fmt, writer in sorted(clinical_files.WRITERS.items()):
        root = os.path.join(tmp, f"exports_{fmt}")
        os.makedirs(root)
        for name, signal in zip(names, signals):
            writer(os.path.join(root, name + clinical_files.SUFFIX[fmt]), signal, 500.0)
        size = sum(os.path.getsize(os.path.join(root, f)) for f in os.listdir(root))
        rates = []
        for index_workers in (1, 2):  # the index in-process, then in 2 spawned processes
            start = time.perf_counter()
            subprocess.run(_prepare_cmd(root, os.path.join(tmp, f"cache_{fmt}_{index_workers}"),
                                        "--workers=2", "--layout=clinical_exports",
                                        f"--layout_option=index_workers={index_workers}"),
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            rates.append(len(names) / (time.perf_counter() - start))
        rows.append((fmt, size / len(names) / 1024, *rates))
    print(f"\nprepare --layout=clinical_exports: {len(names)} synthetic records (500 Hz, 10 s) "
          "per format -> cache, whole command runs, 2 workers:\n")
    print(f"| {'format':<12} | KiB per file | ECGs/s, index in-process | ECGs/s, index in 2 "
          "processes |")
    print(f"|{'-' * 14}|--------------|--------------------------|---------------------------|")
    for fmt, kib, serial, pooled in rows:
        print(f"| {fmt:<12} | {kib:>12.1f} | {serial:>24,.0f} | {pooled:>25,.0f} |")


def _tree_rss_kib(root: int) -> dict[int, int]:
    """{pid: resident memory, KiB} of process `root` and all its descendants (from /proc)."""
    children, rss = collections.defaultdict(list), {}
    page_kib = os.sysconf("SC_PAGE_SIZE") // 1024
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # after "(name)": state, ppid, ...
        except OSError:
            continue  # the process ended meanwhile
        children[int(fields[1])].append(int(entry))
        rss[int(entry)] = int(fields[21]) * page_kib
    tree, stack = {}, [root]
    while stack:
        pid = stack.pop()
        tree[pid] = rss.get(pid, 0)
        stack += children[pid]
    return tree


def _high_water_kib(pid: int) -> int:
    """The kernel's peak resident memory of a live process (VmHWM), KiB; 0 once it ended."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("VmHWM:")), 0)
    except OSError:
        return 0


MEMORY_DISTINCT = 64  # distinct synthetic records behind --prepare_memory's N


def _prepare_memory(tmp: str, raw_dir: str, records: int) -> None:
    """Peak RSS of a DirectRunner prepare (2 worker processes) of `records` records: record k
    is synthetic record k % MEMORY_DISTINCT under a name of its own (its header rewritten, its
    signal file a hard link), as drawing 20,000 distinct ones takes longer than preparing them."""
    root = os.path.join(tmp, f"raw{records}")
    os.makedirs(root)
    for k in range(records):
        source, name = f"SYN{k % MEMORY_DISTINCT:05d}", f"REC{k:06d}"
        with open(os.path.join(raw_dir, source + ".hea")) as f:
            header = f.read().replace(source, name)
        with open(os.path.join(root, name + ".hea"), "w") as f:
            f.write(header)
        os.link(os.path.join(raw_dir, source + ".dat"), os.path.join(root, name + ".dat"))
    cmd = _prepare_cmd(root, os.path.join(tmp, f"cache{records}"), *_DIRECT,
                       "--beam_option=direct_num_workers=2", "--records_per_shard=1024")
    start, peak, high = time.perf_counter(), 0, collections.Counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    while proc.poll() is None:
        tree = _tree_rss_kib(proc.pid)
        peak = max(peak, sum(tree.values()))
        for pid in tree:
            high[pid] = max(high[pid], _high_water_kib(pid))
        time.sleep(0.2)
    worker = max((kib for pid, kib in high.items() if pid != proc.pid), default=0)
    last = proc.stdout.read().strip().splitlines()[-1:]
    if proc.returncode:
        raise SystemExit(f"prepare failed (exit {proc.returncode}): {last}")
    # The largest single process of every run so far (exact: the kernel's own peak).
    largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    print(f"prepare_memory: {records} records, DirectRunner 2 workers, records_per_shard 1024: "
          f"peak RSS of the process tree {peak / 1024:,.0f} MiB (sampled); peak of the "
          f"launching process {high[proc.pid] / 1024:,.0f} MiB, of the largest other process "
          f"{worker / 1024:,.0f} MiB (VmHWM); largest process so far {largest / 1024:,.0f} MiB "
          f"(getrusage); {time.perf_counter() - start:,.0f} s; {last[0]}",
          flush=True)


def _eval_table(raw_dir: str, args) -> None:
    """The evaluation pipeline (embed, probe, predict) from raw WFDB under each data path."""
    rows = []
    for preset in presets.NAMES:
        for threads in (0, 2):
            cfg = presets.apply(config_lib.default_data_config(), preset)
            cfg.split, cfg.batch_size, cfg.num_epochs, cfg.root = "", 64, 1, raw_dir
            cfg.read_threads = threads
            cfg.prefetch_buffer_size = 2 * max(threads, 1)  # as embed/probe/predict read
            rows.append((preset, threads, *_eval_throughput(cfg, args.repeats)))
    print(f"\nEvaluation pipeline from raw 500 Hz WFDB, one process, whole passes over the "
          f"{args.records} records in batches of 64 (median of {args.repeats} passes) by "
          "data path (read threads 0 = the consuming thread reads; 2 = data.read_threads=2, "
          "what embed, probe and predict use in-process; "
          "CPU-s count every thread of the process):\n")
    print(f"| {'data path':<10} | read threads | ECGs/s per process | ECGs per CPU-s |")
    print(f"|{'-' * 12}|--------------|--------------------|----------------|")
    for preset, threads, rate, per_cpu in rows:
        print(f"| {preset:<10} | {threads:>12} | {rate:>18,.0f} | {per_cpu:>14,.0f} |")


if __name__ == "__main__":
    main()
