"""Features (or logits) of a checkpoint for any ECGs: `crema-jax embed` and `predict`.

One row per ECG. Inputs are WFDB records (paths, globs, folders) or arrays (N, leads, samples)
at a stated rate, with leads in canonical order (12 leads, or lead I alone). They go through
the SAME path as probe and finetune: the evaluation pipeline with the backbone's data section
(resampling to its rate, its preprocessing, the crops of `batch.eval_crop_starts`), then the
backbone's features averaged over crops (logits averaged with `logits=True`). What the data
path did to the input is one note for the user: an array's non-finite samples (array_source), a
record file's repairs (record_repairs, in reading/repairs.py's words).

`raw=True` feeds an array as given, one crop: (N, 12, num_patches * patch_size) for a SiT,
(N, in_channels, T) for Net1D.
"""
from __future__ import annotations

import os
import sys

import numpy as np

from crema_jax.data.index import dataset_index as layouts
from crema_jax.data.pipeline import datasets as pipeline
from crema_jax.data.pipeline import skips, sources
from crema_jax.data.reading import clinical, read, repairs as repairs_lib
from crema_jax.data.reading.ecg import MAX_ABS_MV
from crema_jax.data.reading.limits import MIN_SECONDS
from crema_jax.data.reading.leads import LEADS
from crema_jax.inference import backbones, partial
from crema_jax.inference import tracker as tracker_lib
from crema_jax.runtime import mesh as mesh_lib


class EmbedError(ValueError):
    """An input the model cannot take; the message says what was expected."""


# Skips embed and predict log one by one (a folder of 300 CT images had given 300 warnings);
# the rest are counted, and cli/skipped_records.py's summary line names the ones logged.
SKIPS_NAMED = 5


def record_source(paths, data_cfg) -> sources.WfdbSource:
    infos = [layouts.RecordInfo(record_id=layouts.record_id_of(p), path=p, labels=(), split="",
                                source="", reader=_reader(p)) for p in paths]
    return sources.make_source(data_cfg, records=infos, keep_repairs=True)


def _reader(path):
    """How a listed record is read: a folder (one expand_records could not list) as an
    `unreadable` skip naming it, an export file as such, anything else as a WFDB record."""
    if os.path.isdir(path):
        try:
            os.scandir(path).close()
            why = "not when its records were listed"
        except OSError as err:
            why = err.strerror or str(err)
        return read.BadRecord("unreadable", f"{path}: a folder that cannot be listed ({why}); "
                              "expected a readable folder of records")
    return clinical.ClinicalFile() if clinical.is_clinical_path(path) else None


def record_repairs(repairs: dict, records, data_cfg) -> tuple[str | None, list]:
    """(note, words): the repairs made to the records read ({position in `records`:
    (Ecg.repairs, Ecg.repaired_leads)}, as a WfdbSource's `repairs`), as one note for the run
    ("input: 1 of 2 records repaired (crema data path): ...", None when none was; named as
    row_names names them), and each record's in words ("" for none), in `records`' order."""
    ids = row_names(records, range(len(records)), [-1] * len(records))
    made = {row: repairs[row] for row in sorted(repairs)}
    text = repairs_lib.summary([(ids[row], *made[row]) for row in made], len(records),
                               f"{data_cfg.preset} data path")
    words = [repairs_lib.describe(*made[row]) if row in made else "" for row in
             range(len(records))]
    return (f"input: {text}" if text else None), words


def check_real(x: np.ndarray) -> None:
    """EmbedError unless x holds real numbers (bool, strings, objects and complex values are
    not mV: a complex array lost its imaginary part with a warning only)."""
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise EmbedError(f"expected a real numeric array of mV; got dtype {x.dtype}")


def array_source(x: np.ndarray, fs: float, data_cfg):
    """(source, note) for (N, 12, T) canonical leads, or (N, 1, T) lead I, at `fs` Hz.

    Non-finite samples (NaN, +-Inf) are counted and become NaN, which the data path handles as
    in a file (canonical_ecg's NaN policy): interpolated (an all-NaN lead becomes absent), set to
    0 (ECGFounder's), or the ECG skipped (ST-MEM's); `note` says what is done (None when the
    input was clean)."""
    x = np.asarray(x)
    if x.ndim != 3 or x.shape[0] < 1 or x.shape[1] not in (1, 12) or x.shape[2] < 2:
        raise EmbedError(f"expected an array (N, 12, samples) in canonical lead order, or "
                         f"(N, 1, samples) of lead I, with N >= 1; got shape {x.shape}")
    check_real(x)
    if x.shape[2] < MIN_SECONDS * fs:  # as a record file's too_short
        raise EmbedError(f"ECGs of {x.shape[2]} samples at {fs:g} Hz ({x.shape[2] / fs:.2f} s), "
                         f"expected at least {MIN_SECONDS:g} s (--fs gives the rate)")
    signals = np.zeros((x.shape[0], 12, x.shape[2]), np.float32)
    if np.issubdtype(x.dtype, np.floating) and x.dtype.itemsize > 4:
        # Kept within float32's range: a float64 1e300 had become Inf (interpolated as a
        # missing sample, with numpy's overflow warning); above MAX_ABS_MV it is bad_units.
        f32 = np.finfo(np.float32).max
        x = np.clip(x, -f32, f32)
    signals[:, : x.shape[1]] = x
    present = np.zeros((x.shape[0], 12), bool)
    present[:, : x.shape[1]] = True
    bad = ~np.isfinite(signals)
    note = None
    if bad.any():
        signals[bad] = np.nan
        # An ECG with no finite sample at all has nothing to repair: counted apart (it is
        # skipped as unreadable, and had been counted among the "interpolated" ones).
        empty = bad[:, : x.shape[1]].all(axis=(1, 2))
        partly = bad.any(axis=(1, 2)) & ~empty
        what = {"interpolate": "interpolated (a lead with no finite sample left out)",
                "zero": "set to 0"}.get(data_cfg.nan_policy, "left in: those ECGs are skipped")
        parts = []
        if partly.any():
            parts.append(f"{int(bad[partly].sum())} non-finite samples (NaN/Inf) in "
                         f"{int(partly.sum())} of {x.shape[0]} ECGs, {what}")
        if empty.any():
            parts.append(f"{int(empty.sum())} of {x.shape[0]} ECGs hold no finite sample at "
                         "all (nothing to repair)")
        note = f"input: {'; '.join(parts)} ({data_cfg.preset} data path)"
    return sources.make_source(data_cfg, arrays=signals, fs=fs, lead_present=present), note


def row_names(records, record_rows, windows) -> list[str]:
    """Each output row's record, with "#k" for window k of a windowed data path (window -1:
    none). A record is named by its id (file name), unless two records share one (p1/rec0 and
    p2/rec0): then every record is named by its path below the records' common folder, so that
    each row maps back to one file."""
    ids = [layouts.record_id_of(r) for r in records]
    if len(set(ids)) < len(ids):
        common = os.path.commonpath([os.path.abspath(r) for r in records])
        ids = [os.path.relpath(os.path.abspath(r), common) for r in records]
    return [sources.example_name(ids[int(r)], w) for r, w in zip(record_rows, windows)]


def one_line_name(name: str) -> str:
    """A row's name as one line of valid UTF-8 text, as embed's Y.records.txt and predict's CSV
    write it: a backslash, newline or carriage return as \\\\, \\n or \\r (a record named
    "A\\nB" took two lines), a file name's bytes that are not UTF-8 as \\xNN (b"r\\xffx" is
    written r\\xffx; predict's CSV had failed on it after all its work)."""
    name = name.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def raw_batches(backbone, x: np.ndarray, batch_size: int):
    """An array taken as the model input itself: one crop per ECG, every patch valid."""
    x = np.asarray(x, np.float32)
    if backbone.family.reads_patches:
        patch, n = int(backbone.config.model.patch_size), int(backbone.config.model.num_patches)
        if x.ndim != 3 or x.shape[1:] != (12, n * patch):
            raise EmbedError(f"raw input for this SiT must be (N, 12, {n * patch}) ({n} patches "
                             f"of {patch} samples), got {x.shape}")
        patches = x.reshape(x.shape[0], 1, 12, n, patch)
    else:
        channels = int(backbone.config.model.in_channels)
        if x.ndim != 3 or x.shape[1] != channels or x.shape[2] < 1:  # 0 samples: NaN rows
            raise EmbedError(f"this Net1D takes (N, {channels} leads, samples >= 1), the input "
                             f"has shape {x.shape}")
        patches = x[:, None, :, None, :]
    return _raw_batches(patches, batch_size)   # the shape checked now, not at the first batch


def _raw_batches(patches: np.ndarray, batch_size: int):
    leads = np.arange(patches.shape[2], dtype=np.int32)
    for start in range(0, patches.shape[0], batch_size):
        chunk = patches[start:start + batch_size]
        pad = batch_size - len(chunk)
        yield {"patches": np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], np.float32)]),
               "patch_valid": np.ones((batch_size,) + chunk.shape[1:4], bool),
               "lead_indices": np.broadcast_to(leads, (batch_size, len(leads))).copy(),
               "labels": np.zeros((batch_size, 0), np.float32),
               "index": np.arange(start, start + batch_size), "valid":
                   np.arange(batch_size) < len(chunk)}


def embed(backbone, *, records=None, array=None, fs: float | None = None, raw: bool = False,
          logits: bool = False, batch_size: int = 16, preset: str | None = None,
          windows: str = "rows", mesh=None, derive_limb_leads: bool = False, keeper=None,
          progress: str = "") -> dict:
    """Crop-averaged features (or logits) of ECGs, one row per example.

    Give `records` (WFDB paths) or `array` (with `fs`, default: the model's rate). `preset`
    replaces the checkpoint's data path; `derive_limb_leads` derives absent limb leads, and held
    ones without signal, on a path that derives none (ECGFounder's; ecg.canonical_ecg). When the
    data path cuts records into windows (ST-MEM's), windows="rows" gives one row per window,
    "mean" one per record (their mean). Records that cannot be read (and windows with NaN
    under ST-MEM's path) are skipped and counted, never fatal. `keeper` (a partial.Keeper;
    records only) keeps the finished records on disk as the run goes and reads none it kept
    before; `progress` (a label, e.g. "predict") prints a progress line on stderr as it goes.

    Returns {"outputs": (rows, D or classes), "record": (rows,) position in `records`/`array`,
    "window": (rows,) window number (-1: the whole record, or its windows' mean),
    "skipped": SkipStats (every skip counted, this run's and those a keeper held from an
    earlier run; `logged`: this run's warnings), "skipped_earlier": how many of them the keeper
    held, "data_cfg": the data section used (None for raw),
    "note": what was done to the input, for the user (array_source's note, record_repairs'),
    or None; "repairs": each record's repairs in words ("" for none; None for an array);
    "skips": every skip (position in `records`/`array`, reason, path, message), in the order
    of the records; path: the file that failed ("" for an array)}."""
    if windows not in ("rows", "mean"):
        raise EmbedError(f"windows={windows!r}: expected 'rows' or 'mean'")
    if keeper is not None and records is None:
        raise EmbedError("keeping partial outputs needs records, not an array")
    mesh = mesh_lib.make_mesh() if mesh is None else mesh
    count = 0  # (a 0-d array too: refused below for its shape)
    if records is not None:
        count = len(records)
    elif array is not None and np.ndim(array):
        count = len(array)
    # No larger than the input: a batch is padded to its size (--batch_size=100000 for one
    # record allocated 22 GiB).
    batch_size = mesh_lib.round_batch(min(batch_size, max(count, 1)), mesh)
    apply = backbones.make_apply(backbone, mesh, output="logits" if logits else "features")
    if raw:
        reading = _raw_reading(backbone, array, batch_size)
    else:
        reading = _reading(backbone, records, array, fs, batch_size=batch_size, preset=preset,
                           derive_limb_leads=derive_limb_leads, keeper=keeper)
    track = tracker_lib.Tracker(
        reading["positions"], reading["keys"], rows_of=reading["rows_of"],
        windows_of=reading["windows_of"], stats=reading["stats"],
        repairs=reading["repairs"], keeper=keeper,
        progress=tracker_lib.Progress(progress, count, count - len(reading["positions"]))
        if progress else None)
    try:
        backbones.run(apply, reading["batches"], on_batch=track)
    except backbones.NoRecordsError:  # the caller names its input and the skips' reasons
        pass
    except BaseException:  # Ctrl-C, SIGTERM, an error: what is finished is kept
        if keeper is not None:
            track.save()
            if keeper.kept:
                print(partial.stopped_line(keeper, count), file=sys.stderr)
            else:  # nothing to resume from
                keeper.remove()
        raise
    track.end()
    return _result(reading, track, keeper, records, windows)


def _reading(backbone, records, array, fs, *, batch_size, preset, derive_limb_leads, keeper):
    """What the evaluation pipeline reads: the batches and how their rows map to the input
    (Tracker's arguments); with a keeper, only the records it does not hold."""
    data_cfg = backbones.eval_data_config(backbone, backbone.family.input_leads(
        backbone.config.model, LEADS), batch_size=batch_size, preset=preset)
    if derive_limb_leads:
        with data_cfg.unlocked():
            data_cfg.derive_limb_leads = True
    stats = skips.SkipStats(log_limit=SKIPS_NAMED, hand_over=True)  # Tracker takes each
    note, positions, keys = None, None, None
    if records is not None:
        keys = [str(i) for i in range(len(records))]
        positions = list(range(len(records)))
        if keeper is not None:
            keys = [partial.record_key(r) for r in records]
            positions = keeper.start(backbone, data_cfg, keys)
        source = record_source([records[i] for i in positions], data_cfg)
    else:
        source, note = array_source(array, float(fs or data_cfg.target_fs), data_cfg)
        positions, keys = range(len(array)), [str(i) for i in range(len(array))]
    # No record left to read (every one kept by an earlier run that stopped before writing
    # its output): no batch, and the output is the kept records' (an empty source is refused).
    batches = pipeline.make_eval_dataset(data_cfg, source=source, process_index=0,
                                         process_count=1, stats=stats) if len(source) else []
    return {"batches": batches, "positions": positions, "keys": keys, "stats": stats,
            "rows_of": source.record_rows,
            "windows_of": sources.example_windows(source, np.arange(len(source))),
            "repairs": getattr(source, "repairs", None) if records is not None else None,
            "data_cfg": data_cfg, "note": note}


def _raw_reading(backbone, array, batch_size):
    """_reading's dict for an array fed as given (raw=True)."""
    if array is None:
        raise EmbedError("raw input needs an array (.npy), not WFDB records")
    values = np.asarray(array)
    check_real(values)
    if not np.isfinite(values).all():
        raise EmbedError("raw input holds NaN/Inf samples; --raw feeds the array as given, "
                         "so clean it, or drop --raw to have them handled")
    peak = float(np.max(np.abs(values))) if values.size else 0.0
    if peak > MAX_ABS_MV:  # 1e19 had given every ECG the features of a flat one
        raise EmbedError(f"raw input holds a sample of magnitude {peak:.3g}, above "
                         f"{MAX_ABS_MV:g} (a model input is a preprocessed signal, an ECG "
                         "in mV stays far below); check its scaling, or drop --raw")
    batches = raw_batches(backbone, array, batch_size)   # its shape checked: (N, ...)
    return {"batches": batches, "positions": range(len(values)),
            "keys": [str(i) for i in range(len(values))], "stats": None, "rows_of": None,
            "windows_of": None, "repairs": None, "data_cfg": None, "note": None,
            "skipped": skips.SkipStats(log_limit=SKIPS_NAMED)}


def _result(reading, track, keeper, records, windows) -> dict:
    """embed's dict from the finished records (this run's, and a keeper's from before)."""
    entries = dict(keeper.kept) if keeper is not None else {}
    entries.update(track.finished)
    got = tracker_lib.assemble(reading["keys"], entries)
    stats = reading["stats"] if reading["stats"] is not None else reading["skipped"]
    read_now = set(reading["positions"])  # the others kept by an earlier run: their skips
    earlier = [e for e in got["events"] if e[0] not in read_now]  # counted, not logged again
    for _, reason, path, message in earlier:
        stats.add(reason, path, message)
    told = {"skipped": stats, "skipped_earlier": len(earlier), "data_cfg": reading["data_cfg"],
            "note": reading["note"], "repairs": None}
    if records is not None:  # the records' repairs, once all are read
        told["note"], told["repairs"] = record_repairs(got["made"], records,
                                                       reading["data_cfg"])
    outputs, record, window = got["outputs"], got["record"], got["window"]
    if windows == "mean" and len(record):
        kept = np.unique(record)
        outputs = np.stack([outputs[record == r].mean(0) for r in kept])
        record, window = kept, np.full(len(kept), -1, np.int64)
    if not len(record):
        outputs = np.zeros((0, 0), np.float32)
    events = got["events"] if records is not None else [  # an array's rows are no files
        (position, reason, "", message) for position, reason, _, message in got["events"]]
    return {"outputs": outputs, "record": record, "window": window, "skips": events, **told}
