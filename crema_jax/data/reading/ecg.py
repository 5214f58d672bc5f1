"""The canonical ECG: every reader's decoded samples become one `Ecg` here (`canonical_ecg`),
12 leads in a fixed order, in millivolts, at the target rate.

REPAIRED (the record is kept; counts land in `Ecg.repairs`, the leads (channels) each repair
concerns in `Ecg.repaired_leads`; reading/repairs.py puts both into words; the NaN, flat-lead
and limb-lead repairs are reading/lead_repairs.py's, applied here):
- lead names differ in case or use an alias ("LEAD I", "DI", "avr", "C1"; see `leads.py`)
  -> mapped onto the canonical order I, II, III, aVR, aVL, aVF, V1-V6.
- extra channels (Frank vx/vy/vz, respiration, duplicates of a lead) -> dropped
  ("leads_dropped").
- missing leads -> zero rows, `lead_present` False.
- isolated NaN / WFDB invalid samples inside a lead -> linear interpolation between the nearest
  valid samples, edges held ("nan_replaced": number of samples). Interpolation (rather than
  ECGFounder's NaN -> 0) avoids steps that make the band-pass filters ring. nan_policy "zero"
  sets every NaN to 0 instead ("nan_zeroed"; a lead entirely NaN, fed as zeros:
  "all_nan_leads_zeroed").
- a lead that is entirely NaN ("all_nan_leads") -> zero row, marked absent; a constant lead,
  e.g. all zero ("flat_leads") -> zero row, marked absent with flat_leads "absent" (ours); kept
  as recorded with "keep" (the peers' scripts feed it like any other lead: "flat_leads_kept").
- absent III, aVR, aVL, aVF (and I or II when the other two of I/II/III exist) -> derived with
  the Einthoven/Goldberger identities when `derive_limb_leads` ("leads_derived"); with flat
  leads kept, a held limb lead without signal (all NaN fed as zeros, or constant) counts as
  absent there, derived when the leads it is derived from are held with signal.
- units uV/µV/V/nV -> converted to mV; a missing units field means mV (the WFDB default;
  the export readers refuse a file that states no unit: `stated_unit`).
- any sampling rate -> resampled to `target_fs` (signal/resample.py); `Ecg.fs` is the exact
  resulting rate.

SKIPPED here (RecordError with `.reason`; the message names the file and what was expected):
  bad_units (a lead in e.g. mmHg), no_signal (no usable lead left; with flat leads kept, every
  lead constant or NaN), too_short (fewer than `min_seconds`). The readers add their own
  reasons (wfdb_records.py, arrays.py).
"""
from __future__ import annotations

import dataclasses
import math
import os

import numpy as np

from crema_jax.data.reading import lead_repairs
from crema_jax.data.reading import leads as leads_lib
from crema_jax.data.reading.limits import FS_RANGE, MIN_SECONDS
from crema_jax.data.signal.resample import resample

UNIT_TO_MV = {"mv": 1.0, "millivolt": 1.0, "millivolts": 1.0, "uv": 1e-3, "µv": 1e-3,
              "μv": 1e-3, "microvolt": 1e-3, "microvolts": 1e-3, "v": 1e3, "volt": 1e3,
              "volts": 1e3, "nv": 1e-6}


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


def check_sampling_rate(path, fs, said: str, *, fs_range=FS_RANGE, file=None) -> float:
    """`fs` as a float within fs_range (limits.FS_RANGE), else a bad_sampling_rate RecordError of
    record `path`: "<file or path>: <said> <fs> Hz, expected 50-10000 Hz"."""
    try:
        value = float(fs)
    except (TypeError, ValueError):
        value = math.nan
    if not fs_range[0] <= value <= fs_range[1]:
        shown = f"{value:g}" if math.isfinite(value) else str(fs)
        raise RecordError(path, "bad_sampling_rate", f"{file or path}: {said} {shown} Hz, "
                          f"expected {fs_range[0]:g}-{fs_range[1]:g} Hz")
    return value


def positive_scale(path, value, field: str) -> float:
    """A file's amplitude scale (units per stored count: MUSE LeadAmplitudeUnitsPerBit, aECG
    scale, DICOM ChannelSensitivity, Philips resolution) as a positive finite number; else
    RecordError bad_units naming `field`: a negative scale inverts the signal, 0 or NaN erases
    it (read as flat leads, a misleading no_signal), inf overflows it."""
    try:
        scale = float(value)
    except (TypeError, ValueError):
        scale = float("nan")
    if not (math.isfinite(scale) and scale > 0):
        raise RecordError(path, "bad_units", f"{path}: {field} is {value!r}, expected a positive "
                          "finite number (the amplitude of one stored count)")
    return scale


def stated_unit(path, unit, field: str) -> str:
    """A file's amplitude unit as the file states it; RecordError bad_units naming `field` when
    it states none. Only WFDB defaults a missing unit to mV; an HL7 PQ's default is "1"
    (dimensionless), EDF and DICOM have none, and a uV file read as mV is 1000x too large."""
    unit = (unit or "").strip()
    if not unit:
        raise RecordError(path, "bad_units", f"{path}: {field} states no unit, expected a "
                          "voltage unit (mV, uV, V)")
    return unit


def read_failure(err: Exception, path) -> tuple[str, str, str]:
    """(reason, path, message) of a record that failed to read, as skip counts keep it: a
    RecordError's own, any other exception "unexpected_error" (a new kind of broken file)."""
    if isinstance(err, RecordError):
        return err.reason, err.path, str(err)
    return ("unexpected_error", str(path),
            f"{path}: unexpected {type(err).__name__} while reading: {err}")


@dataclasses.dataclass
class Ecg:
    signal: np.ndarray        # float32 (12, T) mV, canonical lead order.
    lead_present: np.ndarray  # bool (12,); False rows are zero.
    fs: float                 # sampling rate of `signal` (the target rate after resampling).
    record_id: str
    path: str                 # the record path without extension.
    meta: dict = dataclasses.field(default_factory=dict)     # age, sex, labels, source_fs, ...
    repairs: dict = dataclasses.field(default_factory=dict)  # repair name -> count.
    # repair name -> the canonical leads it concerns, in lead order (for "leads_dropped": the
    # dropped channels' names as the file gives them).
    repaired_leads: dict = dataclasses.field(default_factory=dict)


NAN_POLICIES = ("interpolate", "zero", "drop_window", "keep")
FLAT_LEADS = ("absent", "keep")


@dataclasses.dataclass(frozen=True)
class Window:
    """Window `index` of the non-overlapping windows of `seconds` that a record is cut into at its
    own rate (ST-MEM's examples); a trailing remainder belongs to no window."""
    index: int
    seconds: float


def check_nan_policy(nan_policy: str, target_fs: float | None) -> None:
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy={nan_policy!r}: expected one of {NAN_POLICIES}")
    if nan_policy == "keep" and target_fs is not None:
        raise ValueError("nan_policy='keep' needs target_fs=None (resampling spreads NaN)")


def resampled_last(*, windowed: bool, nan_policy: str, resample_method: str) -> bool:
    """Whether canonical_ecg cuts and checks a record at its own rate and resamples it last
    (ST-MEM's order: 10 s windows at the record's rate, a window with NaN dropped, each window
    FFT-resampled), rather than resampling the whole record first (ours, and the cache's)."""
    return windowed or nan_policy == "drop_window" or resample_method != "polyphase"


def canonical_ecg(raw: np.ndarray, names, units, fs: float, *, path: str, where: str = "",
                  meta: dict | None = None, target_fs: float | None = 250.0,
                  derive_limb_leads: bool = True, min_seconds: float | None = MIN_SECONDS,
                  nan_policy: str = "interpolate", resample_method: str = "polyphase",
                  flat_leads: str = "absent", window: Window | None = None,
                  owned: bool = False) -> Ecg:
    """Decoded samples of any record format -> the canonical Ecg: THE one place where channels
    become the 12 leads, units become mV, the NaN policy applies, flat leads are dropped, limb
    leads derived and the signal resampled (and, on ST-MEM's path, cut into a window). Every
    reader and every source ends here.

    raw: (T, channels) physical values in `units` (one per channel; "" = mV, WFDB's default);
    names: the channels' lead names; path: the record as errors name it; where: the file that
    states the units (default: path). nan_policy: "interpolate" partial NaN runs (all-NaN leads
    become absent zeros); "zero": every NaN -> 0 (ECGFounder); "drop_window": the record (or window)
    holding any NaN is skipped as nan_window (ST-MEM); "keep": NaN stays (target_fs None only).
    owned: `raw` is the reader's own new array, which may be reused and changed in place (a
    record stored in lead order needs no copy; never a memory map or a cached array).
    window: cut this window after the whole record is repaired and checked. Two orders, each
    exact as it was written: the recorded leads resampled first, then limb leads derived at the
    target rate (ours: polyphase, whole records); or, when `resampled_last` says so, limb leads
    derived and the length checked at the record's rate, then the window cut, checked for NaN
    and resampled.
    """
    check_nan_policy(nan_policy, target_fs)
    if flat_leads not in FLAT_LEADS:
        raise ValueError(f"flat_leads={flat_leads!r}: expected one of {FLAT_LEADS}")
    if raw.shape[0] == 0:
        raise RecordError(path, "no_signal", f"record {path} holds no samples")
    signal, present, repairs, named = _to_leads(raw, names, units, path=path,
                                                where=where or path, owned=owned)
    _check_magnitude(signal, path=path, where=where or path)
    signal = lead_repairs.apply_nan_policy(signal, present, repairs, named, nan_policy)
    lead_repairs.drop_flat_leads(signal, present, repairs, named, flat_leads)
    unusable = lead_repairs.kept_flat_leads(signal, present, repairs, named, flat_leads)
    if present.any() and not (present & ~unusable).any():
        # Every lead constant or NaN on a path that keeps them (ECGFounder's: NaN -> 0, flat
        # leads kept): `predict` had scored such records (0.5 for every label) without a word.
        _check_length(raw.T, float(fs), min_seconds, path)
        raise RecordError(path, "no_signal", f"record {path}: every lead is constant or NaN "
                          f"(lead names {list(names)}): no signal to read")
    if not present.any():
        # One sample is flat in every lead: such a record is named for its length.
        _check_length(raw.T, float(fs), min_seconds, path)
        raise RecordError(path, "no_signal", f"record {path} has none of the 12 standard leads "
                          f"with a usable signal (lead names {list(names)})")
    source_fs = fs = float(fs)
    signal = signal.astype(np.float32)
    if not resampled_last(windowed=window is not None, nan_policy=nan_policy,
                          resample_method=resample_method):
        if target_fs is not None:
            signal, fs = _resample_recorded(signal, present, fs, float(target_fs),
                                            resample_method)
        signal, present = lead_repairs.derive(signal, present, unusable, repairs, named,
                                              derive_limb_leads)
        _check_length(signal, fs, min_seconds, path)
    else:
        signal, present = lead_repairs.derive(signal, present, unusable, repairs, named,
                                              derive_limb_leads)
        _check_length(signal, fs, min_seconds, path)
        signal = _cut(signal, window, fs, path)
        if nan_policy == "drop_window" and np.isnan(signal).any():
            where_in = (f"window {window.index} ({window.index * window.seconds:g} s) of "
                        if window is not None else "")
            raise RecordError(path, "nan_window", f"{where_in}{path} holds NaN samples")
        if target_fs is not None:
            signal, fs = resample(signal, fs, float(target_fs), method=resample_method)
    meta = dict(meta or {})
    meta.update(source_fs=source_fs, source_leads=tuple(names))
    return Ecg(signal=np.ascontiguousarray(signal, np.float32), lead_present=present, fs=fs,
               record_id=os.path.basename(path), path=path, meta=meta, repairs=repairs,
               repaired_leads=named)


def _to_leads(raw: np.ndarray, names, units, *, path: str, where: str, owned: bool = False):
    """(float64 (12, T) in mV, lead_present, repairs, repaired_leads): each channel named after a
    standard lead goes to its row; unknown names and repeats of a lead are dropped (and named in
    repaired_leads["leads_dropped"]). An `owned` raw whose transpose already is those rows (12
    channels in lead order, in mV, float64, C order) is used as it is."""
    present = np.zeros(leads_lib.NUM_LEADS, bool)
    repairs: dict[str, int] = {}
    named: dict[str, tuple] = {}
    rows, channels, factors = [], [], []
    for ch, name in enumerate(names):
        row = leads_lib.lead_index(name or "")
        if row is None or present[row]:
            repairs["leads_dropped"] = repairs.get("leads_dropped", 0) + 1
            named["leads_dropped"] = named.get("leads_dropped", ()) + (str(name or ""),)
            continue
        unit = (units[ch] or "mV").strip().casefold()
        if unit not in UNIT_TO_MV:
            raise RecordError(path, "bad_units", f"{where}: lead {name} is in {units[ch]!r}, "
                              f"expected a voltage unit (mV, uV, V)")
        rows.append(row)
        channels.append(ch)
        factors.append(UNIT_TO_MV[unit])
        present[row] = True
    rows_view = raw.T
    if (owned and rows == list(range(leads_lib.NUM_LEADS)) and channels == rows
            and raw.shape[1] == leads_lib.NUM_LEADS and all(f == 1.0 for f in factors)
            and rows_view.dtype == np.float64 and rows_view.flags.c_contiguous
            and rows_view.flags.writeable):
        return rows_view, present, repairs, named
    signal = np.zeros((leads_lib.NUM_LEADS, raw.shape[0]), np.float64)
    if rows:  # one transposing copy: (T, channels) -> the lead rows, scaled to mV
        factor = np.asarray(factors)
        picked = raw.T[channels]  # contiguous rows when raw is a transposed (leads, T) array
        signal[rows] = picked if (factor == 1.0).all() else picked * factor[:, None]
    return signal, present, repairs, named


# 100 V: ECGs are millivolts, and even raw 16-bit counts read at 1 count per mV stay below
# 33 V; beyond this a header misstates the gain or the unit (1e-300/mV gains overflowed float32
# into inf: NaN features, or cache rows of zeros counted as good).
MAX_ABS_MV = 1e5


def _check_magnitude(signal: np.ndarray, *, path: str, where: str) -> None:
    """RecordError bad_units when a sample is infinite or beyond MAX_ABS_MV (NaN: the NaN
    policy's)."""
    # fmax/fmin skip NaN without the copies abs and isnan made (a long record's size each).
    peak = max(np.fmax.reduce(signal, axis=None, initial=0.0),
               -np.fmin.reduce(signal, axis=None, initial=0.0))
    if peak > MAX_ABS_MV:
        raise RecordError(path, "bad_units", f"{where}: samples reach {peak:.3g} mV, expected "
                          f"at most {MAX_ABS_MV:g} mV (a gain or unit that misstates the signal)")


def _resample_recorded(signal: np.ndarray, present: np.ndarray, fs: float, target_fs: float,
                       method: str) -> tuple[np.ndarray, float]:
    """The recorded rows resampled (absent rows stay zero, at the new length)."""
    rows = np.flatnonzero(present)
    if rows.size == len(present):  # every lead: no copy of the rows first
        return resample(signal, fs, target_fs, method=method)
    resampled, fs = resample(signal[rows], fs, target_fs, method=method)
    out = np.zeros((leads_lib.NUM_LEADS, resampled.shape[1]), np.float32)
    out[rows] = resampled
    return out, fs


def _check_length(signal: np.ndarray, fs: float, min_seconds: float | None, path: str) -> None:
    if min_seconds is not None and signal.shape[1] < min_seconds * fs:
        raise RecordError(path, "too_short", f"record {path} lasts {signal.shape[1] / fs:.2f} s, "
                          f"expected at least {min_seconds:g} s")


def _cut(signal: np.ndarray, window: Window | None, fs: float, path: str) -> np.ndarray:
    """Window `window.index` of `window.seconds` at the record's rate (None: the whole record)."""
    if window is None:
        return signal
    width = int(window.seconds * fs)
    cut = signal[:, window.index * width:(window.index + 1) * width]
    if cut.shape[1] < width:  # a stored length that counted padding (CODE-15%)
        raise RecordError(path, "too_short", f"{path} holds no whole {window.seconds:g} s "
                          f"window {window.index}")
    return cut
