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
("leads not in the file", counted apart), with the first records it names. For records,
Y.paths.txt gives each row's record by its absolute path (the same in every run: a record's
name depends on the others given); every skipped ECG is written to Y.skipped.csv (path: the
record's as in Y.paths.txt, or an array's row number; reason, message, and the file that
failed) when any was; Y.npy and these side files are written as one group. A
progress line (records done, records/s, ETA) goes to stderr every 10 s.

--out may be a URL (gs://, s3://): Y.npy and its side files are written locally, then uploaded
as a group (runtime/storage.py), with no resuming. An interrupted run over records with a local
--out keeps its finished batches in the hidden folder .Y.npy.partial beside Y.npy, every 10 s as
it goes and when it stops (Ctrl-C, SIGTERM, a crash; SIGKILL loses the batches of the last 10 s
at most), and the same command run again reads only the records not kept, then writes Y.npy and
removes the folder. Run with another checkpoint, data path, --logits or package version, it says
so and starts over (inference/partial.py). One run at a time writes a local Y.npy of records:
another started with the same --out while it runs is refused in one line naming the output and
the running one's pid.
"""
import io
import math
import os

import numpy as np

from crema_jax.cli import command, skipped_records
from crema_jax.evaluate import ranges
from crema_jax.runtime import made_folders, storage

COMMAND = command.Command("embed", __doc__,
                          usage="--checkpoint=DIR --input=X.npy|RECORDS --out=Y.npy")
COMMAND.string("checkpoint", None, "Workdir, checkpoints dir or step dir to read.", required=True)
COMMAND.string("input", None, "X.npy (N, 12 or 1 leads, samples) in mV, or records: a,b | a "
               "glob | a folder (its WFDB records and export files); a record is a WFDB record "
               "or a hospital export file (DICOM, HL7 aECG, GE MUSE, Philips, EDF+, SCP-ECG).",
               required=True)
COMMAND.string("out", None, "Output Y.npy: (N, features) float32; a path, or a URL (gs://, "
               "s3://) it and its side files are uploaded to. For records, finished batches are "
               "kept in .Y.npy.partial beside a local Y.npy as the run goes: an interrupted run, "
               "run again, resumes.", required=True)
COMMAND.string("fs", "", "Sampling rate of an .npy input in Hz (default: the model's rate).")
COMMAND.boolean("raw", False, "Feed the array as given: no resampling, preprocessing or crops.")
COMMAND.boolean("logits", False, "Write classification logits (crop-averaged) instead of "
                "features.")
COMMAND.integer("batch_size", 16, "ECGs per forward pass (at most the ECGs given, rounded "
                "up to a multiple of the devices); the last batch is padded to this size: its "
                "padding is computed too, then dropped.",
                lower_bound=1)
COMMAND.enum("preset", "", ["", "crema", "stmem", "ecgfounder"], "The data path, file to model "
             "input (data/presets.py): '' = the checkpoint's own (import-torch writes ST-MEM's "
             "or ECGFounder's; ours is crema).")
COMMAND.boolean("overwrite", False, "Replace Y.npy and its side files (Y.records.txt, "
                "Y.paths.txt, Y.skipped.csv) when they exist; a side file this run does not "
                "write is removed.")
COMMAND.enum("windows", "rows", ["rows", "mean"], "When the data path cuts records into 10 s "
             "windows (ST-MEM's): one row per window, or one per record (its windows' mean).")


@COMMAND.main
def main(args) -> None:
    from crema_jax.data.index import dataset_index  # run time: --help needs no JAX
    from crema_jax.inference import partial

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
    records = None if args.input.endswith(".npy") else dataset_index.expand_records(args.input)
    # A URL output keeps no finished batches: they live in a local folder beside the output.
    resumable = records is not None and not storage.is_remote(args.out)
    stale = partial.clear_stale(args.out) if resumable else None
    if stale:
        print(stale)
    for path in (args.out, *_side_files(args.out).values()):  # checked before any work:
        storage.check_output_file(path, inputs=[args.input, args.checkpoint,  # nothing is
                                                *dataset_index.files_read(records or [])],
                                  overwrite=args.overwrite)  # written on error
    new_folder = made_folders.note(args.out)
    keeper = (partial.Keeper(args.out, "logits" if args.logits else "features")
              if resumable else None)
    if keeper is not None:  # before any work: a second run with this --out is refused now
        keeper.lock()
    try:
        _embed(args, fs, records, keeper, new_folder)
    finally:
        if keeper is not None:
            keeper.close()


def _embed(args, fs, records, keeper, new_folder) -> None:
    """embed's work once its output is checked (and locked, for records)."""
    from crema_jax.data.reading import arrays
    from crema_jax.data.reading.ecg import RecordError
    from crema_jax.inference import backbones, embed

    backbone = backbones.load(args.checkpoint, with_head=args.logits)
    if records is None:
        try:  # the header checked against the file's size before anything is allocated
            array = np.asarray(arrays.open_npy(args.input))
        except RecordError as err:
            raise command.CommandError(f"--input={err.message}") from None
        try:  # the array's shape, dtype or length: named with its file
            out = embed.embed(backbone, array=array, fs=fs,
                              raw=args.raw, logits=args.logits, batch_size=args.batch_size,
                              preset=args.preset or None, windows=args.windows,
                              progress="embed")
        except embed.EmbedError as err:
            raise command.CommandError(f"--input={args.input}: {err}") from None
    else:
        out = embed.embed(backbone, records=records, raw=args.raw, logits=args.logits,
                          batch_size=args.batch_size, preset=args.preset or None,
                          windows=args.windows, keeper=keeper, progress="embed")
    if out["data_cfg"] is not None:
        print(backbones.describe_data_path(out["data_cfg"], args.preset,
                                           averaging="logit" if args.logits else ""))
    if out["note"]:
        print(out["note"])
    try:
        skipped_records.check_some_read(out, f"--input={args.input}")
    except command.CommandError:
        if keeper is not None:  # nothing to resume: the folder would outlive the error
            keeper.remove()
        raise
    written = _write(args.out, out, records)
    if keeper is not None:
        keeper.remove()
    if new_folder:
        print(new_folder)
    if out["skipped"].total:
        print(skipped_records.line(out["skipped"], out["skipped_earlier"]))
    print(f"wrote {args.out}: {out['outputs'].shape} {'logits' if args.logits else 'features'}"
          f", each row's ECG in {written['records']}"
          + (f" (its file in {written['paths']})" if "paths" in written else "")
          + (f"; every skipped record in {written['skipped']}" if "skipped" in written else ""))


def _side_files(out_path: str) -> dict:
    """Y.npy's side files: Y.records.txt, Y.paths.txt, Y.skipped.csv."""
    from crema_jax.inference import skip_file
    stem = os.path.splitext(out_path)[0]
    return {"records": stem + ".records.txt", "paths": stem + ".paths.txt",
            "skipped": skip_file.path_of(out_path)}


def _write(out_path: str, out: dict, records) -> dict:
    """Y.npy and its side files, written as one group (all or none); an earlier run's side
    file this run does not write (--overwrite) is removed after. Returns {kind: path} written.
    Each row's ECG: a record, or for an array its row number (an unreadable one is skipped,
    so row i of Y need not be row i of X). Every file's bytes are made before any is written
    (a name that did not encode had left Y.npy without its records)."""
    from crema_jax.inference import embed, skip_file
    side = _side_files(out_path)
    names = (embed.row_names(records, out["record"], out["window"]) if records is not None
             else [str(int(r)) for r in out["record"]])
    texts = {"records": "".join(embed.one_line_name(name) + "\n" for name in names)}
    if records is not None:  # the record's file: the same in every run (a record's name
        texts["paths"] = "".join(  # depends on the others given)
            embed.one_line_name(os.path.abspath(records[int(r)])) + "\n" for r in out["record"])
    npy = io.BytesIO()  # written by Python, not by numpy's C writer, so that a full disk is
    np.save(npy, out["outputs"])  # an OSError with its errno ("No space left on device")
    writes = [(out_path, _writer(npy.getvalue()))] + [
        (side[kind], _writer(text.encode("utf-8"))) for kind, text in texts.items()]
    if out["skips"]:
        writes.append((side["skipped"], skip_file.writer(out["skips"], records,
                                                         embed.one_line_name)))
    storage.write_atomic_group(writes)   # both or neither: never new Y, old names
    written = {kind: side[kind] for kind in texts}
    if out["skips"]:
        written["skipped"] = side["skipped"]
    for kind, path in side.items():
        if kind not in written and storage.isfile(path):
            storage.remove(path)   # --overwrite: an earlier run's, that would name other rows
    return written


def _writer(data: bytes):
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
    return write
