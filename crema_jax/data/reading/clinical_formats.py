"""The exports of ECG management systems: each format detected by content, read by its module.

    parse(path) -> Parsed     the format detected by content (`detect`), never by extension
    parse(path, decode=False) the same meta and checks, but Philips XLI and SCP-ECG leave their
                              rhythm data coded (Parsed.signal None): their pure-Python decoders
                              are those files' cost, and an index needs the meta alone

One module per format, each reading its standard's documented fields (its docstring says which):
- DICOM 12-lead / general ECG waveform ("DICM" at byte 128; pydicom): dicom_waveform.py.
- HL7 aECG, FDA (XML root AnnotatedECG; defusedxml): hl7_aecg.py.
- GE MUSE XML (XML root RestingECG; defusedxml): muse_xml.py.
- EDF / EDF+ ("0       " and numeric header fields; edfio): edf_ecg.py.
- Philips (Sierra) XML (XML root restingecgdata; defusedxml, XLI decoded there): philips_xml.py.
- SCP-ECG (Section 0 after the 6-byte preamble; ecgdatakit): scp_ecg.py.
What they share is here: the XML parse (`_xml_root`: defusedxml, at most MAX_XML_BYTES), the
leads' rows stacked into one signal (`_stacked`) and the rate checked where a module leaves it.

Lead names: DICOM's CID 3001 SCPECG codes, aECG's MDC_ECG_LEAD_*, MUSE's LeadID, EDF+'s
"ECG <lead>" labels, Philips' @leadlabels, SCP-ECG's lead codes; the alias table (leads.py)
then maps them. A channel that names no ECG lead (a respiration, pacing or EEG channel of a
Holter or sleep export) is dropped by the DICOM, aECG, MUSE and EDF readers before its units,
scale, rate or length are checked, and listed in `Parsed.dropped` (clinical.py counts it in the
record's repairs as leads_dropped); a file with no lead left is no_signal. Philips and SCP-ECG
leads share one scale and rate, and pass their names to canonical_ecg, which drops the same
channels. `Parsed.patient_key` is the file's patient identifier, for a salted hash only
(clinical.py): names, birth dates and the identifier itself never go into `meta`.

Failures raise RecordError: unknown_format, unreadable (the library refused the file),
truncated_signal, bad_shape (a DICOM channel count that contradicts its channel
definitions), bad_sampling_rate, bad_units (also an amplitude scale that is not a positive
finite number: ecg.positive_scale), unequal_lengths, too_large (an XML file over
MAX_XML_BYTES, a deflated DICOM inflating past dicom_waveform.MAX_INFLATED_DICOM_BYTES, a
Philips XML or an EDF header declaring more than limits.MAX_SAMPLES samples).
"""
from __future__ import annotations

import dataclasses
import os
import re
from xml.etree.ElementTree import ParseError

import numpy as np

from crema_jax.data.reading import (dicom_waveform, edf_ecg, hl7_aecg, muse_xml, philips_xml,
                                    safe_files, scp_ecg)
from crema_jax.data.reading import leads as leads_lib
from crema_jax.data.reading.ecg import RecordError, check_sampling_rate

# The largest XML export parsed (~0.8 GB at its peak); a 10-s ECG is 0.1-1 MB, 15 min of 12 leads
# as aECG digits ~30 MB.
MAX_XML_BYTES = 32 << 20


@dataclasses.dataclass
class Parsed:
    signal: np.ndarray | None   # float64 (T, channels), physical values in `units`
    names: list[str]            # the channels' lead names as the file states them
    units: list[str]
    fs: float
    format: str
    meta: dict                  # exam_id, statements, age, sex: no patient identity
    patient_key: str | None     # the file's patient identifier, to be hashed
    dropped: list[str] = dataclasses.field(default_factory=list)  # channels that are no lead


def detect(path) -> str | None:
    """"dicom", "aecg", "muse", "edf", "philips", "scp" or None, from the file's first bytes."""
    try:  # opened without blocking: a FIFO in an export folder hung the index
        with safe_files.open_regular(path) as f:
            head = f.read(4096)
    except safe_files.NotRegularFileError as err:
        raise RecordError(path, "not_a_regular_file", str(err)) from None
    if head[128:132] == b"DICM":
        return "dicom"
    if head[:8] == b"0       " and len(head) >= 256 and head[184:192].strip().isdigit():
        return "edf"
    if scp_ecg.looks_like(head):
        return "scp"
    text = head.decode("latin-1")
    root = re.search(r"<(?!\?|!)([A-Za-z_][\w.-]*:)?([A-Za-z_][\w.-]*)", text)
    return {"AnnotatedECG": "aecg", "RestingECG": "muse", "restingecgdata": "philips"}.get(
        root.group(2) if root else "")


def parse(path, *, decode: bool = True) -> Parsed:
    fmt = detect(path)
    if fmt is None:
        raise RecordError(path, "unknown_format", f"{path}: not a DICOM waveform, HL7 aECG, "
                          "GE MUSE XML, Philips XML, SCP-ECG or EDF file (detected by content)")
    try:
        if fmt in ("philips", "scp"):
            return (_philips if fmt == "philips" else _scp)(str(path), decode)
        return {"dicom": _dicom, "aecg": _aecg, "muse": _muse, "edf": _edf}[fmt](str(path))
    except (RecordError, OSError):
        raise
    except Exception as e:  # noqa: BLE001 - a library failing on a file it cannot read
        # (pydicom on a comma decimal or a flipped header byte, edfio on a 0-s data record):
        # that file is a skip with its reason, never the end of an index or a run.
        raise RecordError(path, "unreadable", f"{path}: the {fmt} file does not parse "
                          f"({type(e).__name__}: {e})") from e


def _some_lead(path, names, dropped, fmt: str) -> None:
    """no_signal when every channel of the file was dropped as no ECG lead."""
    if dropped and not names:
        raise RecordError(path, "no_signal", f"{path}: the {fmt} file holds no ECG lead: its "
                          f"channels {dropped} name none of {list(leads_lib.LEADS)} (leads.py)")


def _stacked(path, rows, fmt: str, names=(), dropped=()) -> np.ndarray:
    _some_lead(path, names, dropped, fmt)
    lengths = sorted({len(r) for r in rows})
    if not rows or lengths[0] == 0:
        raise RecordError(path, "no_signal", f"{path}: the {fmt} file holds no lead samples")
    if len(lengths) > 1:
        raise RecordError(path, "unequal_lengths", f"{path}: {fmt} leads hold {lengths} samples, "
                          "expected one length")
    return np.stack(rows, axis=1).astype(np.float64)


def _rate(path, fs, field: str) -> float:
    return check_sampling_rate(path, fs, f"{field} gives")


def _xml_root(path, fmt: str):
    # defusedxml (the [clinical] extra) refuses entity expansion and external references.
    from defusedxml import DefusedXmlException, ElementTree
    size = os.path.getsize(path)
    if size > MAX_XML_BYTES:  # a parsed tree takes ~25x its file's bytes
        raise RecordError(path, "too_large", f"{path}: {fmt} XML of {size} bytes, expected at "
                          f"most {MAX_XML_BYTES} (a 10-s ECG is 0.1-1 MB)")
    try:
        return ElementTree.parse(path).getroot()
    except DefusedXmlException as e:
        raise RecordError(path, "unreadable", f"{path}: {fmt} XML refused ({e})") from e
    except (ParseError, ValueError) as e:  # ParseError: malformed or truncated
        raise RecordError(path, "unreadable", f"{path}: {fmt} XML does not parse ({e})") from e


def _dicom(path) -> Parsed:
    signal, names, units, fs, meta, key, dropped = dicom_waveform.read(path)
    _some_lead(path, names, dropped, "DICOM")
    return Parsed(signal, names, units, _rate(path, fs, "SamplingFrequency"), "dicom", meta, key,
                  dropped)


def _aecg(path) -> Parsed:
    rows, names, units, fs, meta, key, dropped = hl7_aecg.read(path, _xml_root(path, "HL7 aECG"))
    return Parsed(_stacked(path, rows, "HL7 aECG", names, dropped), names, units, fs, "aecg",
                  meta, key, dropped)


def _muse(path) -> Parsed:
    rows, names, units, fs, meta, key, dropped = muse_xml.read(path, _xml_root(path, "GE MUSE"))
    return Parsed(_stacked(path, rows, "GE MUSE", names, dropped), names, units, fs, "muse",
                  meta, key, dropped)


def _edf(path) -> Parsed:
    rows, names, units, fs, meta, key, dropped = edf_ecg.read(path)
    return Parsed(_stacked(path, rows, "EDF", names, dropped), names, units,
                  _rate(path, fs, "samples per data record / duration"), "edf", meta, key,
                  dropped)


def _philips(path, decode: bool) -> Parsed:
    root = _xml_root(path, "Philips")
    rows, names, uv_per_count, fs = philips_xml.leads(path, root, decode=decode)
    meta, key = philips_xml.details(root)
    signal = None if rows is None else _stacked(path, rows, "Philips XML") * uv_per_count
    return Parsed(signal, names, ["uV"] * len(names), _rate(path, fs, "samplespersecond"),
                  "philips", meta, key)


def _scp(path, decode: bool) -> Parsed:
    if not decode:
        meta, key = scp_ecg.read_meta(path)
        return Parsed(None, [], [], float("nan"), "scp", meta, key)
    rows, names, fs, meta, key = scp_ecg.read(path)
    return Parsed(_stacked(path, rows, "SCP-ECG"), names, ["uV"] * len(names),
                  _rate(path, fs, "the Section 6 sample interval"), "scp", meta, key)
