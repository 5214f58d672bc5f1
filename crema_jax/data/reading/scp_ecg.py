"""SCP-ECG (EN 1064 / ISO 11073-91064: European carts' binary export), short-term rhythm data.

    looks_like(head) -> bool                     the record's first bytes
    read(path) -> (rows, names, fs, meta, key)   rows in uV per lead, before stacking

The decoding (Section 2's Huffman tables or the standard's default one, first or second
differences, reference-beat subtraction with Sections 4 and 5) is `ecgdatakit`'s SCP-ECG parser
(Apache-2.0, the [clinical] extra), the one maintained Python decoder of the format; it is used
for this format alone (its EDF reader rounds rates to integers and reads a truncated file with a
warning only, so EDF stays on edfio). What is read from its record, by the standard's fields:
- Section 3: the leads and their SCP lead codes (1 I, 2 II, 3-8 V1-V6, 61 III, 62 aVR,
  63 aVL, 64 aVF), names as the parser normalises them;
- Section 6: samples x AVM (nV per count, as uV: AVM / 1000); the rate 1e6 / the sample
  interval in us (not the parser's rounded integer rate);
- Section 1: patient id (tag 2, for hashing only), age (tag 4), sex (tag 8); Sections 8/11:
  the interpretation statements.
Refused, each a RecordError: a file shorter than the record size it declares
(truncated_signal, checked before the parser runs), a CRC mismatch (unreadable: the standard's
CRC-CCITT guards every section, so a mismatch is damage), anything the parser calls corrupt or
unsupported (unreadable; e.g. bimodal compression, long-term Section 12 data), an AVM of 0
(bad_units).
"""
from __future__ import annotations

import os
import warnings

import numpy as np

from crema_jax.data.reading.ecg import RecordError


def looks_like(head: bytes) -> bool:
    """Section 0 right after the 6-byte preamble (id 0 at byte 8), its first pointer naming
    Section 0 itself at byte 7 (1-based), as every SCP-ECG record starts."""
    if len(head) < 32:
        return False
    u16, u32 = (lambda p: int.from_bytes(head[p:p + 2], "little"),
                lambda p: int.from_bytes(head[p:p + 4], "little"))
    return u16(8) == 0 and u16(22) == 0 and u32(28) == 7 and u32(10) >= 26


def read(path) -> tuple[list[np.ndarray], list[str], float, dict, str | None]:
    import ecgdatakit  # the [clinical] extra; only SCP-ECG files need it
    from ecgdatakit.parsing.parsers.scp_ecg import SCPECGParser

    with open(path, "rb") as f:
        declared = int.from_bytes(f.read(6)[2:6], "little")
    size = os.path.getsize(path)
    if size < declared:
        raise RecordError(path, "truncated_signal", f"{path}: SCP-ECG file holds {size} bytes, "
                          f"its record size says {declared}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            record = SCPECGParser().parse(path)
        except (ecgdatakit.ECGDataKitError, ValueError, OverflowError) as e:
            raise RecordError(path, "unreadable", f"{path}: SCP-ECG file does not decode "
                              f"({type(e).__name__}: {e})") from e
    bad_crc = [str(w.message) for w in caught if issubclass(w.category,
                                                            ecgdatakit.ChecksumWarning)]
    if bad_crc:
        raise RecordError(path, "unreadable", f"{path}: {bad_crc[0]} (a damaged file)")
    interval = record.raw_metadata.get("rhythm_sample_interval_us") or 0
    rows, names = [], []
    for lead in record.leads:
        if lead.adc_resolution_unit != "nV" or lead.adc_resolution <= 0:
            raise RecordError(path, "bad_units", f"{path}: SCP-ECG lead {lead.label}: Section 6 "
                              "amplitude value multiplier is 0, expected nV per count")
        rows.append(np.asarray(lead.samples, np.float64) * (lead.adc_resolution / 1000.0))
        names.append(lead.label)
    statements = [" ".join(p for p in pair if p) for pair in
                  (record.interpretation.statements if record.interpretation else [])]
    patient = record.patient
    meta = {"statements": [s for s in statements if s],
            "sex": patient.sex if patient.sex in ("M", "F") else "", "age": patient.age}
    return rows, names, 1e6 / interval if interval else float("nan"), meta, (
        patient.patient_id.strip() or None)
