"""Reads one WFDB record (.hea + .mat/.dat) into the canonical Ecg (ecg.canonical_ecg).

`read_record(path)` accepts any record `wfdb` can read. Single-segment records in the common
sample formats (16, 61, 80, 160, 24, 32, 212; one sample per frame, no skew) are decoded here
with numpy after a strict header parse (`wfdb_header`): 4-9x faster than `wfdb.rdrecord`, whose
pandas-based header parsing alone costs ~5 ms. Everything else (multi-segment records, formats
8/310/311/FLAC, oversampled or skewed signals) goes through `wfdb.rdrecord(physical=True)`.
Files are opened read-only. Physical value = (digital - baseline) / gain in the header's
units; canonical_ecg converts them to mV, repairs and resamples them (see ecg.py).

SKIPPED (RecordError with `.reason`; the message names the file and what was expected), besides
canonical_ecg's reasons:
  missing_header, header_syntax (any field that does not parse), missing_signal_file,
  unsafe_signal_path (a signal file outside the header's folder: "../..", absolute, a link out),
  truncated_signal (a signal file holding fewer bytes / samples than the header announces),
  unreadable (any other wfdb failure, for records on the wfdb path), bad_sampling_rate (fs
  absent or outside `fs_range`), not_a_regular_file (a header or signal file that is a FIFO,
  device or socket: never opened, reading it could block or never end), checksum_mismatch
  (a signal's samples do not sum to the checksum its header line gives), signal_file_mismatch
  (a .mat file whose MATLAB header contradicts the WFDB header: transposed, another variable
  name moving the data, a MATLAB 5 file), header_syntax also for a skew longer than the record,
  too_large (more than ecg.MAX_SAMPLES samples: a 24 h 12-lead record is not read whole).
Reads are bounded by the files' real sizes (safe_files.py): a header is read up to its size
(and refused above MAX_HEADER_BYTES), and the bytes a header announces are compared with the
signal files' sizes before anything is allocated.
"""
from __future__ import annotations

import os
import pathlib

import numpy as np
import wfdb

from crema_jax.data.reading import safe_files, wfdb_header
from crema_jax.data.reading.ecg import (MAX_SAMPLES, MIN_SECONDS, Ecg, RecordError, Window,
                                        canonical_ecg, check_nan_policy)

_EXTENSIONS = (".hea", ".mat", ".dat")
# Headers are a few hundred bytes (a multi-segment one lists a line per segment); a "header" of
# megabytes is not one, and is refused before it is read.
MAX_HEADER_BYTES = 4 << 20
# Stored bytes per sample of the formats whose size is fixed (FLAC 508/516/524 compress, so
# their size says nothing in advance).
_BYTES_PER_SAMPLE = {"8": 1.0, "80": 1.0, "16": 2.0, "61": 2.0, "160": 2.0, "24": 3.0,
                     "32": 4.0, "212": 1.5, "310": 4 / 3, "311": 4 / 3}
# fmt -> (numpy dtype of one stored sample, WFDB invalid-sample value after decoding).
_FAST_FORMATS = {"16": ("<i2", -2**15), "61": (">i2", -2**15), "80": ("u1", -2**7),
                 "160": ("<u2", -2**15), "24": (None, -2**23), "32": ("<i4", -2**31),
                 "212": (None, -2**11)}


def record_base(path) -> pathlib.Path:
    """The record path without its .hea/.mat/.dat extension."""
    path = pathlib.Path(path)
    return path.with_suffix("") if path.suffix.lower() in _EXTENSIONS else path


def read_header(path) -> wfdb_header.Header:
    """Parses `<record>.hea`; RecordError missing_header / header_syntax."""
    hea = record_base(path).with_name(record_base(path).name + ".hea")
    try:
        text = safe_files.read_text(hea, limit=MAX_HEADER_BYTES)
    except safe_files.NotRegularFileError as err:
        raise RecordError(hea, "not_a_regular_file", f"cannot read header {hea}: {err}") \
            from None
    except OSError as err:
        raise RecordError(hea, "missing_header", f"cannot read header {hea}: {err}") from None
    except ValueError as err:
        raise RecordError(hea, "header_syntax", f"{err}: not a WFDB header") from None
    try:
        return wfdb_header.parse_header(text)
    except wfdb_header.HeaderError as err:
        where = f"{hea}:{err.line}" if err.line else str(hea)
        raise RecordError(hea, "header_syntax", f"{where}: {err}") from None


def _decode(raw: np.ndarray, fmt: str, n: int) -> np.ndarray:
    """n stored samples of a WFDB format -> integer digital values (a view of `raw` for the
    two's complement formats 16, 61 and 32: no copy of a long record)."""
    dtype, _ = _FAST_FORMATS[fmt]
    if dtype is not None:
        values = raw[:n * np.dtype(dtype).itemsize].view(dtype)
        offset = {"80": 128, "160": 32768}.get(fmt, 0)  # Offset-binary formats.
        return values.astype(np.int32) - offset if offset else values
    if fmt == "24":
        b = raw[:3 * n].reshape(n, 3).astype(np.int32)
        values = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        return values - ((values & 0x800000) << 1)
    # 212: pairs of 12-bit samples packed into 3 bytes.
    b = np.zeros(3 * ((n + 1) // 2), np.int32)
    b[:len(raw[:_nbytes(fmt, n)])] = raw[:_nbytes(fmt, n)]
    b = b.reshape(-1, 3)
    pairs = np.stack([b[:, 0] | ((b[:, 1] & 0x0F) << 8), b[:, 2] | ((b[:, 1] & 0xF0) << 4)], 1)
    values = pairs.reshape(-1)[:n]
    return values - ((values & 0x800) << 1)


def _nbytes(fmt: str, n: int) -> int:
    if fmt == "212":
        return 3 * (n // 2) + 2 * (n % 2)
    if fmt == "24":
        return 3 * n
    return n * np.dtype(_FAST_FORMATS[fmt][0]).itemsize


def _fast_path_ok(header: wfdb_header.Header) -> bool:
    return (header.n_seg is None and bool(header.sig_len) and all(
        s.fmt in _FAST_FORMATS and s.samps_per_frame == 1 and s.skew == 0
        and s.file_name != "~" for s in header.signals))


def _read_fast(base: pathlib.Path, header: wfdb_header.Header) -> np.ndarray:
    """(T, n_sig) float64 physical values (header units), NaN for invalid samples: a transposed
    view of a (n_sig, T) array, so each lead is one contiguous row (what canonical_ecg copies)."""
    by_file: dict[str, list[int]] = {}
    for ch, spec in enumerate(header.signals):
        by_file.setdefault(spec.file_name, []).append(ch)
    for file_name, channels in by_file.items():
        if any(header.signals[c].fmt != header.signals[channels[0]].fmt for c in channels):
            raise RecordError(base, "header_syntax", f"{base}.hea: signals stored in {file_name} "
                              "have different formats; WFDB requires one format per file")
    out = None if len(by_file) == 1 else np.empty((len(header.signals), header.sig_len))
    for file_name, channels in by_file.items():
        spec = header.signals[channels[0]]
        path = base.parent / file_name
        n = header.sig_len * len(channels)
        need = _nbytes(spec.fmt, n)
        with _open_signal(base, path) as f:  # Read-only: never touch the user's files.
            f.seek(spec.byte_offset)
            raw = np.frombuffer(f.read(need), np.uint8)
        if raw.size < need:  # the file shrank since its size was checked
            raise RecordError(path, "truncated_signal", _truncated(path, header, spec, channels,
                                                                   need, raw.size))
        digital = _decode(raw, spec.fmt, n).reshape(header.sig_len, len(channels)).T
        # In-place float64 steps on (channels, T) rows: numpy's mixed int/float broadcasting
        # over a 12-wide last axis costs ~8x more for the same values.
        physical = digital.astype(np.float64, order="C")
        _verify_checksums(base, path, header, channels, physical)
        invalid = digital == _FAST_FORMATS[spec.fmt][1]
        del raw, digital  # a long record's stored bytes are freed before the next copy
        physical -= np.array([header.signals[c].baseline for c in channels], np.float64)[:, None]
        physical /= np.array([header.signals[c].adc_gain for c in channels], np.float64)[:, None]
        if invalid.any():
            physical[invalid] = np.nan
        if out is None:  # one file holds every signal, in header order
            return physical.T
        out[channels] = physical
    return out.T


def _verify_checksums(base: pathlib.Path, path: pathlib.Path, header: wfdb_header.Header,
                      channels: list[int], digital: np.ndarray) -> None:
    """checksum_mismatch when a signal's samples do not sum to its header's checksum (WFDB: the
    sum of all the signal's samples as a signed 16-bit integer): the signal file is not the
    one the header was written with (bytes flipped or overwritten, a file of another record).
    `digital`: (channels, T) digital values as float64 rows: up to MAX_SAMPLES samples of 24
    bits, their sums are exact integers (below 2**53), ~15x faster than summing the stored
    int16 into int64; 32-bit samples are summed as integers."""
    wide = header.signals[channels[0]].fmt == "32"
    sums = digital.astype(np.int64).sum(axis=1) if wide else digital.sum(axis=1)
    for row, channel in enumerate(channels):
        spec = header.signals[channel]
        if spec.checksum is None:
            continue
        got, expected = _int16(int(round(sums[row]))), _int16(spec.checksum)
        if got != expected:
            raise RecordError(path, "checksum_mismatch", f"{path}: signal {channel + 1} "
                              f"({spec.name or 'unnamed'}) sums to checksum {got}, {base}.hea "
                              f"says {expected}: the signal file is not the one the header "
                              "was written with")


def _int16(value: int) -> int:
    return (value + 2**15) % 2**16 - 2**15


def _truncated(path, header, spec, channels, need: int, size: int) -> str:
    return (f"{path} is truncated: the header announces {header.sig_len} samples x "
            f"{len(channels)} signals in format {spec.fmt} ({need} bytes after offset "
            f"{spec.byte_offset}), the file holds {size}")


def _open_signal(base: pathlib.Path, path: pathlib.Path):
    try:
        return safe_files.open_regular(path)
    except safe_files.NotRegularFileError as err:
        raise RecordError(base, "not_a_regular_file", f"{base}.hea names signal file "
                          f"{err}") from None


def _check_announced_sizes(base: pathlib.Path, header: wfdb_header.Header) -> None:
    """truncated_signal when a signal file holds fewer bytes than the header announces for it
    (formats of a fixed size per sample; multi-segment records are checked segment by segment
    by wfdb)."""
    if header.n_seg is not None or not header.sig_len:
        return
    by_file: dict[str, list[int]] = {}
    for ch, spec in enumerate(header.signals):
        if spec.file_name != "~":
            by_file.setdefault(spec.file_name, []).append(ch)
    for file_name, channels in by_file.items():
        spec = header.signals[channels[0]]
        if spec.fmt not in _BYTES_PER_SAMPLE:
            continue
        samples = header.sig_len * sum(header.signals[c].samps_per_frame for c in channels)
        need = (_nbytes(spec.fmt, samples) if spec.fmt in _FAST_FORMATS
                else int(samples * _BYTES_PER_SAMPLE[spec.fmt]))
        path = base.parent / file_name
        try:
            size = os.stat(path).st_size - spec.byte_offset
        except OSError:
            continue  # _check_signal_files reports a missing file
        if size < need:
            raise RecordError(path, "truncated_signal", _truncated(path, header, spec, channels,
                                                                   need, max(size, 0)))


def _check_length(base: pathlib.Path, header: wfdb_header.Header) -> None:
    """too_large when the record holds more than ecg.MAX_SAMPLES samples (all signals): it is
    read whole, and its peak memory grows with it."""
    if header.n_seg is None:
        samples = (header.sig_len or 0) * sum(s.samps_per_frame for s in header.signals)
    else:
        samples = (header.sig_len or 0) * max(1, len(header.signals))
    if samples > MAX_SAMPLES:
        hours = (header.sig_len or 0) / (header.fs or 1) / 3600
        raise RecordError(base, "too_large", f"{base}.hea: {header.sig_len} samples of "
                          f"{len(header.signals) or 'its'} signals ({hours:.1f} h at "
                          f"{header.fs:g} Hz), more than the {MAX_SAMPLES} samples a record is "
                          "read whole with; split it into shorter records")


def _check_skews(base: pathlib.Path, header: wfdb_header.Header) -> None:
    """header_syntax when a signal's skew (the samples it lags the others by) is longer than
    the record: wfdb allocates the record plus the skew (16x1:999999999 asked for ~22 GB)."""
    for number, spec in enumerate(header.signals, start=1):
        if not spec.skew:
            continue
        length = header.sig_len or _stored_frames(base, header, spec)
        if spec.skew > length:
            raise RecordError(base, "header_syntax", f"{base}.hea: signal {number} is skewed by "
                              f"{spec.skew} samples, more than the record's {length}")


def _stored_frames(base: pathlib.Path, header: wfdb_header.Header,
                   spec: wfdb_header.SignalSpec) -> float:
    """The frames `spec`'s signal file holds, from its size (inf when its format's size per
    sample is not fixed, or the file cannot be seen)."""
    per_frame = sum(s.samps_per_frame for s in header.signals if s.file_name == spec.file_name)
    try:
        size = os.stat(base.parent / spec.file_name).st_size - spec.byte_offset
    except OSError:
        return float("inf")
    if spec.fmt not in _BYTES_PER_SAMPLE or not per_frame:
        return float("inf")
    return max(size, 0) // (_BYTES_PER_SAMPLE[spec.fmt] * per_frame)


# A MATLAB v4 matrix header: type (MOPT), rows, columns, imaginary flag, name length, then the
# name; wfdb2mat writes a record's signals as the rows of one int matrix named "val".
_MAT_V4 = 20
# The MOPT precision digit P that a format's samples are stored as (3: int16, 2: int32).
_MAT_PRECISION = {"16": 3, "61": 3, "32": 2}


def _check_mat_headers(base: pathlib.Path, header: wfdb_header.Header) -> None:
    """signal_file_mismatch when a .mat signal file's MATLAB header contradicts the WFDB
    header: the samples would be read from the wrong bytes or in the wrong order (a transposed
    matrix, a longer variable name moving the data, a MATLAB 5 file) and decode as noise."""
    for file_name in dict.fromkeys(s.file_name for s in header.signals):
        if not file_name.lower().endswith(".mat"):
            continue
        channels = [s for s in header.signals if s.file_name == file_name]
        path = base.parent / file_name
        with _open_signal(base, path) as f:
            head = f.read(_MAT_V4)
        problem = _mat_problem(head, channels, header.sig_len)
        if problem:
            raise RecordError(path, "signal_file_mismatch", f"{path} is not the signal matrix "
                              f"{base}.hea describes: {problem}")


def _mat_problem(head: bytes, channels: list, sig_len: int | None) -> str | None:
    spec = channels[0]
    if len(head) < _MAT_V4:
        return None  # a file too short for any header: truncated_signal says what it lacks
    fields = None
    for order in "<>":  # MOPT's M digit says the byte order; try both
        mopt, rows, cols, imag, namlen = np.frombuffer(head, f"{order}i4").tolist()
        if 0 <= mopt < 5000 and mopt % 10 == 0 and (mopt // 100) % 10 == 0:
            fields = mopt, rows, cols, imag, namlen
            break
    if fields is None:
        if spec.byte_offset == 0:
            return None  # a plain signal file that happens to be named .mat
        what = "a MATLAB 5 file" if head.startswith(b"MATLAB") else "not a MATLAB v4 file"
        return f"it is {what}; WFDB's .mat files are MATLAB v4 matrices (wfdb2mat)"
    mopt, rows, cols, imag, namlen = fields
    problems = []
    n_rows = sum(s.samps_per_frame for s in channels)
    if rows != n_rows or (sig_len is not None and cols != sig_len):
        problems.append(f"its matrix is {rows} x {cols}, the header announces {n_rows} signals x "
                        f"{sig_len} samples")
    if imag:
        problems.append("its matrix is complex")
    if _MAT_V4 + namlen != spec.byte_offset:
        problems.append(f"its data starts at byte {_MAT_V4 + namlen}, the header reads from "
                        f"byte {spec.byte_offset}")
    precision = _MAT_PRECISION.get(spec.fmt)
    if precision is not None and (mopt // 10 % 10 != precision
                                  or mopt // 1000 != (spec.fmt == "61")):
        problems.append(f"its type code {mopt} does not store format {spec.fmt}")
    return "; ".join(problems) or None


def _check_segments(base: pathlib.Path, header: wfdb_header.Header) -> None:
    """A multi-segment record's segment headers and their signal files checked as a record's
    own are (kind, place, size) before wfdb opens any of them."""
    for segment in dict.fromkeys(header.segments):
        if segment == "~":
            continue
        if "/" in segment or segment in (".", ".."):
            raise RecordError(base, "unsafe_signal_path", f"{base}.hea names segment "
                              f"{segment!r}; only segments beside the header are read")
        seg_base = base.parent / segment
        seg_header = read_header(seg_base)
        if seg_header.n_seg is None:
            _check_signal_files(seg_base, seg_header)
            _check_skews(seg_base, seg_header)
            _check_announced_sizes(seg_base, seg_header)
            _check_mat_headers(seg_base, seg_header)


def _read_wfdb(base: pathlib.Path, header: wfdb_header.Header):
    """(T, n_sig) physical values, lead names and units through wfdb.rdrecord."""
    _check_segments(base, header)
    try:
        record = wfdb.rdrecord(str(base), physical=True, m2s=True, smooth_frames=True)
    except Exception as err:  # wfdb raises ValueError, IndexError, OSError, struct.error, ...
        raise RecordError(base, "unreadable", f"wfdb could not read the signals of record "
                          f"{base}: {type(err).__name__}: {err}") from None
    signal = record.p_signal
    if header.sig_len and (signal is None or signal.shape[0] < header.sig_len):
        got = 0 if signal is None else signal.shape[0]
        raise RecordError(base, "truncated_signal", f"record {base} is truncated: header "
                          f"announces {header.sig_len} samples, the signal files hold {got}")
    signal = np.zeros((0, 0)) if signal is None else np.asarray(signal, np.float64)
    return signal, list(record.sig_name or []), list(record.units or [])


def read_record(path, *, target_fs: float | None = 250.0, derive_limb_leads: bool = True,
                min_seconds: float | None = MIN_SECONDS,
                fs_range: tuple[float, float] = (50.0, 10000.0),
                nan_policy: str = "interpolate", resample_method: str = "polyphase",
                flat_leads: str = "absent", window: Window | None = None) -> Ecg:
    """Reads a WFDB record as a canonical 12-lead ECG (ecg.py says what is repaired).

    Args:
      path: the record with or without its .hea/.mat/.dat extension.
      target_fs: output sampling rate in Hz; None keeps the record's own rate.
      derive_limb_leads: fill absent III/aVR/aVL/aVF (and I or II) from the other limb leads.
      min_seconds: shortest accepted duration (None: no check). Crops longer than the record
        are the pipeline's business (it pads), this only rejects stubs.
      fs_range: plausible header sampling rates; anything outside is `bad_sampling_rate`.
      nan_policy: "interpolate" | "zero" | "drop_window" | "keep" (see ecg.canonical_ecg).
      resample_method: "polyphase" | "fft" (see signal/resample.py).
      flat_leads: "absent": a constant lead becomes an absent zero row; "keep": it stays.
      window: the window of the record to return (ST-MEM's examples; see ecg.canonical_ecg).
    """
    check_nan_policy(nan_policy, target_fs)
    base = record_base(path)
    header = read_header(base)
    if header.fs is None or not fs_range[0] <= header.fs <= fs_range[1]:
        raise RecordError(base, "bad_sampling_rate", f"{base}.hea: sampling frequency "
                          f"{header.fs} Hz, expected {fs_range[0]:g}-{fs_range[1]:g} Hz")
    _check_signal_files(base, header)
    _check_skews(base, header)
    _check_announced_sizes(base, header)  # before any allocation the header asks for
    _check_length(base, header)
    _check_mat_headers(base, header)
    if _fast_path_ok(header):
        raw = _read_fast(base, header)
        names, units = [s.name for s in header.signals], [s.units for s in header.signals]
    else:
        raw, names, units = _read_wfdb(base, header)
    meta = wfdb_header.parse_comments(header.comments)
    return canonical_ecg(raw, names, units, float(header.fs), path=os.fspath(base),
                         where=f"{base}.hea", meta=meta, target_fs=target_fs,
                         derive_limb_leads=derive_limb_leads, min_seconds=min_seconds,
                         nan_policy=nan_policy, resample_method=resample_method,
                         flat_leads=flat_leads, window=window, owned=True)


def _check_signal_files(base: pathlib.Path, header: wfdb_header.Header) -> None:
    """Every signal file the header names exists beside it (never a path out of its folder)."""
    folder = base.parent.resolve()
    for file_name in dict.fromkeys(spec.file_name for spec in header.signals):  # once per file
        if file_name == "~":
            continue
        target = (base.parent / file_name).resolve()
        if folder not in target.parents:
            raise RecordError(base, "unsafe_signal_path", f"{base}.hea names signal file "
                              f"{file_name!r}, outside the record's folder {folder}; "
                              "only files beside the header are read")
        kind = safe_files.special_kind(target)
        if kind is not None:
            raise RecordError(base, "not_a_regular_file", f"{base}.hea names signal file "
                              f"{base.parent / file_name}, which is a {kind}, not a regular "
                              "file")
        if not target.is_file():
            raise RecordError(base, "missing_signal_file", f"{base}.hea names signal file "
                              f"{base.parent / file_name}, which does not exist")
