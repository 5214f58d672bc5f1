"""`crema-jax embed`: the features (or logits) a checkpoint's downstream head consumes, one row
per ECG.

    crema-jax embed --checkpoint=DIR --input=X.npy --out=Y.npy [--fs=500] [--raw] [--logits]
    crema-jax embed --checkpoint=DIR --input=/data/records --out=Y.npy   # a,b | glob | folder

SiT: SEP tokens dropped, mean over lead x patch tokens, the final LayerNorm (ST-MEM); Net1D: the
time-averaged features of the last stage. Without --raw the input takes the evaluation path of
probe and finetune (resampling, the checkpoint's preprocessing, its crops, features averaged
over crops); --raw feeds an array as given. Y.records.txt names the ECG of each row (unreadable
ones are skipped and counted): for an array its row number in X; for records the record's
file name, or its path below the records' common folder when two share a name ("ID#k" for
window k when the data path cuts records into windows). One line per row: a backslash, newline
or carriage return in a name is written as \\\\, \\n or \\r. What the data path did to the
input is said in one line beginning "input:": an array's NaN/Inf samples, or what reading
repaired in records, per kind as data/reading/repairs.py's WORDS names it (e.g. "NaN samples
interpolated", "all-NaN leads fed as zeros"), and the leads the model reads that records lack
("leads not in the file", counted apart), with the first records it names.
"""
import io
import math
import os

import numpy as np

from crema_jax.cli import command, skipped_records
from crema_jax.evaluate import ranges
from crema_jax.runtime import files

COMMAND = command.Command("embed", __doc__,
                          usage="--checkpoint=DIR --input=X.npy|RECORDS --out=Y.npy")
COMMAND.string("checkpoint", None, "Workdir, checkpoints dir or step dir to read.", required=True)
COMMAND.string("input", None, "X.npy (N, 12 or 1 leads, samples) in mV, or records: a,b | a "
               "glob | a folder (its WFDB records and export files); a record is a WFDB record "
               "or a hospital export file (DICOM, HL7 aECG, GE MUSE, Philips, EDF+, SCP-ECG).",
               required=True)
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
    from crema_jax.data.reading import arrays
    from crema_jax.data.reading.ecg import RecordError
    from crema_jax.inference import backbones, embed

    try:
        fs = float(args.fs) if args.fs else None
    except ValueError:
        fs = math.nan
    if not ranges.SAMPLING_RATE.ok(fs):
        raise command.FlagValueError(f"--fs={args.fs}: a sampling rate in Hz, "
                                     f"{ranges.SAMPLING_RATE.text}")
    if not args.out.endswith(".npy") or os.path.basename(args.out) == ".npy":
        # A bare ".npy" had written the hidden files .npy and .npy.records.txt.
        raise command.CommandError(f"--out={args.out}: expected a file name ending in .npy, "
                                   "such as Y.npy (a name before the extension)")
    side = os.path.splitext(args.out)[0] + ".records.txt"
    records = None if args.input.endswith(".npy") else dataset_index.expand_records(args.input)
    for path in (args.out, side):   # checked before any work: nothing is written on error
        files.check_output_file(path, inputs=[args.input, args.checkpoint,
                                              *dataset_index.files_read(records or [])],
                                overwrite=args.overwrite)
    new_folder = files.new_folders_note(args.out)
    backbone = backbones.load(args.checkpoint, with_head=args.logits)
    if records is None:
        try:  # the header checked against the file's size before anything is allocated
            array = np.asarray(arrays.open_npy(args.input))
        except RecordError as err:
            raise command.CommandError(f"--input={err.message}") from None
        try:  # the array's shape, dtype or length: named with its file
            out = embed.embed(backbone, array=array, fs=fs,
                              raw=args.raw, logits=args.logits, batch_size=args.batch_size,
                              preset=args.preset or None, windows=args.windows)
        except embed.EmbedError as err:
            raise command.CommandError(f"--input={args.input}: {err}") from None
    else:
        out = embed.embed(backbone, records=records, raw=args.raw, logits=args.logits,
                          batch_size=args.batch_size, preset=args.preset or None,
                          windows=args.windows)
    if out["data_cfg"] is not None:
        print(backbones.describe_data_path(out["data_cfg"], args.preset))
    if out["note"]:
        print(out["note"])
    skipped_records.check_some_read(out, f"--input={args.input}")
    # Each row's ECG: a record, or for an array its row number (an unreadable one is skipped,
    # so row i of Y need not be row i of X). Both files' bytes are made before either is
    # written (a name that did not encode had left Y.npy without its records).
    names = (embed.row_names(records, out["record"], out["window"]) if records is not None
             else [str(int(r)) for r in out["record"]])
    names_text = "".join(embed.one_line_name(name) + "\n" for name in names)
    npy = io.BytesIO()  # written by Python, not by numpy's C writer, so that a full disk is
    np.save(npy, out["outputs"])  # an OSError with its errno ("No space left on device")
    files.write_atomic_group([(args.out, _writer(npy.getvalue())),   # both or neither: never
                              (side, _writer(names_text.encode("utf-8")))])  # new Y, old names
    if new_folder:
        print(new_folder)
    print(f"wrote {args.out}: {out['outputs'].shape} {'logits' if args.logits else 'features'}"
          f", each row's ECG in {side}")
    if out["skipped"].total:
        print(skipped_records.line(out["skipped"]))


def _writer(data: bytes):
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
    return write
