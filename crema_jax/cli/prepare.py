"""`crema-jax prepare`: convert a dataset into a preprocessed, sharded ArrayRecord cache.

    crema-jax prepare --layout=wfdb_folder --root=/data/cinc2021 --out=/data/cinc2021-cache \
        --workers=8 [--strict] [--target_fs=250] [--preprocess=stmem] [--records_per_shard=1024] \
        [--layout_option=KEY=VALUE ...]

Resumable: rerunning the same command after an interruption finishes the same shards. Bad
records are skipped, counted in a table by reason and listed in summary.json; the last line is
`prepared N records, skipped M`. Train from the cache with --config.data.cache_dir=OUT.
--root and --out may be gs:// or s3:// URLs (fsspec with gcsfs or s3fs installed).

The same cache as an Apache Beam pipeline (`pip install -e ".[beam]"`), on any runner:

    crema-jax prepare --layout=wfdb_folder --root=gs://B/cinc2021 --out=gs://B/cache \
        --runner=DataflowRunner --beam_option=project=P --beam_option=region=R \
        --beam_option=temp_location=gs://B/tmp --beam_option=setup_file=./setup.py

An array job (SLURM array, TPU VM hosts; host index and count default to the SLURM or TPU
environment): each task writes its block of shards, then one merge writes the index:

    crema-jax prepare ... --num_hosts=4 --host_index=$I      # each task
    crema-jax prepare ... --merge                            # once, after every task

Whichever way it is built, the cache is byte-identical to a one-process run (docs/data.md).
"""
from crema_jax.cli import command
from crema_jax.data.index import registry
from crema_jax.evaluate import ranges

COMMAND = command.Command("prepare", __doc__, usage="--layout=NAME --root=DIR --out=DIR")
COMMAND.string("layout", "wfdb_folder", f"Dataset layout: {', '.join(registry.NAMES)}.")
COMMAND.string("root", None, "Dataset folder read by the layout (or the manifest CSV's folder).",
               required=True)
COMMAND.string("out", None, "Output folder of the cache (created; rerun into it to resume).",
               required=True)
COMMAND.multi_string("layout_option", [], "KEY=VALUE keyword argument of the layout, "
                     "repeatable (e.g. label_set=rhythm); VALUE is read as JSON when it can be "
                     "(numbers, true/false), else kept as a string.")
COMMAND.integer("workers", 2, "Worker processes (1 = in this process).", lower_bound=1)
COMMAND.boolean("strict", False, "Stop with an error at the first bad record.")
COMMAND.float("target_fs", 250.0, "Sampling rate of the cached signals, Hz.",
              valid=ranges.SAMPLING_RATE)
COMMAND.string("preprocess", "crema", "Preprocessing preset (a key of "
               "data.presets.PRESETS: crema, ecgfounder, none; record-stage presets only).")
COMMAND.integer("records_per_shard", 1024, "Records per ArrayRecord shard.", lower_bound=1)
COMMAND.enum("dtype", "int16", ["float16", "int16"], "Stored sample type (int16 with a per-lead "
             "scale: see data/cache/record_format.py for why).")
COMMAND.string("runner", "", "Build the cache as an Apache Beam pipeline on this runner "
               "(DirectRunner, DataflowRunner, PortableRunner, FlinkRunner, SparkRunner); "
               "empty: this machine's worker processes, without Beam.")
COMMAND.multi_string("beam_option", [], "KEY=VALUE Beam pipeline option, repeatable (e.g. "
                     "project=P, region=R, temp_location=gs://B/tmp, direct_num_workers=2); "
                     "passed to Beam as --KEY=VALUE.")
COMMAND.integer("num_hosts", -1, "Tasks of an array job writing this cache together (-1: from "
                "SLURM_ARRAY_TASK_COUNT / SLURM_NTASKS or TPU_WORKER_HOSTNAMES, else 1); each "
                "writes its shards, then `--merge` writes the index.")
COMMAND.integer("host_index", -1, "This task's index in [0, num_hosts) (-1: from "
                "SLURM_ARRAY_TASK_ID / SLURM_PROCID or TPU_WORKER_ID, else 0).")
COMMAND.boolean("merge", False, "Only merge the shards already in --out into its index (every "
                "shard must be there); writes no shard.")
COMMAND.integer("stop_after_shards", 0, "Stop after this many newly written shards and exit 3, "
                "as if interrupted (0 = never; for testing resumption).", lower_bound=0)


def _on_beam(args) -> int:
    # beam_pipeline imports apache_beam (the optional [beam] extra) only when it runs.
    from crema_jax.data.cache import beam_pipeline

    result = beam_pipeline.prepare_on_beam(
        layout=args.layout, root=args.root, out=args.out,
        layout_options=command.parse_key_values(args.layout_option, flag="layout_option"),
        strict=args.strict, target_fs=args.target_fs, preprocess=args.preprocess,
        records_per_shard=args.records_per_shard, dtype=args.dtype, runner=args.runner,
        beam_options=command.parse_key_values(args.beam_option, flag="beam_option"))
    skipped = sum(e["count"] for e in result["skipped"].values())
    print(f"prepared {result['records']} records, skipped {skipped}")
    _refuse_an_empty_cache(result, args.out)
    return 0


@COMMAND.main
def main(args) -> int:
    from crema_jax.data.cache import hosts, prepare  # run time: --help needs no data stack

    if args.runner:
        if args.merge or args.num_hosts > 0 or args.stop_after_shards:
            raise ValueError("--runner builds the whole cache, index included: it takes no "
                             "--merge, --num_hosts or --stop_after_shards")
        return _on_beam(args)
    host, num_hosts, origin = hosts.resolve(args.host_index, args.num_hosts)
    if num_hosts > 1 and not args.merge:
        print(f"prepare: host {host} of {num_hosts} ({origin})")
    result = prepare.prepare(
        layout=args.layout, root=args.root, out=args.out,
        layout_options=command.parse_key_values(args.layout_option, flag="layout_option"),
        workers=args.workers, strict=args.strict, target_fs=args.target_fs,
        preprocess=args.preprocess, records_per_shard=args.records_per_shard, dtype=args.dtype,
        stop_after_shards=args.stop_after_shards, num_hosts=num_hosts,
        host_index=0 if args.merge else host, merge_only=args.merge)
    if result["stopped"]:
        print(f"stopped after {args.stop_after_shards} new shards (--stop_after_shards); "
              "rerun to resume")
        return 3
    skipped = sum(e["count"] for e in result["skipped"].values())
    if not result["merged"]:
        shards = result["shards"]
        which = f"shards {shards.start}-{shards.stop - 1}" if shards else "no shards"
        print(f"host {host}/{num_hosts}: prepared {result['records']} records, skipped {skipped} "
              f"({which}); when every host is done, merge with `crema-jax prepare ... --merge`")
        return 0
    print(f"prepared {result['records']} records, skipped {skipped}")
    _refuse_an_empty_cache(result, args.out)
    return 0


def _refuse_an_empty_cache(result: dict, out: str) -> None:
    """Exit 1 when every record was skipped: the cache is written (its summary.json lists each
    skip), but a script must not train on an empty one."""
    if not result["records"]:
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(
            (r, e["count"]) for r, e in result["skipped"].items()))
        raise command.CommandError(f"--out={out}: no record could be prepared ({reasons}); "
                                   f"{out}/summary.json lists each skipped file")
