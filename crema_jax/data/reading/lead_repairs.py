"""Leads held without a usable signal, repaired in place for `ecg.canonical_ecg` (the one caller):
the NaN policy's repairs (partial NaN runs interpolated or zeroed, an all-NaN lead made absent or
fed as zeros), constant ("flat") leads made absent or kept, and the limb leads derived in place of
absent ones and of held ones without signal. Each repair is counted in `repairs` and its leads
named in `repaired_leads` (Ecg.repairs, Ecg.repaired_leads; reading/repairs.py puts them into
words); the identities themselves are leads.py's `derive_limb_leads`.
"""
from __future__ import annotations

import numpy as np

from crema_jax.data.reading import leads as leads_lib


def name_leads(repaired_leads: dict, repair: str, rows) -> None:
    """Adds the canonical leads of `rows` to repaired_leads[repair] (Ecg.repaired_leads)."""
    repaired_leads[repair] = (repaired_leads.get(repair, ())
                              + tuple(leads_lib.LEADS[int(r)] for r in rows))


def repair_nans(x: np.ndarray, present: np.ndarray, repairs: dict,
                repaired_leads: dict) -> None:
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
            name_leads(repaired_leads, "all_nan_leads", [row])
            continue
        idx = np.arange(x.shape[1])
        x[row, bad] = np.interp(idx[bad], idx[~bad], x[row, ~bad])
        repairs["nan_replaced"] = repairs.get("nan_replaced", 0) + int(bad.sum())
        name_leads(repaired_leads, "nan_replaced", [row])


def apply_nan_policy(signal: np.ndarray, present: np.ndarray, repairs: dict, named: dict,
                     nan_policy: str) -> np.ndarray:
    """"interpolate" and "zero" repair NaN here; "drop_window" and "keep" leave it in place."""
    if nan_policy == "interpolate":
        repair_nans(signal, present, repairs, named)
    elif nan_policy == "zero" and np.isnan(signal).any():
        nan = np.isnan(signal)
        repairs["nan_zeroed"] = int(nan.sum())
        name_leads(named, "nan_zeroed", np.flatnonzero(nan.any(axis=1)))
        empty = np.flatnonzero(nan.all(axis=1) & present)
        if empty.size:  # a lead the record does not hold, fed as zeros: said apart
            repairs["all_nan_leads_zeroed"] = int(empty.size)
            name_leads(named, "all_nan_leads_zeroed", empty)
        signal = np.nan_to_num(signal, nan=0.0)
    return signal


def _span(rows: np.ndarray) -> np.ndarray:
    """Per row: its largest minus its smallest sample, NaN ignored (fmax/fmin: no copies, no
    warnings); NaN for a row entirely NaN."""
    return np.fmax.reduce(rows, axis=1) - np.fmin.reduce(rows, axis=1)


def drop_flat_leads(signal: np.ndarray, present: np.ndarray, repairs: dict, named: dict,
                    flat_leads: str) -> None:
    """In place, flat_leads "absent": a constant lead becomes an absent zero row (an all-NaN
    lead left in place by the NaN policy is not "flat")."""
    flat = present & (_span(signal) == 0) & (flat_leads == "absent")
    if flat.any():
        signal[flat] = 0.0
        present &= ~flat
        repairs["flat_leads"] = int(flat.sum())
        name_leads(named, "flat_leads", np.flatnonzero(flat))


def kept_flat_leads(signal: np.ndarray, present: np.ndarray, repairs: dict, named: dict,
                    flat_leads: str) -> np.ndarray:
    """flat_leads "keep": the held leads without signal (constant, or all NaN), which limb-lead
    derivation may replace; the constant ones not already said as all-NaN are named
    "flat_leads_kept" (fed to the model as they are, as an absent lead's zeros are said)."""
    if flat_leads != "keep" or not present.any():
        return np.zeros_like(present)
    span = _span(signal)
    unusable = present & ~(span > 0)
    said = set(named.get("all_nan_leads_zeroed", ()))
    flat = [row for row in np.flatnonzero(unusable & ~np.isnan(span))
            if leads_lib.LEADS[row] not in said]
    if flat:
        repairs["flat_leads_kept"] = len(flat)
        name_leads(named, "flat_leads_kept", flat)
    return unusable


def derive(signal: np.ndarray, present: np.ndarray, unusable: np.ndarray, repairs: dict,
           named: dict, derive_limb_leads: bool):
    """Absent limb leads, and held ones without signal (`unusable`: all NaN fed as zeros, or
    flat), derived from the usable ones; a derived lead is no longer said as zeroed or flat."""
    if not derive_limb_leads:
        return signal, present
    usable = present & ~unusable
    signal, now, derived = leads_lib.derive_limb_leads(signal, usable)
    if derived:
        rows = np.flatnonzero(now & ~usable)
        repairs["leads_derived"] = derived
        name_leads(named, "leads_derived", rows)
        for repair in ("all_nan_leads_zeroed", "flat_leads_kept"):
            left = tuple(x for x in named.pop(repair, ()) if x not in named["leads_derived"])
            repairs.pop(repair, None)
            if left:
                repairs[repair], named[repair] = len(left), left
    return signal, present | now
