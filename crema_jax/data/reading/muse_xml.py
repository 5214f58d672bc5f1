"""GE MUSE XML (root RestingECG): the Rhythm waveform's fields.

    read(path, root) -> (rows, names, units, fs, meta, patient_key, dropped)
                        root: the parsed XML's (clinical_formats.py); dropped: the LeadIDs
                        that are not ECG leads (leads.py), left unread

The Waveform whose WaveformType is Rhythm: each LeadData's WaveFormData, base64 little-endian
int16 (the first LeadSampleCountTotal samples) x LeadAmplitudeUnitsPerBit, in
LeadAmplitudeUnits (MICROVOLTS, MILLIVOLTS or VOLTS); the rate SampleBase * 10^SampleExponent,
checked before the leads are read; lead names the LeadIDs; statements
Diagnosis/DiagnosisStatement/StmtText; PatientDemographics' PatientAge in its AgeUnits (YEARS
when absent; MONTHS, WEEKS, DAYS, HOURS: completed years, demographics.age_in_years) and
Gender, and its PatientID for hashing only. A LeadData whose LeadID is not an ECG lead is
dropped before its units and samples are checked.
"""
from __future__ import annotations

import base64
import binascii

import numpy as np

from crema_jax.data.reading import leads as leads_lib
from crema_jax.data.reading.demographics import age_in_years
from crema_jax.data.reading.ecg import RecordError, check_sampling_rate, positive_scale

MUSE_UNITS = {"MICROVOLTS": "uV", "MILLIVOLTS": "mV", "VOLTS": "V"}


def read(path, root):
    """(rows, names, units, fs, meta, patient_key, dropped) of the MUSE document `root`."""
    wave = next((w for w in root.findall("Waveform")
                 if (w.findtext("WaveformType") or "").strip() == "Rhythm"), None)
    if wave is None:
        raise RecordError(path, "no_signal", f"{path}: GE MUSE XML has no Rhythm Waveform")
    try:
        fs = float(wave.findtext("SampleBase")) * 10.0 ** float(
            wave.findtext("SampleExponent") or 0)
    except (TypeError, ValueError):
        fs = None
    fs = check_sampling_rate(path, fs, "SampleBase/SampleExponent gives")
    names, units, rows, dropped = [], [], [], []
    for lead in wave.findall("LeadData"):
        name = (lead.findtext("LeadID") or "").strip()
        if leads_lib.lead_index(name) is None:  # a pacing or respiration channel: not read
            dropped.append(name)
            continue
        unit = MUSE_UNITS.get((lead.findtext("LeadAmplitudeUnits") or "").strip().upper())
        if unit is None:
            raise RecordError(path, "bad_units", f"{path}: MUSE lead {name}: LeadAmplitudeUnits "
                              f"is {lead.findtext('LeadAmplitudeUnits')!r}, expected MICROVOLTS, "
                              "MILLIVOLTS or VOLTS")
        gain = positive_scale(path, lead.findtext("LeadAmplitudeUnitsPerBit"),
                              f"MUSE lead {name} LeadAmplitudeUnitsPerBit")
        try:
            raw = base64.b64decode(lead.findtext("WaveFormData") or "", validate=False)
        except (binascii.Error, ValueError) as e:
            raise RecordError(path, "unreadable", f"{path}: MUSE lead {name}: {e}") from e
        count = (lead.findtext("LeadSampleCountTotal") or "").strip()
        if count and not count.isdigit():
            raise RecordError(path, "unreadable", f"{path}: MUSE lead {name}: "
                              f"LeadSampleCountTotal {count!r}, expected a sample count")
        if len(raw) % 2 or (count and len(raw) < 2 * int(count)):
            raise RecordError(path, "truncated_signal", f"{path}: MUSE lead {name} holds "
                              f"{len(raw)} bytes, expected {2 * int(count or 0)}")
        samples = np.frombuffer(raw, "<i2")[:int(count)] if count else np.frombuffer(raw, "<i2")
        names.append(name)
        units.append(unit)
        rows.append(samples * gain)
    statements = [" ".join((t.text or "").strip() for t in s.findall("StmtText"))
                  for s in root.findall("Diagnosis/DiagnosisStatement")]

    def demo(field: str) -> str:
        return (root.findtext(f"PatientDemographics/{field}") or "").strip()
    meta = {"statements": [s for s in statements if s], "sex": demo("Gender"),
            "age": age_in_years(demo("PatientAge"), demo("AgeUnits") or "YEARS")}
    key = demo("PatientID")
    return rows, names, units, fs, meta, key or None, dropped

