"""EDF / EDF+ (Kemp & Olivan 2003), read by edfio (the [clinical] extra): the ECG signals.

    read(path) -> (rows, names, units, fs, meta, patient_key, dropped)   fs as stated, checked
                   by the caller (clinical_formats.py); dropped: the labels of the signals that
                   are not ECG leads

The physical values of each signal whose label, without EDF+'s signal type ("ECG V1" -> "V1"),
names an ECG lead (the alias table, leads.py), in its physical dimension; the rate samples per
data record / record duration, one for all of them; EDF+'s patient code (not "X") for hashing
only; no statements. Every other signal (respiration, EEG, SpO2, "EDF Annotations") is dropped
before any check: a Holter or sleep recording's unitless "Resp" at 25 Hz is no reason to refuse
its ECG.

Refused, each a RecordError, before edfio reads the data (`_check_edf_sizes`): a header-bytes
field other than 256 x (signals + 1) or fewer than -1 data records (unreadable), a file shorter
than its records (truncated_signal), more than limits.MAX_SAMPLES samples (too_large). After, of
the ECG signals: a physical or digital range that is empty (bad_units: no scale), no unit stated
(bad_units), different rates (bad_sampling_rate); anything edfio refuses.
"""
from __future__ import annotations

import os
import re
import warnings

import numpy as np

from crema_jax.data.reading import leads as leads_lib
from crema_jax.data.reading.ecg import RecordError, stated_unit
from crema_jax.data.reading.limits import MAX_SAMPLES

_EDF_TYPE = re.compile(r"^\s*(ECG|EKG)\s+", re.IGNORECASE)  # EDF+ label: "<type> <name>"


def _check_edf_sizes(path) -> None:
    """The EDF header's sizes against the file, before edfio reads (and allocates) its data
    (Kemp & Olivan 2003: "number of data records" at byte 236, ns at 252, each signal's samples
    per record after its 216 bytes of other fields; -1 records: still recording, the file's size
    tells). RecordError: a header-bytes field other than 256 x (ns + 1) (edfio read such a
    file's data from the wrong offset) or a record count below -1 (unreadable), fewer bytes than
    the records declared (truncated_signal), more than limits.MAX_SAMPLES samples (too_large: a
    sparse 4 GB file had been read into ~8 GB). Fields that do not parse are left to edfio."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(256)
        try:
            ns, records = int(head[252:256]), int(head[236:244])
            f.seek(256 + 216 * ns)
            spr = f.read(8 * ns)
            per_record = sum(int(spr[8 * k:8 * k + 8]) for k in range(ns))
            header_bytes = int(head[184:192])
        except ValueError:
            return
    if records < -1:
        raise RecordError(path, "unreadable", f"{path}: EDF header says {records} data records, "
                          "expected a count or -1 (a recording whose length is unknown)")
    if header_bytes != 256 * (ns + 1):
        raise RecordError(path, "unreadable", f"{path}: EDF header says {header_bytes} header "
                          f"bytes, expected 256 x (1 + {ns} signals) = {256 * (ns + 1)}")
    want = header_bytes + 2 * per_record * records
    if records >= 0 and size < want:
        # edfio reads a short file's complete data records with a warning only.
        raise RecordError(path, "truncated_signal", f"{path}: EDF file holds {size} bytes, its "
                          f"header declares {want}")
    if per_record <= 0:
        return  # no samples: edfio's to refuse
    if records < 0:
        records = (size - header_bytes) // (2 * per_record)
    if per_record * records > MAX_SAMPLES:
        raise RecordError(path, "too_large", f"{path}: EDF file of {records} data records x "
                          f"{per_record} samples, more than the {MAX_SAMPLES} samples a record is "
                          "read whole with")


def read(path):
    """(rows, names, units, fs, meta, patient_key, dropped) of the EDF file at `path`."""
    import edfio  # the [clinical] extra; only EDF files need it
    _check_edf_sizes(path)
    try:
        with warnings.catch_warnings():  # -1 records: edfio counts them, and says so twice
            warnings.filterwarnings("ignore", r".*(data records|data record at the end)",
                                    UserWarning)
            edf = edfio.read_edf(path, lazy_load_data=False)
        is_lead = [leads_lib.lead_index(_lead_label(s.label)) is not None for s in edf.signals]
        signals = [s for s, lead in zip(edf.signals, is_lead) if lead]
        dropped = [s.label.strip() for s, lead in zip(edf.signals, is_lead)
                   if not lead and s.label.strip() != "EDF Annotations"]
        for s in signals:  # the scale (pmax - pmin) / (dmax - dmin): edfio warns and goes on
            if s.physical_min == s.physical_max or s.digital_min == s.digital_max:
                raise RecordError(path, "bad_units", f"{path}: EDF signal {s.label!r} has "
                                  f"physical {s.physical_min:g}..{s.physical_max:g}, digital "
                                  f"{s.digital_min:g}..{s.digital_max:g}: expected two ranges "
                                  "that give a scale")
            stated_unit(path, s.physical_dimension, f"EDF signal {s.label!r} physical "
                        "dimension")
        rows = [np.asarray(s.data, np.float64) for s in signals]
    except (ValueError, OSError, EOFError, IndexError) as e:  # edfio: a short or bad file
        reason = "truncated_signal" if "size" in str(e) or "truncat" in str(e) else "unreadable"
        raise RecordError(path, reason, f"{path}: EDF file does not parse ({e})") from e
    rates = sorted({float(s.sampling_frequency) for s in signals})
    if len(rates) > 1:
        raise RecordError(path, "bad_sampling_rate", f"{path}: EDF ECG signals at {rates} Hz, "
                          "expected one rate")
    key = None
    try:
        key = edf.patient.code if edf.local_patient_identification.split(" ")[0] != "X" else None
    except (ValueError, AttributeError, IndexError):  # plain EDF: a free-text field, not read
        key = None
    return (rows, [_lead_label(s.label) for s in signals],
            [s.physical_dimension.strip() for s in signals], rates[0] if rates else None,
            {"statements": []}, key, dropped)


def _lead_label(label: str) -> str:
    """EDF+ "ECG V1" -> "V1" (other labels as they are, stripped)."""
    return _EDF_TYPE.sub("", label).strip()
