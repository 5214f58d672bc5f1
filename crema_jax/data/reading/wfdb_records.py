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
  too_large (more than limits.MAX_SAMPLES samples: a 24 h 12-lead record is not read whole).
Reads are bounded by the files' real sizes (safe_files.py): a header is read up to its size
(and refused above wfdb_header.MAX_HEADER_BYTES); what it announces is checked against the signal files
before anything is allocated, and the decoded samples against its checksums (wfdb_checks.py).
"""
from __future__ import annotations

import os
import pathlib

import numpy as np
import wfdb

from crema_jax.data.reading import safe_files, wfdb_checks, wfdb_header
from crema_jax.data.reading.ecg import (Ecg, RecordError, Window, canonical_ecg,
                                        check_nan_policy, check_sampling_rate)
from crema_jax.data.reading.limits import FS_RANGE, MAX_SAMPLES, MIN_SECONDS

def record_base(path) -> pathlib.Path:
    """The record path without its .hea/.mat/.dat extension."""
    return pathlib.Path(wfdb_header.record_name(os.fspath(path)))


def read_header(path) -> wfdb_header.Header:
    """Parses `<record>.hea`; RecordError missing_header / header_syntax."""
    hea = record_base(path).with_name(record_base(path).name + ".hea")
    try:
        text = safe_files.read_text(hea, limit=wfdb_header.MAX_HEADER_BYTES)
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


def signal_files_named(hea) -> list[str]:
    """The paths of the signal files the header `hea` names (wfdb_header.signal_file_names,
    joined to its folder), read without validating it; [] for a header that cannot be read
    (its record is a skip when read)."""
    try:
        text = safe_files.read_text(hea, limit=wfdb_header.MAX_HEADER_BYTES)
    except (OSError, ValueError):
        return []
    folder = os.path.dirname(os.fspath(hea))
    return [os.path.join(folder, name) for name in wfdb_header.signal_file_names(text)]


def names_file(hea, path) -> bool:
    """Whether the header `hea` names the file `path` as one of its signal files (WFDB lets a
    header name any file beside it: E1 beside E1.hea, r.sig beside r.hea)."""
    return os.path.normpath(os.fspath(path)) in {os.path.normpath(p)
                                                 for p in signal_files_named(hea)}


def _decode(raw: np.ndarray, fmt: str, n: int) -> np.ndarray:
    """n stored samples of a WFDB format -> integer digital values (a view of `raw` for the
    two's complement formats 16, 61 and 32: no copy of a long record)."""
    dtype, _ = wfdb_checks.FAST_FORMATS[fmt]
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
    b[:len(raw[:wfdb_checks.nbytes(fmt, n)])] = raw[:wfdb_checks.nbytes(fmt, n)]
    b = b.reshape(-1, 3)
    pairs = np.stack([b[:, 0] | ((b[:, 1] & 0x0F) << 8), b[:, 2] | ((b[:, 1] & 0xF0) << 4)], 1)
    values = pairs.reshape(-1)[:n]
    return values - ((values & 0x800) << 1)


def _fast_path_ok(header: wfdb_header.Header) -> bool:
    return (header.n_seg is None and bool(header.sig_len) and all(
        s.fmt in wfdb_checks.FAST_FORMATS and s.samps_per_frame == 1 and s.skew == 0
        and s.file_name != "~" for s in header.signals))


def _read_fast(base: pathlib.Path, header: wfdb_header.Header) -> np.ndarray:
    """(T, n_sig) float64 physical values (header units), NaN for invalid samples: a transposed
    view of a (n_sig, T) array, so each lead is one contiguous row (what canonical_ecg copies)."""
    by_file = wfdb_checks.signal_files(header)
    for file_name, channels in by_file.items():
        if any(header.signals[c].fmt != header.signals[channels[0]].fmt for c in channels):
            raise RecordError(base, "header_syntax", f"{base}.hea: signals stored in {file_name} "
                              "have different formats; WFDB requires one format per file")
    out = None if len(by_file) == 1 else np.empty((len(header.signals), header.sig_len))
    for file_name, channels in by_file.items():
        spec = header.signals[channels[0]]
        path = base.parent / file_name
        n = header.sig_len * len(channels)
        need = wfdb_checks.nbytes(spec.fmt, n)
        with wfdb_checks.open_signal(base, path) as f:  # read-only: never the user's files
            f.seek(spec.byte_offset)
            raw = np.frombuffer(f.read(need), np.uint8)
        if raw.size < need:  # the file shrank since its size was checked
            raise RecordError(path, "truncated_signal", wfdb_checks.truncated(
                path, header, spec, channels, need, raw.size))
        digital = _decode(raw, spec.fmt, n).reshape(header.sig_len, len(channels)).T
        # In-place float64 steps on (channels, T) rows: numpy's mixed int/float broadcasting
        # over a 12-wide last axis costs ~8x more for the same values.
        physical = digital.astype(np.float64, order="C")
        wfdb_checks.verify_checksums(base, path, header, channels, physical)
        invalid = digital == wfdb_checks.FAST_FORMATS[spec.fmt][1]
        del raw, digital  # a long record's stored bytes are freed before the next copy
        physical -= np.array([header.signals[c].baseline for c in channels], np.float64)[:, None]
        physical /= np.array([header.signals[c].adc_gain for c in channels], np.float64)[:, None]
        if invalid.any():
            physical[invalid] = np.nan
        if out is None:  # one file holds every signal, in header order
            return physical.T
        out[channels] = physical
    return out.T


def _check_segments(base: pathlib.Path, header: wfdb_header.Header) -> dict:
    """A multi-segment record's segment headers and their signal files checked as a record's
    own are (kind, place, size) before wfdb opens any of them; {segment: its parsed header}."""
    samples, headers = {}, {}
    for segment in dict.fromkeys(header.segments):
        if segment == "~":
            continue
        if "/" in segment or segment in (".", ".."):
            raise RecordError(base, "unsafe_signal_path", f"{base}.hea names segment "
                              f"{segment!r}; only segments beside the header are read")
        seg_base = base.parent / segment
        seg_header = headers[segment] = read_header(seg_base)
        if seg_header.n_seg is None:
            wfdb_checks.check_before_reading(seg_base, seg_header)
            samples[segment] = wfdb_checks.record_samples(seg_base, seg_header)
    # A segment may be listed many times (a 2 KB header repeating one 12 MB segment 200 times).
    total = sum(samples.get(segment, 0) for segment in header.segments)
    if total > MAX_SAMPLES:
        raise wfdb_checks.too_large(base, total, header.n_sig, header.fs)
    return headers


def _segment_units(base: pathlib.Path, names: list[str], segments: dict) -> list[str] | None:
    """Each merged signal's units from the segment headers' own parse (wfdb's would have read
    "µV" as "V"); a RecordError when two segments state different units for one signal (wfdb
    would join volts to millivolts); None when a name is in no segment header."""
    stated: dict[str, dict[str, str]] = {}
    for segment, seg_header in segments.items():
        for signal in seg_header.signals:
            stated.setdefault(signal.name, {}).setdefault(signal.units, segment)
    units = []
    for name in names:
        found = stated.get(name, {})
        if len(found) > 1:
            listed = ", ".join(f"{u!r} in {seg}.hea" for u, seg in found.items())
            raise RecordError(base, "bad_units", f"{base}.hea: signal {name!r} has different "
                              f"units in its segments ({listed}); expected one unit")
        if not found:
            return None
        units.append(next(iter(found)))
    return units


def _read_wfdb(base: pathlib.Path, header: wfdb_header.Header):
    """(T, n_sig) physical values, lead names and units through wfdb.rdrecord."""
    segments = _check_segments(base, header)
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
    units, names = list(record.units or []), list(record.sig_name or [])
    # wfdb decodes a local header as ASCII, dropping other bytes ("µV" became "V", volts); the
    # units of our own parse (safe_files.decode_text) are the file's.
    if header.n_seg is None and len(header.signals) == len(units):
        units = [s.units for s in header.signals]
    elif header.n_seg is not None:
        units = _segment_units(base, names, segments) or units
    return signal, names, units


def read_record(path, *, target_fs: float | None = 250.0, derive_limb_leads: bool = True,
                min_seconds: float | None = MIN_SECONDS,
                fs_range: tuple[float, float] = FS_RANGE,
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
    check_sampling_rate(base, header.fs, "sampling frequency", fs_range=fs_range,
                        file=f"{base}.hea")
    wfdb_checks.check_before_reading(base, header)
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

