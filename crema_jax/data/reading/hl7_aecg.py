"""HL7 aECG (HL7 v3 Annotated ECG, the FDA's submission format): the rhythm series' fields.

    read(path, root) -> (rows, names, units, fs, meta, patient_key, dropped)
                        root: the parsed XML's (clinical_formats.py); dropped: the codes of
                        the sequences that are not ECG leads, left unread

The first series' sequenceSet: each lead's SLIST_PQ as origin + scale * digits, its unit the
scale's (an origin in another unit, or a non-zero origin without one, is refused); the rate
1 / the increment of the TIME_ sequence's GLIST_TS (s or ms), checked where it is read; lead
names the MDC_ECG_LEAD_* codes without the prefix (a sequence whose code names no ECG lead,
leads.py, is dropped before its scale and digits are read); statements the
MDC_ECG_INTERPRETATION_STATEMENT annotations; exam_id the document id; the trial subject's id is
returned for hashing only.
"""
from __future__ import annotations

import numpy as np

from crema_jax.data.reading import leads as leads_lib
from crema_jax.data.reading.ecg import (RecordError, check_sampling_rate, positive_scale,
                                        stated_unit)

HL7 = "{urn:hl7-org:v3}"


def read(path, root):
    """(rows, names, units, fs, meta, patient_key, dropped) of the aECG document `root`."""
    series = root.find(f"{HL7}component/{HL7}series")
    seq_set = None if series is None else series.find(f"{HL7}component/{HL7}sequenceSet")
    if seq_set is None:
        raise RecordError(path, "no_signal", f"{path}: HL7 aECG has no series/sequenceSet")
    fs, names, units, rows, dropped = None, [], [], [], []
    for seq in seq_set.iter(f"{HL7}sequence"):
        code = (seq.find(f"{HL7}code").get("code", "") if seq.find(f"{HL7}code") is not None
                else "")
        value = seq.find(f"{HL7}value")
        if value is None:
            continue
        if code.startswith("TIME_"):
            inc = value.find(f"{HL7}increment")
            step = float(inc.get("value", "nan")) if inc is not None else float("nan")
            step *= {"s": 1.0, "ms": 1e-3}.get(inc.get("unit", "s") if inc is not None else "s",
                                               float("nan"))
            fs = check_sampling_rate(path, 1.0 / step if step > 0 else None,
                                     "the GLIST_TS increment gives")
            continue
        if leads_lib.lead_index(code.removeprefix("MDC_ECG_LEAD_")) is None:
            dropped.append(code)  # e.g. a respiration or pacing channel
            continue
        origin, scale = value.find(f"{HL7}origin"), value.find(f"{HL7}scale")
        digits = value.find(f"{HL7}digits")
        if scale is None or digits is None:
            raise RecordError(path, "bad_units", f"{path}: aECG lead {code} has no scale or "
                              "digits, expected an SLIST_PQ")
        unit = stated_unit(path, scale.get("unit"), f"aECG lead {code} scale unit")
        gain = positive_scale(path, scale.get("value"), f"aECG lead {code} scale value")
        try:
            samples = np.array((digits.text or "").split(), np.float64)
            offset = float(origin.get("value", 0) if origin is not None else 0)
        except (TypeError, ValueError) as e:
            raise RecordError(path, "unreadable", f"{path}: aECG lead {code}: {e}") from e
        # An HL7 quantity without a unit is dimensionless: only a zero origin needs none.
        offset_unit = origin.get("unit") if origin is not None else None
        if offset_unit != unit and (offset_unit is not None or offset != 0):
            raise RecordError(path, "bad_units", f"{path}: aECG lead {code}: origin "
                              f"{offset:g} in {offset_unit or 'no unit'}, scale in {unit!r}, "
                              "expected one unit")
        row = gain * samples + offset
        names.append(code.removeprefix("MDC_ECG_LEAD_"))
        units.append(unit)
        rows.append(row)
    if fs is None:
        raise RecordError(path, "bad_sampling_rate", f"{path}: aECG has no TIME_ sequence, "
                          "expected a GLIST_TS increment")
    statements = [v.text.strip() for a in root.iter(f"{HL7}annotation")
                  if (c := a.find(f"{HL7}code")) is not None
                  and c.get("code") == "MDC_ECG_INTERPRETATION_STATEMENT"
                  and (v := a.find(f"{HL7}value")) is not None and v.text and v.text.strip()]
    exam = root.find(f"{HL7}id")
    subject = root.find(f".//{HL7}trialSubject/{HL7}id")
    sex = root.find(f".//{HL7}subjectDemographicPerson/{HL7}administrativeGenderCode")
    meta = {"exam_id": "" if exam is None else exam.get("extension") or exam.get("root", ""),
            "statements": statements, "sex": "" if sex is None else sex.get("code", "")}
    key = None if subject is None else subject.get("extension") or subject.get("root")
    return rows, names, units, fs, meta, key, dropped

