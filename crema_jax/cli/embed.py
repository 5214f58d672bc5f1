"""`crema-jax embed`: the features (or logits) a checkpoint's downstream head consumes, one row
per ECG.

    crema-jax embed --checkpoint=DIR --input=X.npy --out=Y.npy [--fs=500] [--raw] [--logits]
    crema-jax embed --checkpoint=DIR --input=/data/records --out=Y.npy   # WFDB: a,b | glob | folder

SiT: SEP tokens dropped, mean over lead x patch tokens, the final LayerNorm (ST-MEM); Net1D: the
time-averaged features of the last stage. Without --raw the input takes the evaluation path of
probe and finetune (resampling, the checkpoint's preprocessing, its crops, features averaged
over crops); --raw feeds an array as given. For WFDB input, Y.records.txt lists the record of
each row: its file name, or its path below the records' common folder when two share a name
("ID#k" for window k when the data path cuts records into windows; unreadable records are
skipped and counted).
"""
import io
import os

import numpy as np

from crema_jax.cli import command
from crema_jax.runtime import files

COMMAND = command.Command("embed", __doc__,
                          usage="--checkpoint=DIR --input=X.npy|RECORDS --out=Y.npy")
COMMAND.string("checkpoint", None, "Workdir, checkpoints dir or step dir to read.", required=True)
COMMAND.string("input", None, "X.npy (N, 12 or 1 leads, samples) in mV, or WFDB records: "
               "a,b | a glob | a folder.", required=True)
COMMAND.string("out", None, "Output Y.npy: (N, features) float32.", required=True)
COMMAND.string("fs", "", "Sampling rate of an .npy input in Hz (default: the model's rate).")
COMMAND.boolean("raw", False, "Feed the array as given: no resampling, preprocessing or crops.")
COMMAND.boolean("logits", False, "Write classification logits (crop-averaged) instead of "
                "features.")
COMMAND.integer("batch_size", 16, "ECGs per forward pass.", lower_bound=1)
COMMAND.enum("preset", "", ["", "crema", "stmem", "ecgfounder"], "The data path, file to model "
             "input (data/presets.py): '' = the checkpoint's own (import-torch writes ST-MEM's "
             "or ECGFounder's; ours is crema).")
COMMAND.boolean("overwrite", False, "Replace Y.npy (and Y.records.txt) when they exist.")
COMMAND.enum("windows", "rows", ["rows", "mean"], "When the data path cuts records into 10 s "
             "windows (ST-MEM's): one row per window, or one per record (its windows' mean).")


@COMMAND.main
def main(args) -> None:
    from crema_jax.data.index import dataset_index  # run time: --help needs no JAX
    from crema_jax.inference import backbones, embed

    try:
        fs = float(args.fs) if args.fs else None
    except ValueError:
        raise command.CommandError(f"--fs={args.fs!r}: expected a sampling rate in Hz") from None
    if not args.out.endswith(".npy"):
        raise command.CommandError(f"--out={args.out}: expected a file name ending in .npy")
    side = os.path.splitext(args.out)[0] + ".records.txt"
    for path in (args.out, side):   # checked before any work: nothing is written on error
        files.check_output_file(path, inputs=[args.input, args.checkpoint],
                                overwrite=args.overwrite)
    backbone = backbones.load(args.checkpoint, with_head=args.logits)
    records = None
    if args.input.endswith(".npy"):
        if not os.path.isfile(args.input):
            raise FileNotFoundError(f"--input={args.input}: no such file")
        try:
            array = np.load(args.input, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise command.CommandError(f"--input={args.input}: not a NumPy .npy array ({err})") \
                from None
        out = embed.embed(backbone, array=array, fs=fs,
                          raw=args.raw, logits=args.logits, batch_size=args.batch_size,
                          preset=args.preset or None, windows=args.windows)
    else:
        records = dataset_index.expand_records(args.input)
        out = embed.embed(backbone, records=records, raw=args.raw, logits=args.logits,
                          batch_size=args.batch_size, preset=args.preset or None,
                          windows=args.windows)
    if out["data_cfg"] is not None:
        print(backbones.describe_data_path(out["data_cfg"], args.preset))
    if out["note"]:
        print(out["note"])
    if not len(out["outputs"]):
        raise command.CommandError(f"--input={args.input}: no ECG could be read "
                                   f"({out['skipped'].total} skipped); nothing written")
    npy = io.BytesIO()  # written by Python, not by numpy's C writer, so that a full disk is
    np.save(npy, out["outputs"])  # an OSError with its errno ("No space left on device")
    files.write_bytes_atomic(args.out, npy.getvalue())
    if records is not None:
        files.write_text_atomic(side, "\n".join(
            embed.row_names(records, out["record"], out["window"])) + "\n")
    skipped = out["skipped"].total
    print(f"wrote {args.out}: {out['outputs'].shape} {'logits' if args.logits else 'features'}"
          + (f"; skipped {skipped} unreadable records" if skipped else ""))
