"""The canonical ECG: every reader's decoded samples become one `Ecg` here (`canonical_ecg`),
12 leads in a fixed order, in millivolts, at the target rate.

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
- any sampling rate -> resampled to `target_fs` (signal/resample.py); `Ecg.fs` is the exact
  resulting rate.

SKIPPED here (RecordError with `.reason`; the message names the file and what was expected):
  bad_units (a lead in e.g. mmHg), no_signal (no usable lead left), too_short (fewer than
  `min_seconds`). The readers add their own reasons (wfdb_records.py, arrays.py).
"""
from __future__ import annotations

import dataclasses
import os
import warnings

import numpy as np

from crema_jax.data.reading import leads as leads_lib
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


@dataclasses.dataclass
class Ecg:
    signal: np.ndarray        # float32 (12, T) mV, canonical lead order.
    lead_present: np.ndarray  # bool (12,); False rows are zero.
    fs: float                 # sampling rate of `signal` (the target rate after resampling).
    record_id: str
    path: str                 # the record path without extension.
    meta: dict = dataclasses.field(default_factory=dict)     # age, sex, labels, source_fs, ...
    repairs: dict = dataclasses.field(default_factory=dict)  # repair name -> count.


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


NAN_POLICIES = ("interpolate", "zero", "keep")
FLAT_LEADS = ("absent", "keep")


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
