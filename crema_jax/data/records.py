"""Reads one WFDB record into a canonical 12-lead float32 array in millivolts.

`read_record(path)` accepts any record `wfdb` can read (.hea + .mat/.dat). Single-segment records
in the common sample formats (16, 61, 80, 160, 24, 32, 212; one sample per frame, no skew) are
decoded here with numpy after a strict header parse (`wfdb_header`): 4-9x faster than
`wfdb.rdrecord`, whose pandas-based header parsing alone costs ~5 ms. Everything else
(multi-segment records, formats 8/310/311/FLAC, oversampled or skewed signals) goes through
`wfdb.rdrecord(physical=True)`. Files are opened read-only. Physical value = (digital -
baseline) / gain in the header's units, then converted to mV. Resampling: scipy's
`resample_poly` with up/down = Fraction(target_fs / fs).limit_denominator(1000); `Ecg.fs` is the
exact resulting rate.

REPAIRED (the record is kept; counts land in `Ecg.repairs`):
- lead names differ in case or use an alias ("LEAD I", "DI", "avr", "C1"; see `leads.py`)
  -> mapped onto the canonical order I, II, III, aVR, aVL, aVF, V1-V6.
- extra channels (Frank vx/vy/vz, respiration, duplicates of a lead) -> dropped
  ("leads_dropped").
- missing leads -> zero rows, `lead_present` False.
- isolated NaN / WFDB invalid samples inside a lead -> linear interpolation between the nearest
  valid samples, edges held ("nan_replaced": number of samples). Interpolation (rather than
  ECGFounder's NaN -> 0) avoids steps that make the band-pass filters ring.
- a lead that is entirely NaN ("all_nan_leads") -> zero row, marked absent; a constant lead,
  e.g. all zero ("flat_leads") -> zero row, marked absent with flat_leads "absent" (ours); kept
  as recorded with "keep" (the peers' scripts feed it like any other lead).
- absent III, aVR, aVL, aVF (and I or II when the other two of I/II/III exist) -> derived with
  the Einthoven/Goldberger identities when `derive_limb_leads` ("leads_derived").
- units uV/µV/V/nV -> converted to mV; a missing units field means mV (the WFDB default).
- any sampling rate in `fs_range` -> polyphase resampling to `target_fs`.

SKIPPED (RecordError with `.reason`; the message names the file and what was expected):
  missing_header, header_syntax (any field that does not parse), missing_signal_file,
  unsafe_signal_path (a signal file outside the header's folder: "../..", absolute, a link out),
  truncated_signal (a signal file holding fewer bytes / samples than the header announces),
  unreadable (any other wfdb failure, for records on the wfdb path), bad_sampling_rate (fs
  absent or outside `fs_range`), bad_units (a lead in e.g. mmHg), no_signal (no usable lead
  left), too_short (fewer than `min_seconds` at the output rate).
"""
from __future__ import annotations

import dataclasses
import fractions
import functools
import os
import pathlib
import warnings

import numpy as np
import scipy.signal
import wfdb

from crema_jax.data import leads as leads_lib
from crema_jax.data import wfdb_header

_EXTENSIONS = (".hea", ".mat", ".dat")
# Physical unit (case-folded) -> factor to millivolts.
UNIT_TO_MV = {"mv": 1.0, "millivolt": 1.0, "millivolts": 1.0, "uv": 1e-3, "µv": 1e-3,
               "μv": 1e-3, "microvolt": 1e-3, "microvolts": 1e-3, "v": 1e3, "volt": 1e3,
               "volts": 1e3, "nv": 1e-6}
# fmt -> (numpy dtype of one stored sample, WFDB invalid-sample value after decoding).
_FAST_FORMATS = {"16": ("<i2", -2**15), "61": (">i2", -2**15), "80": ("u1", -2**7),
                 "160": ("<u2", -2**15), "24": (None, -2**23), "32": ("<i4", -2**31),
                 "212": (None, -2**11)}


class RecordError(Exception):
    """A record that cannot be used; `.reason` is a snake_case key, `.path` the record."""

    def __init__(self, path, reason: str, message: str):
        super().__init__(f"{message} [{reason}]")
        self.path = str(path)
        self.reason = reason
        self.message = message

    def __reduce__(self):
        # Grain worker processes and `crema-jax prepare` workers send errors back pickled; the
        # default Exception pickling would call __init__ with the formatted message only.
        return (type(self), (self.path, self.reason, self.message))


@dataclasses.dataclass
class Ecg:
    signal: np.ndarray        # float32 (12, T) mV, canonical lead order.
    lead_present: np.ndarray  # bool (12,); False rows are zero.
    fs: float                 # sampling rate of `signal` (the target rate after resampling).
    record_id: str
    path: str                 # the record path without extension.
    meta: dict = dataclasses.field(default_factory=dict)     # age, sex, labels, source_fs, ...
    repairs: dict = dataclasses.field(default_factory=dict)  # repair name -> count.


def record_base(path) -> pathlib.Path:
    """The record path without its .hea/.mat/.dat extension."""
    path = pathlib.Path(path)
    return path.with_suffix("") if path.suffix.lower() in _EXTENSIONS else path


def read_header(path) -> wfdb_header.Header:
    """Parses `<record>.hea`; RecordError missing_header / header_syntax."""
    hea = record_base(path).with_name(record_base(path).name + ".hea")
    try:
        text = hea.read_text(encoding="latin-1")
    except OSError as err:
        raise RecordError(hea, "missing_header", f"cannot read header {hea}: {err}") from None
    try:
        return wfdb_header.parse_header(text)
    except wfdb_header.HeaderError as err:
        where = f"{hea}:{err.line}" if err.line else str(hea)
        raise RecordError(hea, "header_syntax", f"{where}: {err}") from None


def _decode(raw: np.ndarray, fmt: str, n: int) -> np.ndarray:
    """n stored samples of a WFDB format -> int32 digital values."""
    dtype, _ = _FAST_FORMATS[fmt]
    if dtype is not None:
        values = raw[:n * np.dtype(dtype).itemsize].view(dtype).astype(np.int32)
        offset = {"80": 128, "160": 32768}.get(fmt, 0)  # Offset-binary formats.
        return values - offset
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
    out = None if len(by_file) == 1 else np.empty((len(header.signals), header.sig_len))
    for file_name, channels in by_file.items():
        spec = header.signals[channels[0]]
        if any(header.signals[c].fmt != spec.fmt for c in channels):
            raise RecordError(base, "header_syntax", f"{base}.hea: signals stored in {file_name} "
                              "have different formats; WFDB requires one format per file")
        path = base.parent / file_name
        n = header.sig_len * len(channels)
        need = _nbytes(spec.fmt, n)
        with open(path, "rb") as f:  # Read-only: never touch the user's files.
            f.seek(spec.byte_offset)
            raw = np.frombuffer(f.read(need), np.uint8)
        if raw.size < need:
            raise RecordError(path, "truncated_signal", (
                f"{path} is truncated: the header announces {header.sig_len} samples x "
                f"{len(channels)} signals in format {spec.fmt} ({need} bytes after offset "
                f"{spec.byte_offset}), the file holds {raw.size}"))
        digital = _decode(raw, spec.fmt, n).reshape(header.sig_len, len(channels)).T
        # In-place float64 steps on (channels, T) rows: numpy's mixed int/float broadcasting
        # over a 12-wide last axis costs ~8x more for the same values.
        physical = digital.astype(np.float64, order="C")
        physical -= np.array([header.signals[c].baseline for c in channels], np.float64)[:, None]
        physical /= np.array([header.signals[c].adc_gain for c in channels], np.float64)[:, None]
        invalid = digital == _FAST_FORMATS[spec.fmt][1]
        if invalid.any():
            physical[invalid] = np.nan
        if out is None:  # one file holds every signal, in header order
            return physical.T
        out[channels] = physical
    return out.T


def _read_wfdb(base: pathlib.Path, header: wfdb_header.Header):
    """(T, n_sig) physical values, lead names and units through wfdb.rdrecord."""
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


def repair_nans(x: np.ndarray, present: np.ndarray, repairs: dict) -> None:
    """In place: interpolates partial NaN runs; all-NaN leads become absent zero rows."""
    nan = np.isnan(x)
    if not nan.any():
        return
    for row in np.flatnonzero(nan.any(axis=1)):
        bad = nan[row]
        if bad.all():
            x[row] = 0.0
            present[row] = False
            repairs["all_nan_leads"] = repairs.get("all_nan_leads", 0) + 1
            continue
        idx = np.arange(x.shape[1])
        x[row, bad] = np.interp(idx[bad], idx[~bad], x[row, ~bad])
        repairs["nan_replaced"] = repairs.get("nan_replaced", 0) + int(bad.sum())


@functools.lru_cache(maxsize=32)
def _resample_filter(up: int, down: int) -> np.ndarray:
    """scipy.signal.resample_poly's own anti-aliasing FIR (Kaiser, beta 5), designed once per
    rate pair: designing it costs about as much as filtering a 10 s ECG."""
    max_rate = max(up, down)
    return scipy.signal.firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0))


def resample(x: np.ndarray, fs: float, target_fs: float, *, method: str = "polyphase"
             ) -> tuple[np.ndarray, float]:
    """Resampling along the last axis; returns (signal, exact output rate).

    "polyphase": scipy.signal.resample_poly with up/down = Fraction(target/fs) (ours);
    "fft": scipy.signal.resample to int(T * target / fs) samples (ST-MEM's scripts)."""
    if method == "fft":
        if target_fs == fs:
            return x, float(fs)
        n = int(x.shape[-1] * target_fs / fs)
        y = scipy.signal.resample(np.asarray(x, np.float64), n, axis=-1)
        return y.astype(x.dtype, copy=False), float(target_fs)
    if method != "polyphase":
        raise ValueError(f"data.resample={method!r}: expected 'polyphase' or 'fft'")
    ratio = fractions.Fraction(target_fs / fs).limit_denominator(1000)
    if ratio == 1:
        return x, float(fs)
    up, down = ratio.numerator, ratio.denominator
    window = _resample_filter(up, down).astype(x.dtype)
    y = scipy.signal.resample_poly(x, up, down, axis=-1, window=window)
    return y.astype(x.dtype, copy=False), float(fs * ratio)


NAN_POLICIES = ("interpolate", "zero", "keep")
FLAT_LEADS = ("absent", "keep")


def read_record(path, *, target_fs: float | None = 250.0, derive_limb_leads: bool = True,
                min_seconds: float | None = 2.0, fs_range: tuple[float, float] = (50.0, 10000.0),
                nan_policy: str = "interpolate", resample_method: str = "polyphase",
                flat_leads: str = "absent") -> Ecg:
    """Reads a WFDB record as a canonical 12-lead ECG (see the module docstring for repairs).

    Args:
      path: the record with or without its .hea/.mat/.dat extension.
      target_fs: output sampling rate in Hz; None keeps the record's own rate.
      derive_limb_leads: fill absent III/aVR/aVL/aVF (and I or II) from the other limb leads.
      min_seconds: shortest accepted duration at the output rate (None: no check). Crops longer
        than the record are the pipeline's business (it pads), this only rejects stubs.
      fs_range: plausible header sampling rates; anything outside is `bad_sampling_rate`.
      nan_policy: "interpolate" partial NaN runs (all-NaN leads become absent zeros); "zero":
        every NaN -> 0 (ECGFounder); "keep": leave NaN in place (the caller drops what holds
        them; with target_fs None only, as resampling would smear them).
      resample_method: "polyphase" | "fft" (see `resample`).
      flat_leads: "absent": a constant lead becomes an absent zero row; "keep": it stays.
    """
    check_nan_policy(nan_policy, target_fs)
    base = record_base(path)
    header = read_header(base)
    if header.fs is None or not fs_range[0] <= header.fs <= fs_range[1]:
        raise RecordError(base, "bad_sampling_rate", f"{base}.hea: sampling frequency "
                          f"{header.fs} Hz, expected {fs_range[0]:g}-{fs_range[1]:g} Hz")
    folder = base.parent.resolve()
    for file_name in dict.fromkeys(spec.file_name for spec in header.signals):  # once per file
        if file_name == "~":
            continue
        target = (base.parent / file_name).resolve()
        if folder not in target.parents:
            raise RecordError(base, "unsafe_signal_path", f"{base}.hea names signal file "
                              f"{file_name!r}, outside the record's folder {folder}; "
                              "only files beside the header are read")
        if not target.is_file():
            raise RecordError(base, "missing_signal_file", f"{base}.hea names signal file "
                              f"{base.parent / file_name}, which does not exist")
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
                         flat_leads=flat_leads)


def check_nan_policy(nan_policy: str, target_fs: float | None) -> None:
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy={nan_policy!r}: expected one of {NAN_POLICIES}")
    if nan_policy == "keep" and target_fs is not None:
        raise ValueError("nan_policy='keep' needs target_fs=None (resampling spreads NaN)")


def canonical_ecg(raw: np.ndarray, names, units, fs: float, *, path: str, where: str = "",
                  meta: dict | None = None, target_fs: float | None = 250.0,
                  derive_limb_leads: bool = True, min_seconds: float | None = 2.0,
                  nan_policy: str = "interpolate", resample_method: str = "polyphase",
                  flat_leads: str = "absent") -> Ecg:
    """Decoded samples of any record format -> the canonical Ecg: THE one place where channels
    become the 12 leads, units become mV, NaN runs are repaired, flat leads dropped, the signal
    resampled and limb leads derived (every reader ends here; read_record's arguments).

    raw: (T, channels) physical values in `units` (one per channel; "" = mV); names: the
    channels' lead names; path: the record as errors name it; where: the file that states the
    units (default: path).
    """
    check_nan_policy(nan_policy, target_fs)
    if flat_leads not in FLAT_LEADS:
        raise ValueError(f"flat_leads={flat_leads!r}: expected one of {FLAT_LEADS}")
    where = where or path
    if raw.shape[0] == 0:
        raise RecordError(path, "no_signal", f"record {path} holds no samples")

    present = np.zeros(leads_lib.NUM_LEADS, bool)
    repairs: dict[str, int] = {}
    rows, channels, factors = [], [], []
    for ch, name in enumerate(names):
        row = leads_lib.lead_index(name or "")
        if row is None or present[row]:
            repairs["leads_dropped"] = repairs.get("leads_dropped", 0) + 1
            continue
        unit = (units[ch] or "mV").strip().casefold()
        if unit not in UNIT_TO_MV:
            raise RecordError(path, "bad_units", f"{where}: lead {name} is in {units[ch]!r}, "
                              f"expected a voltage unit (mV, uV, V)")
        rows.append(row)
        channels.append(ch)
        factors.append(UNIT_TO_MV[unit])
        present[row] = True
    signal = np.zeros((leads_lib.NUM_LEADS, raw.shape[0]), np.float64)
    if rows:  # one transposing copy: (T, channels) -> the lead rows, scaled to mV
        factor = np.asarray(factors)
        picked = raw.T[channels]  # contiguous rows when raw is a transposed (leads, T) array
        signal[rows] = picked if (factor == 1.0).all() else picked * factor[:, None]

    if nan_policy == "interpolate":
        repair_nans(signal, present, repairs)
    elif nan_policy == "zero" and np.isnan(signal).any():
        repairs["nan_zeroed"] = int(np.isnan(signal).sum())
        signal = np.nan_to_num(signal, nan=0.0)
    if np.isnan(signal).any():  # nan_policy "keep": an all-NaN lead is not "flat"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            span = np.nanmax(signal, axis=1) - np.nanmin(signal, axis=1)
        span = np.where(np.isnan(span), 1.0, span)
    else:
        span = np.ptp(signal, axis=1)
    flat = present & (span == 0) & (flat_leads == "absent")
    if flat.any():
        signal[flat] = 0.0
        present &= ~flat
        repairs["flat_leads"] = int(flat.sum())
    if not present.any():
        raise RecordError(path, "no_signal", f"record {path} has none of the 12 standard leads "
                          f"with a usable signal (lead names {list(names)})")

    source_fs = fs = float(fs)
    signal = signal.astype(np.float32)
    if target_fs is not None:
        rows = np.flatnonzero(present)
        resampled, fs = resample(signal[rows], fs, float(target_fs), method=resample_method)
        signal = np.zeros((leads_lib.NUM_LEADS, resampled.shape[1]), np.float32)
        signal[rows] = resampled
    if derive_limb_leads:
        signal, present, derived = leads_lib.derive_limb_leads(signal, present)
        if derived:
            repairs["leads_derived"] = derived
    if min_seconds is not None and signal.shape[1] < min_seconds * fs:
        raise RecordError(path, "too_short", f"record {path} lasts {signal.shape[1] / fs:.2f} s, "
                          f"expected at least {min_seconds:g} s")
    meta = dict(meta or {})
    meta.update(source_fs=source_fs, source_leads=tuple(names))
    return Ecg(signal=np.ascontiguousarray(signal, np.float32), lead_present=present, fs=fs,
               record_id=os.path.basename(path), path=path, meta=meta, repairs=repairs)
