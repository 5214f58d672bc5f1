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
in the CSV's last column, "repairs".
"""
from crema_jax.cli import command, skipped_records
from crema_jax.runtime import files

COMMAND = command.Command("predict", __doc__, usage="--model=ecgfounder --checkpoint=DIR",
                          positional="RECORD...")
COMMAND.enum("model", "ecgfounder", ["ecgfounder"], "The label model.")
COMMAND.string("checkpoint", None, "Workdir, checkpoints dir or step dir to read.", required=True)
COMMAND.string("out", "", "Output CSV: per record its id, all label probabilities and its "
               "repairs (the last column, repairs, is text: read the label columns by name).")
COMMAND.integer("top", 5, "Labels printed per record.", lower_bound=0)
COMMAND.boolean("overwrite", False, "Replace the --out CSV when it exists.")
COMMAND.integer("batch_size", 16, "ECGs per forward pass.", lower_bound=1)
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
    from crema_jax.inference import backbones, embed, predict

    if not args.positional:
        raise command.FlagValueError(f"no records given (usage: {COMMAND.usage_line()})")
    # Each argument is one spec: a path with a comma in it stays one path.
    paths = dataset_index.unique_records(p for spec in args.positional
                                         for p in dataset_index.expand_records(spec))
    if args.out:  # never one of the records' files, --overwrite or not
        files.check_output_file(args.out, inputs=[args.checkpoint, *args.positional,
                                                  *dataset_index.files_read(paths)],
                                overwrite=args.overwrite)
    new_folder = files.new_folders_note(args.out) if args.out else ""
    labels = predict.label_names()
    backbone = backbones.load(args.checkpoint, with_head=True)
    predict.check_backbone(backbone)
    out = predict.predict_probabilities(backbone, records=paths, batch_size=args.batch_size,
                                        preset=args.preset or None,
                                        derive_limb_leads=args.derive_limb_leads)
    given = args.positional
    skipped_records.check_some_read(out, ", ".join(given[:3]) + (
        f" and {len(given) - 3} more" if len(given) > 3 else ""))
    print(backbones.describe_data_path(out["data_cfg"], args.preset)
          + (", limb leads absent or held without signal (all NaN, constant) derived from the "
             "others (--derive_limb_leads)" if args.derive_limb_leads else ""))
    if out["note"]:
        print(out["note"])
    ids = embed.row_names(paths, out["record"], out["window"])
    repairs = predict.row_repairs(out)
    print(predict.format_top(ids, out["probs"], labels, args.top, repairs))
    if out["skipped"].total:
        print(skipped_records.line(out["skipped"]))
    if args.out:
        predict.write_csv(args.out, ids, out["probs"], labels, repairs)
        if new_folder:
            print(new_folder)
        print(f"wrote {args.out} ({len(ids)} records x {len(labels)} labels)")
