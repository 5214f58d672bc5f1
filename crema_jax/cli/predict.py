"""`crema-jax predict`: ECGFounder's 150 label probabilities for ECG records: WFDB records or
hospital export files (DICOM, HL7 aECG, GE MUSE, Philips, EDF+, SCP-ECG; the `clinical` extra).

    crema-jax predict --model=ecgfounder --checkpoint=DIR RECORD... [--out=probs.csv] [--top=5]

The checkpoint is an `import-torch --format=ecgfounder` import (12-lead, or 1-lead reading lead
I). Records take ECGFounder's own data path: NaN -> 0, 50 Hz notch, 0.67-40 Hz band-pass, running
median baseline removed, one z-score, 500 Hz, 10 s (a longer record's centred 10 s). RECORD:
records or export files, globs ('exports/*.xml'), or folders (their WFDB records and export
files); each may be comma-separated. What
reading repaired in a record (NaN samples set to 0, an all-NaN lead fed as zeros, extra channels
dropped, leads not in the file) is said in one line for the run, beside the record's name, and
in the CSV's last column, "repairs". The CSV's "path" column is each record's absolute path:
the same in every run, where its id ("record") is its file name, or its path below the
records' common folder when two share a name. Every skipped record is written to
OUT.skipped.csv (path: the record's, as the CSV's; reason, message, and the file that failed)
beside the CSV when any was, and a progress line
(records done, records/s, ETA) goes to stderr every 10 s.

--out may be a URL (gs://, s3://): the CSV (and OUT.skipped.csv) are written locally, then
uploaded as a group (runtime/storage.py), with no resuming. With a local --out, an interrupted
run keeps its finished batches in the hidden folder .OUT.partial
beside it, every 10 s as it goes and when it stops (Ctrl-C, SIGTERM, a crash; SIGKILL loses the
batches of the last 10 s at most), and the same command run again reads only the records not
kept, then writes the CSV and removes the folder. Run with another checkpoint, data path or
package version, it says so and starts over (inference/partial.py). One run at a time writes a
local --out: another started with the same --out while it runs is refused in one line naming the
output and the running one's pid.
"""
from crema_jax.cli import command, skipped_records
from crema_jax.runtime import made_folders, storage

COMMAND = command.Command("predict", __doc__, usage="--model=ecgfounder --checkpoint=DIR",
                          positional="RECORD...")
COMMAND.enum("model", "ecgfounder", ["ecgfounder"], "The label model.")
COMMAND.string("checkpoint", None, "Workdir, checkpoints dir or step dir to read.", required=True)
COMMAND.string("out", "", "Output CSV: per record its id, its absolute path, all label "
               "probabilities and its repairs (the last column, repairs, is text: read the label "
               "columns by name); skipped records in OUT.skipped.csv. A path, or a URL (gs://, "
               "s3://) they are uploaded to. Finished batches are kept in .OUT.partial beside a "
               "local CSV as the run goes: an interrupted run, run again, resumes.")
COMMAND.integer("top", 5, "Labels printed per record (0: no line per record).",
                lower_bound=0)
COMMAND.boolean("overwrite", False, "Replace the --out CSV (and OUT.skipped.csv) when they "
                "exist.")
COMMAND.integer("batch_size", 16, "ECGs per forward pass (at most the records given, rounded "
                "up to a multiple of the devices); the last batch is padded to this size: its "
                "padding is computed too, then dropped.",
                lower_bound=1)
COMMAND.enum("preset", "", ["", "crema", "stmem", "ecgfounder"], "The data path (data/"
             "presets.py): '' = the checkpoint's own (ECGFounder's for an import).")
COMMAND.boolean("derive_limb_leads", False, "Derive a record's absent limb leads, and those "
                "held without signal (all NaN or constant), rather than feed them as they are as "
                "ECGFounder's own path does (an absent lead as zeros; GE MUSE exports store 8 "
                "leads): first I = II - III or II = I + III when only one of I, II has signal and "
                "III has, then from I and II: III = II - I, aVR = -(I + II)/2, aVL = I - II/2, "
                "aVF = II - I/2. Leads with signal are never replaced: a record whose 12 leads "
                "all have signal reads the same without it.")


@COMMAND.main
def main(args) -> None:
    from crema_jax.data.index import dataset_index  # run time: --help needs no JAX
    from crema_jax.inference import partial, skip_file

    if not args.positional:
        raise command.FlagValueError(f"no records given (usage: {COMMAND.usage_line()})")
    # Each argument is one spec: a path with a comma in it stays one path.
    paths = dataset_index.unique_records(p for spec in args.positional
                                         for p in dataset_index.expand_records(spec))
    skipped_csv = skip_file.path_of(args.out) if args.out else ""
    # A URL output keeps no finished batches: they live in a local folder beside the output.
    resumable = bool(args.out) and not storage.is_remote(args.out)
    stale = partial.clear_stale(args.out) if resumable else None
    if stale:
        print(stale)
    for path in filter(None, (args.out, skipped_csv)):  # never one of the records' files,
        storage.check_output_file(path, inputs=[args.checkpoint, *args.positional,  # --overwrite
                                                *dataset_index.files_read(paths)],  # or not
                                  overwrite=args.overwrite)
    new_folder = made_folders.note(args.out) if args.out else ""
    keeper = partial.Keeper(args.out, "logits") if resumable else None
    if keeper is not None:  # before any work: a second run with this --out is refused now
        keeper.lock()
    try:
        _predict(args, paths, keeper, new_folder)
    finally:
        if keeper is not None:
            keeper.close()


def _predict(args, paths, keeper, new_folder) -> None:
    """predict's work once its output is checked (and locked, with --out)."""
    from crema_jax.inference import backbones, embed, predict

    labels = predict.label_names()
    backbone = backbones.load(args.checkpoint, with_head=True)
    predict.check_backbone(backbone)
    out = predict.predict_probabilities(backbone, records=paths, batch_size=args.batch_size,
                                        preset=args.preset or None,
                                        derive_limb_leads=args.derive_limb_leads, keeper=keeper,
                                        progress="predict")
    given = args.positional
    try:  # every record skipped: an error, as embed's (it had written a CSV of no row, exit 0)
        skipped_records.check_some_read(out, ", ".join(given[:3]) + (
            f" and {len(given) - 3} more" if len(given) > 3 else ""))
    except command.CommandError:
        if keeper is not None:  # nothing to resume: the folder would outlive the error
            keeper.remove()
        raise
    print(backbones.describe_data_path(out["data_cfg"], args.preset, averaging="logit")
          + (", limb leads absent or held without signal (all NaN, constant) derived from the "
             "others (--derive_limb_leads)" if args.derive_limb_leads else ""))
    if out["note"]:
        print(out["note"])
    ids = embed.row_names(paths, out["record"], out["window"])
    repairs = predict.row_repairs(out)
    if args.top:
        print(predict.format_top(ids, out["probs"], labels, args.top, repairs))
    if out["skipped"].total:
        print(skipped_records.line(out["skipped"], out["skipped_earlier"]))
    if args.out:
        _write(args, out, ids, labels, repairs, paths, keeper, new_folder)


def _write(args, out, ids, labels, repairs, paths, keeper, new_folder) -> None:
    """The CSV and, when records were skipped, OUT.skipped.csv, as one group; then the partial
    folder is removed, and a stale OUT.skipped.csv of an earlier run (--overwrite)."""
    from crema_jax.inference import embed, predict, skip_file

    skipped_csv = skip_file.path_of(args.out)
    row_paths = [paths[int(r)] for r in out["record"]]
    writes = [(args.out, predict.csv_writer(ids, out["probs"], labels, repairs, row_paths))]
    if out["skips"]:
        writes.append((skipped_csv, skip_file.writer(out["skips"], paths, embed.one_line_name)))
    storage.write_atomic_group(writes)   # a URL: written here, then uploaded
    if not out["skips"] and storage.isfile(skipped_csv):
        storage.remove(skipped_csv)   # --overwrite: an earlier run's, naming skips not made now
    if keeper is not None:
        keeper.remove()
    if new_folder:
        print(new_folder)
    print(f"wrote {args.out} ({len(ids)} records x {len(labels)} labels)"
          + (f"; every skipped record in {skipped_csv}" if out["skips"] else ""))
