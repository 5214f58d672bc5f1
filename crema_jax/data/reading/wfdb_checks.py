"""What a WFDB record is checked against before its samples are decoded (wfdb_records.py reads
it): every check compares what the header announces with what the files are, and a mismatch is
a RecordError naming the file, so that nothing is allocated on a header's word alone and no
signal file is decoded as another one.

  check_before_reading(base, header)   signal files beside the header and regular; skews within
                                       the record; files holding the bytes announced; at most
                                       MAX_SAMPLES samples; .mat files' MATLAB v4 header
                                       matching the WFDB header
  verify_checksums(...)                the samples against the header's checksums, once decoded

The sample formats' sizes (BYTES_PER_SAMPLE, FAST_FORMATS, nbytes) live here too: the decoder
and the size checks read the same table.
"""
from __future__ import annotations

import os
import pathlib

import numpy as np

from crema_jax.data.reading import safe_files, wfdb_header
from crema_jax.data.reading.ecg import RecordError
from crema_jax.data.reading.limits import MAX_SAMPLES
from crema_jax.runtime import files

# Stored bytes per sample of the formats whose size is fixed (FLAC 508/516/524 compress, so
# their size says nothing in advance).
BYTES_PER_SAMPLE = {"8": 1.0, "80": 1.0, "16": 2.0, "61": 2.0, "160": 2.0, "24": 3.0,
                     "32": 4.0, "212": 1.5, "310": 4 / 3, "311": 4 / 3}
# fmt -> (numpy dtype of one stored sample, WFDB invalid-sample value after decoding).
FAST_FORMATS = {"16": ("<i2", -2**15), "61": (">i2", -2**15), "80": ("u1", -2**7),
                 "160": ("<u2", -2**15), "24": (None, -2**23), "32": ("<i4", -2**31),
                 "212": (None, -2**11)}


def nbytes(fmt: str, n: int) -> int:
    if fmt == "212":
        return 3 * (n // 2) + 2 * (n % 2)
    if fmt == "24":
        return 3 * n
    return n * np.dtype(FAST_FORMATS[fmt][0]).itemsize


def verify_checksums(base: pathlib.Path, path: pathlib.Path, header: wfdb_header.Header,
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


def signal_files(header: wfdb_header.Header) -> dict[str, list[int]]:
    """{signal file name: the channels stored in it}, files and channels in header order ("~",
    a signal without a file, included)."""
    by_file: dict[str, list[int]] = {}
    for channel, spec in enumerate(header.signals):
        by_file.setdefault(spec.file_name, []).append(channel)
    return by_file


def _int16(value: int) -> int:
    return (value + 2**15) % 2**16 - 2**15


def truncated(path, header, spec, channels, need: int, size: int) -> str:
    return (f"{path} is truncated: the header announces {header.sig_len} samples x "
            f"{len(channels)} signals in format {spec.fmt} ({need} bytes after offset "
            f"{spec.byte_offset}), the file holds {size}")


def open_signal(base: pathlib.Path, path: pathlib.Path):
    try:
        return safe_files.open_regular(path)
    except safe_files.NotRegularFileError as err:
        raise RecordError(base, "not_a_regular_file", f"{base}.hea names signal file "
                          f"{err}") from None


def check_announced_sizes(base: pathlib.Path, header: wfdb_header.Header) -> None:
    """truncated_signal when a signal file holds fewer bytes than the header announces for it
    (formats of a fixed size per sample; multi-segment records are checked segment by segment
    by wfdb)."""
    if header.n_seg is not None or not header.sig_len:
        return
    for file_name, channels in signal_files(header).items():
        spec = header.signals[channels[0]]
        if file_name == "~" or spec.fmt not in BYTES_PER_SAMPLE:
            continue
        samples = header.sig_len * sum(header.signals[c].samps_per_frame for c in channels)
        need = (nbytes(spec.fmt, samples) if spec.fmt in FAST_FORMATS
                else int(samples * BYTES_PER_SAMPLE[spec.fmt]))
        path = base.parent / file_name
        try:
            size = os.stat(path).st_size - spec.byte_offset
        except OSError:
            continue  # check_signal_files reports a missing file
        if size < need:
            raise RecordError(path, "truncated_signal", truncated(path, header, spec, channels,
                                                                   need, max(size, 0)))


def check_length(base: pathlib.Path, header: wfdb_header.Header) -> None:
    """too_large when the record holds more than limits.MAX_SAMPLES samples (all signals): it is
    read whole, and its peak memory grows with it."""
    if header.n_seg is None:
        samples, signals = record_samples(base, header), len(header.signals)
    else:
        frames = max(header.sig_len or 0, sum(header.segment_lengths))
        samples, signals = frames * (header.n_sig or 1), header.n_sig
    if samples > MAX_SAMPLES:
        raise too_large(base, samples, signals, header.fs)


def record_samples(base: pathlib.Path, header: wfdb_header.Header) -> int:
    """The samples (all signals) a single-segment record holds: its length x its samples per
    frame; without a length in the header, the length its signal files' sizes imply (wfdb
    reads them to their end)."""
    frames = header.sig_len or _frames_stored(base, header)
    return frames * sum(s.samps_per_frame for s in header.signals)


def too_large(base: pathlib.Path, samples: int, signals, fs) -> RecordError:
    frames = samples // max(signals or 1, 1)
    rate = f" ({frames / fs / 3600:.1f} h at {fs:g} Hz)" if fs else ""  # a segment's header
    # may leave its rate out
    return RecordError(base, "too_large", f"{base}.hea: {frames} samples of {signals or 'its'} "
                       f"signals{rate}, more than the {MAX_SAMPLES} samples a record is read "
                       "whole with; split it into shorter records")


def check_skews(base: pathlib.Path, header: wfdb_header.Header) -> None:
    """header_syntax when a signal's skew (the samples it lags the others by) is longer than
    the record: wfdb allocates the record plus the skew (16x1:999999999 asked for ~22 GB)."""
    for number, spec in enumerate(header.signals, start=1):
        if not spec.skew:
            continue
        length = header.sig_len or _stored_frames(base, header, spec)
        if spec.skew > length:
            raise RecordError(base, "header_syntax", f"{base}.hea: signal {number} is skewed by "
                              f"{spec.skew} samples, more than the record's {length}")


def _frames_stored(base: pathlib.Path, header: wfdb_header.Header) -> int:
    """The most frames any signal file holds by its size (0 when no size says)."""
    frames = [_stored_frames(base, header, header.signals[channels[0]])
              for name, channels in signal_files(header).items() if name != "~"]
    return int(max((f for f in frames if f != float("inf")), default=0))


def _stored_frames(base: pathlib.Path, header: wfdb_header.Header,
                   spec: wfdb_header.SignalSpec) -> float:
    """The frames `spec`'s signal file holds, from its size (inf when its format's size per
    sample is not fixed, or the file cannot be seen)."""
    per_frame = sum(header.signals[c].samps_per_frame
                    for c in signal_files(header)[spec.file_name])
    try:
        size = os.stat(base.parent / spec.file_name).st_size - spec.byte_offset
    except OSError:
        return float("inf")
    if spec.fmt not in BYTES_PER_SAMPLE or not per_frame:
        return float("inf")
    return max(size, 0) // (BYTES_PER_SAMPLE[spec.fmt] * per_frame)


# A MATLAB v4 matrix header: type (MOPT), rows, columns, imaginary flag, name length, then the
# name; wfdb2mat writes a record's signals as the rows of one int matrix named "val".
_MAT_V4 = 20
# The MOPT precision digit P that a format's samples are stored as (3: int16, 2: int32).
_MAT_PRECISION = {"16": 3, "61": 3, "32": 2}


def check_mat_headers(base: pathlib.Path, header: wfdb_header.Header) -> None:
    """signal_file_mismatch when a .mat signal file's MATLAB header contradicts the WFDB
    header: the samples would be read from the wrong bytes or in the wrong order (a transposed
    matrix, a longer variable name moving the data, a MATLAB 5 file) and decode as noise."""
    for file_name, channels in signal_files(header).items():
        if not file_name.lower().endswith(".mat"):
            continue
        path = base.parent / file_name
        with open_signal(base, path) as f:
            head = f.read(_MAT_V4)
        problem = _mat_problem(head, [header.signals[c] for c in channels], header.sig_len)
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


def check_signal_files(base: pathlib.Path, header: wfdb_header.Header) -> None:
    """Every signal file the header names exists beside it (never a path out of its folder)."""
    inside_folder = files.inside(base.parent)
    for file_name in signal_files(header):
        if file_name == "~":
            continue
        try:
            target = (base.parent / file_name).resolve()
        except (RuntimeError, OSError) as err:  # a symlink loop (RuntimeError before 3.13)
            raise RecordError(base, "missing_signal_file", f"{base}.hea names signal file "
                              f"{base.parent / file_name}, which does not resolve to a file "
                              f"({err})") from None
        if not inside_folder(file_name):
            raise RecordError(base, "unsafe_signal_path", f"{base}.hea names signal file "
                              f"{file_name!r}, outside the record's folder "
                              f"{base.parent.resolve()}; only files beside the header are read")
        kind = files.special_kind(target, follow_links=True)
        if kind is not None:
            raise RecordError(base, "not_a_regular_file", f"{base}.hea names signal file "
                              f"{base.parent / file_name}, which is {kind}, not a regular file")
        if not target.is_file():
            raise RecordError(base, "missing_signal_file", f"{base}.hea names signal file "
                              f"{base.parent / file_name}, which does not exist")


def check_before_reading(base: pathlib.Path, header: wfdb_header.Header) -> None:
    """Every check of a single-segment record (or segment) before a byte of its signals is
    read, in the order that names the most direct cause first."""
    check_signal_files(base, header)
    check_skews(base, header)
    check_announced_sizes(base, header)  # before any allocation the header asks for
    check_length(base, header)
    check_mat_headers(base, header)
