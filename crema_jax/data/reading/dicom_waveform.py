"""DICOM 12-lead / general ECG waveform files, read by pydicom (the [clinical] extra).

    read(path) -> (signal, names, units, fs, meta, patient_key, dropped)   fs as stated,
                   checked by the caller (clinical_formats.py); dropped: the channels that are
                   not ECG leads, left out of signal

The first ORIGINAL multiplex group of WaveformSequence: sample * ChannelSensitivity *
ChannelSensitivityCorrectionFactor + ChannelBaseline (pydicom's waveform_array's formula),
float64 (T, leads); each channel's unit from ChannelSensitivityUnitsSequence (UCUM); lead names from
CID 3001's SCPECG codes ("5.6.3-9-<n>"), else the code meaning; a channel whose name is no
ECG lead (leads.py: a respiration or pacing channel) is dropped before its sensitivity and
units are checked; statements from the annotations' UnformattedTextValue; exam_id the
AccessionNumber (else StudyInstanceUID), PatientAge ("061Y", "006M") in completed years
(demographics.age_in_years). PatientID is returned for hashing only.

Refused, each a RecordError: a file pydicom cannot read (unreadable), no ORIGINAL group
(no_signal), WaveformData shorter than its samples x channels x bits (truncated_signal), a
NumberOfWaveformChannels other than the ChannelDefinitionSequence's count (bad_shape: pydicom
would reshape by it), a channel without sensitivity and units or with a scale that is not a
positive finite number (bad_units), a deflated file inflating past MAX_INFLATED_DICOM_BYTES
(too_large: pydicom inflates it whole before any field can be checked).
"""
from __future__ import annotations

import re
import zlib

import numpy as np

from crema_jax.data.reading import leads as leads_lib
from crema_jax.data.reading.demographics import age_in_years
from crema_jax.data.reading.ecg import RecordError, positive_scale, stated_unit

# The most bytes a deflated DICOM file may inflate to (pydicom inflates it whole, before any
# field can be checked): 1 h of 12 leads of 16-bit samples at 500 Hz is ~43 MB.
MAX_INFLATED_DICOM_BYTES = 64 << 20
DEFLATED_DICOM = "1.2.840.10008.1.2.1.99"
SCPECG_LEADS = {"1": "I", "2": "II", **{str(k + 2): f"V{k}" for k in range(1, 7)}, "61": "III",
                "62": "aVR", "63": "aVL", "64": "aVF"}  # DICOM CID 3001, scheme SCPECG


def read(path):
    """(signal, names, units, fs, meta, patient_key, dropped) of the DICOM file at `path`."""
    import pydicom  # the [clinical] extra; only DICOM files need it
    from pydicom.errors import InvalidDicomError
    try:
        _check_inflated_size(path, pydicom.filereader.read_file_meta_info(path))
        ds = pydicom.dcmread(path)
        groups = list(ds.get("WaveformSequence", []))
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError) as e:
        raise RecordError(path, "unreadable", f"{path}: DICOM file does not parse ({e})") from e
    index = next((i for i, g in enumerate(groups)
                  if g.get("WaveformOriginality", "ORIGINAL") == "ORIGINAL"), None)
    if index is None:
        raise RecordError(path, "no_signal", f"{path}: DICOM file has no original "
                          "WaveformSequence item")
    group = groups[index]
    channels = list(group.get("ChannelDefinitionSequence", []))
    want = (int(group.get("NumberOfWaveformSamples", 0)) * len(channels)
            * int(group.get("WaveformBitsAllocated", 16)) // 8)
    if not channels or len(group.get("WaveformData", b"")) < want:
        raise RecordError(path, "truncated_signal", f"{path}: WaveformData holds "
                          f"{len(group.get('WaveformData', b''))} bytes, expected {want}")
    declared = group.get("NumberOfWaveformChannels")
    if declared is None or int(declared) != len(channels):
        # pydicom's waveform_array reshapes WaveformData by NumberOfWaveformChannels: 24 over 12
        # channel definitions (with half the samples) read every other sample as another lead.
        raise RecordError(path, "bad_shape", f"{path}: NumberOfWaveformChannels is {declared}, "
                          f"ChannelDefinitionSequence defines {len(channels)} channels; "
                          "expected one count")
    names, units, kept, dropped = [], [], [], []
    for number, ch in enumerate(channels, 1):
        source = ch.ChannelSourceSequence[0] if ch.get("ChannelSourceSequence") else None
        code = str(source.get("CodeValue", "")) if source else ""
        scheme = str(source.get("CodingSchemeDesignator", "")) if source else ""
        channel = (SCPECG_LEADS.get(code.rsplit("-", 1)[-1], "") if scheme == "SCPECG"
                   and code.startswith("5.6.3-9-") else
                   str(source.get("CodeMeaning", "")) if source else "")
        if leads_lib.lead_index(channel) is None:
            dropped.append(channel or f"channel {number}")
            continue
        names.append(channel)
        kept.append(number - 1)
        if "ChannelSensitivity" not in ch or not ch.get("ChannelSensitivityUnitsSequence"):
            raise RecordError(path, "bad_units", f"{path}: channel {channel} has no "
                              "ChannelSensitivity and units, expected both")
        for field in ("ChannelSensitivity", "ChannelSensitivityCorrectionFactor"):
            if field in ch:  # pydicom's waveform_array multiplies the samples by both
                positive_scale(path, ch.get(field), f"DICOM channel {channel} {field}")
        units.append(stated_unit(path, ch.ChannelSensitivityUnitsSequence[0].get("CodeValue"),
                                 f"DICOM channel {channel} ChannelSensitivityUnitsSequence "
                                 "CodeValue"))
    signal = _lead_samples(ds, index, channels, kept)
    statements = [str(a.UnformattedTextValue) for a in ds.get("WaveformAnnotationSequence", [])
                  if "UnformattedTextValue" in a]
    meta = {"exam_id": str(ds.get("AccessionNumber", "") or ds.get("StudyInstanceUID", "")),
            "statements": statements, "sex": str(ds.get("PatientSex", "")),
            "age": _dicom_age(str(ds.get("PatientAge", "")))}
    return (signal, names, units, group.get("SamplingFrequency"), meta,
            str(ds.get("PatientID", "")) or None, dropped)


def _lead_samples(ds, index: int, channels: list, columns: list[int]) -> np.ndarray:
    """float64 (T, leads): the stored samples of `columns` (pydicom's multiplex_array, raw) as
    sample * ChannelSensitivity * ChannelSensitivityCorrectionFactor + ChannelBaseline, pydicom's
    waveform_array's formula, applied to the leads alone (another channel's fields, which
    waveform_array would need as numbers, are never read)."""
    from pydicom.waveforms import multiplex_array
    raw = multiplex_array(ds, index, as_raw=True)[:, columns].astype(np.float64)
    for column, ch in enumerate(channels[k] for k in columns):
        raw[:, column] *= (float(ch.get("ChannelSensitivity", 1.0))
                           * float(ch.get("ChannelSensitivityCorrectionFactor", 1.0)))
        raw[:, column] += float(ch.get("ChannelBaseline", 0.0))
    return raw


def _check_inflated_size(path, file_meta) -> None:
    """too_large when a deflated file's body inflates past MAX_INFLATED_DICOM_BYTES: counted in
    bounded pieces, the inflated bytes never held."""
    if str(file_meta.get("TransferSyntaxUID", "")) != DEFLATED_DICOM:
        return
    # Preamble (128) + "DICM" (4) + the group-length element (12) + the group it counts.
    offset = 144 + int(file_meta.get("FileMetaInformationGroupLength", 0))
    inflate, total = zlib.decompressobj(-zlib.MAX_WBITS), 0
    with open(path, "rb") as f:
        f.seek(offset)
        while total <= MAX_INFLATED_DICOM_BYTES:
            data = inflate.unconsumed_tail or f.read(1 << 16)
            if not data:
                break
            total += len(inflate.decompress(data, 1 << 20))
            if inflate.eof:
                break
    if total > MAX_INFLATED_DICOM_BYTES:
        raise RecordError(path, "too_large", f"{path}: deflated DICOM inflates past "
                          f"{MAX_INFLATED_DICOM_BYTES} bytes, expected an ECG's few MB")


def _dicom_age(text: str):
    """DICOM AS "061Y" -> 61, "030M" -> 2, "006M" -> 0: completed years (None: no age)."""
    match = re.fullmatch(r"(\d{3})([DWMY])", text.strip())
    return None if not match else age_in_years(match.group(1), match.group(2))

