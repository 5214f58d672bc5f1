"""`crema-jax prepare`: convert a dataset into a preprocessed, sharded ArrayRecord cache.

    crema-jax prepare --layout=wfdb_folder --root=/data/cinc2021 --out=/data/cinc2021-cache \
        --workers=8 [--strict] [--target_fs=250] [--preprocess=stmem] [--records_per_shard=1024] \
        [--layout_option=KEY=VALUE ...]

Resumable: rerunning the same command after an interruption finishes the same shards. Bad
records are skipped, counted in a table by reason and listed in summary.json; the last line is
`prepared N records, skipped M`. Train from the cache with --config.data.cache_dir=OUT.
"""
from crema_jax.cli import command

COMMAND = command.Command("prepare", __doc__, usage="--layout=NAME --root=DIR --out=DIR")
COMMAND.string("layout", "wfdb_folder", "Dataset layout (a key of data.layouts.LAYOUTS: "
               "wfdb_folder, ptbxl, manifest, code15, mimic_iv_ecg, numpy).")
COMMAND.string("root", None, "Dataset folder read by the layout (or the manifest CSV's folder).",
               required=True)
COMMAND.string("out", None, "Output folder of the cache (created; rerun into it to resume).",
               required=True)
COMMAND.multi_string("layout_option", [], "KEY=VALUE keyword argument of the layout, "
                     "repeatable (e.g. label_set=rhythm); VALUE is read as JSON when it can be "
                     "(numbers, true/false), else kept as a string.")
COMMAND.integer("workers", 2, "Worker processes (1 = in this process).", lower_bound=1)
COMMAND.boolean("strict", False, "Stop with an error at the first bad record.")
COMMAND.float("target_fs", 250.0, "Sampling rate of the cached signals, Hz.")
COMMAND.string("preprocess", "crema", "Preprocessing preset (a key of "
               "data.preprocess.PRESETS: crema, ecgfounder, none; record-stage presets only).")
COMMAND.integer("records_per_shard", 1024, "Records per ArrayRecord shard.", lower_bound=1)
COMMAND.enum("dtype", "int16", ["float16", "int16"], "Stored sample type (int16 with a per-lead "
             "scale: see data/cache.py for why).")
COMMAND.integer("stop_after_shards", 0, "Stop after this many newly written shards and exit 3, "
                "as if interrupted (0 = never; for testing resumption).", lower_bound=0)


@COMMAND.main
def main(args) -> int:
    from crema_jax.data import prepare

    result = prepare.prepare(
        layout=args.layout, root=args.root, out=args.out,
        layout_options=command.parse_key_values(args.layout_option, flag="layout_option"),
        workers=args.workers, strict=args.strict, target_fs=args.target_fs,
        preprocess=args.preprocess, records_per_shard=args.records_per_shard, dtype=args.dtype,
        stop_after_shards=args.stop_after_shards)
    if result["stopped"]:
        print(f"stopped after {args.stop_after_shards} new shards (--stop_after_shards); "
              "rerun to resume")
        return 3
    print(f"prepared {result['records']} records, skipped "
          f"{sum(e['count'] for e in result['skipped'].values())}")
    return 0
