"""The exports of ECG management systems, each parsed from its standard's documented fields.

    parse(path) -> Parsed     the format detected by content (`detect`), never by extension
    parse(path, decode=False) the same meta and checks, but Philips XLI and SCP-ECG leave their
                              rhythm data coded (Parsed.signal None): their pure-Python decoders
                              are those files' cost, and an index needs the meta alone

- DICOM 12-lead / general ECG waveform ("DICM" at byte 128; pydicom): the first ORIGINAL
  multiplex group, sample * ChannelSensitivity * CorrectionFactor + ChannelBaseline (pydicom's
  waveform_array), the unit from ChannelSensitivityUnitsSequence (UCUM).
- HL7 aECG, FDA (XML root AnnotatedECG; defusedxml): the first series' sequenceSet,
  origin + scale * digits, rate 1 / the GLIST_TS increment.
- GE MUSE XML (XML root RestingECG; defusedxml): the Rhythm waveform, base64 int16 *
  LeadAmplitudeUnitsPerBit, rate SampleBase * 10^SampleExponent.
- EDF / EDF+ ("0       " and numeric header fields; edfio): the physical values of the signals
  labelled with a lead ("ECG V1").
- Philips (Sierra) XML (XML root restingecgdata; defusedxml, XLI decoded here): parsedwaveforms,
  (count - signaloffset) * resolution uV, XLI's residual limb leads rebuilt (philips_xml.py).
- SCP-ECG (Section 0 after the 6-byte preamble; ecgdatakit): Section 6's rhythm data x AVM nV,
  rate 1e6 / the sample interval in us, SCP lead codes (scp_ecg.py).

Lead names: DICOM's CID 3001 SCPECG codes, aECG's MDC_ECG_LEAD_*, MUSE's LeadID, EDF+'s
"ECG <lead>" labels, Philips' @leadlabels, SCP-ECG's lead codes; the alias table (leads.py)
then maps them. `Parsed.patient_key` is the file's patient identifier, for a salted hash only
(clinical.py): names, birth dates and the identifier itself never go into `meta`.

Failures raise RecordError: unknown_format, unreadable (the library refused the file),
truncated_signal, bad_shape (a DICOM channel count that contradicts its channel
definitions), bad_sampling_rate, bad_units (also an amplitude scale that is not a positive
finite number: ecg.positive_scale), unequal_lengths, too_large (an XML file over
MAX_XML_BYTES, a deflated DICOM inflating past MAX_INFLATED_DICOM_BYTES, a Philips XML or an EDF
header declaring more than limits.MAX_SAMPLES samples).
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import re
import warnings
import zlib
from xml.etree.ElementTree import ParseError

import numpy as np

from crema_jax.data.reading import philips_xml, safe_files, scp_ecg
from crema_jax.data.reading.ecg import (RecordError, check_sampling_rate, positive_scale,
                                        stated_unit)
from crema_jax.data.reading.limits import MAX_SAMPLES

HL7 = "{urn:hl7-org:v3}"
# The largest XML export parsed (~0.8 GB at its peak); a 10-s ECG is 0.1-1 MB, 15 min of 12 leads
# as aECG digits ~30 MB.
MAX_XML_BYTES = 32 << 20
# The most bytes a deflated DICOM file may inflate to (pydicom inflates it whole, before any
# field can be checked): 1 h of 12 leads of 16-bit samples at 500 Hz is ~43 MB.
MAX_INFLATED_DICOM_BYTES = 64 << 20
DEFLATED_DICOM = "1.2.840.10008.1.2.1.99"
SCPECG_LEADS = {"1": "I", "2": "II", **{str(k + 2): f"V{k}" for k in range(1, 7)}, "61": "III",
                "62": "aVR", "63": "aVL", "64": "aVF"}  # DICOM CID 3001, scheme SCPECG
MUSE_UNITS = {"MICROVOLTS": "uV", "MILLIVOLTS": "mV", "VOLTS": "V"}
_EDF_TYPE = re.compile(r"^\s*(ECG|EKG)\s+", re.IGNORECASE)  # EDF+ label: "<type> <name>"


@dataclasses.dataclass
class Parsed:
    signal: np.ndarray | None   # float64 (T, channels), physical values in `units`
    names: list[str]            # the channels' lead names as the file states them
    units: list[str]
    fs: float
    format: str
    meta: dict                  # exam_id, statements, age, sex: no patient identity
    patient_key: str | None     # the file's patient identifier, to be hashed


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


def _stacked(path, rows, fmt: str) -> np.ndarray:
    lengths = sorted({len(r) for r in rows})
    if not rows or lengths[0] == 0:
        raise RecordError(path, "no_signal", f"{path}: the {fmt} file holds no lead samples")
    if len(lengths) > 1:
        raise RecordError(path, "unequal_lengths", f"{path}: {fmt} leads hold {lengths} samples, "
                          "expected one length")
    return np.stack(rows, axis=1).astype(np.float64)


def _rate(path, fs, field: str) -> float:
    return check_sampling_rate(path, fs, f"{field} gives")


def _dicom(path) -> Parsed:
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
    names, units = [], []
    for ch in channels:
        source = ch.ChannelSourceSequence[0] if ch.get("ChannelSourceSequence") else None
        code = str(source.get("CodeValue", "")) if source else ""
        scheme = str(source.get("CodingSchemeDesignator", "")) if source else ""
        names.append(SCPECG_LEADS.get(code.rsplit("-", 1)[-1], "") if scheme == "SCPECG"
                     and code.startswith("5.6.3-9-") else
                     str(source.get("CodeMeaning", "")) if source else "")
        channel = names[-1] or len(names)
        if "ChannelSensitivity" not in ch or not ch.get("ChannelSensitivityUnitsSequence"):
            raise RecordError(path, "bad_units", f"{path}: channel {channel} has no "
                              "ChannelSensitivity and units, expected both")
        for field in ("ChannelSensitivity", "ChannelSensitivityCorrectionFactor"):
            if field in ch:  # pydicom's waveform_array multiplies the samples by both
                positive_scale(path, ch.get(field), f"DICOM channel {channel} {field}")
        units.append(stated_unit(path, ch.ChannelSensitivityUnitsSequence[0].get("CodeValue"),
                                 f"DICOM channel {channel} ChannelSensitivityUnitsSequence "
                                 "CodeValue"))
    signal = ds.waveform_array(index).astype(np.float64)
    statements = [str(a.UnformattedTextValue) for a in ds.get("WaveformAnnotationSequence", [])
                  if "UnformattedTextValue" in a]
    meta = {"exam_id": str(ds.get("AccessionNumber", "") or ds.get("StudyInstanceUID", "")),
            "statements": statements, "sex": str(ds.get("PatientSex", "")),
            "age": _dicom_age(str(ds.get("PatientAge", "")))}
    return Parsed(signal, names, units, _rate(path, group.get("SamplingFrequency"),
                                              "SamplingFrequency"), "dicom", meta,
                  str(ds.get("PatientID", "")) or None)


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
    """DICOM AS "061Y" -> 61 (years only; D/W/M ages are infants -> 0)."""
    match = re.fullmatch(r"(\d{3})([DWMY])", text.strip())
    return None if not match else (int(match.group(1)) if match.group(2) == "Y" else 0)


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


def _aecg(path) -> Parsed:
    root = _xml_root(path, "HL7 aECG")
    series = root.find(f"{HL7}component/{HL7}series")
    seq_set = None if series is None else series.find(f"{HL7}component/{HL7}sequenceSet")
    if seq_set is None:
        raise RecordError(path, "no_signal", f"{path}: HL7 aECG has no series/sequenceSet")
    fs, names, units, rows = None, [], [], []
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
            fs = _rate(path, 1.0 / step if step > 0 else None, "the GLIST_TS increment")
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
    return Parsed(_stacked(path, rows, "HL7 aECG"), names, units, fs, "aecg", meta, key)


def _muse(path) -> Parsed:
    root = _xml_root(path, "GE MUSE")
    wave = next((w for w in root.findall("Waveform")
                 if (w.findtext("WaveformType") or "").strip() == "Rhythm"), None)
    if wave is None:
        raise RecordError(path, "no_signal", f"{path}: GE MUSE XML has no Rhythm Waveform")
    try:
        fs = float(wave.findtext("SampleBase")) * 10.0 ** float(
            wave.findtext("SampleExponent") or 0)
    except (TypeError, ValueError):
        fs = None
    fs = _rate(path, fs, "SampleBase/SampleExponent")
    names, units, rows = [], [], []
    for lead in wave.findall("LeadData"):
        name = (lead.findtext("LeadID") or "").strip()
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
    demo = root.find("PatientDemographics")
    age = demo.findtext("PatientAge") if demo is not None else None
    meta = {"statements": [s for s in statements if s],
            "sex": (demo.findtext("Gender") or "") if demo is not None else "",
            "age": int(age) if age and age.strip().isdigit() else None}
    key = (demo.findtext("PatientID") or "").strip() if demo is not None else ""
    return Parsed(_stacked(path, rows, "GE MUSE"), names, units, fs, "muse", meta, key or None)


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


def _edf(path) -> Parsed:
    import edfio  # the [clinical] extra; only EDF files need it
    _check_edf_sizes(path)
    try:
        with warnings.catch_warnings():  # -1 records: edfio counts them, and says so twice
            warnings.filterwarnings("ignore", r".*(data records|data record at the end)",
                                    UserWarning)
            edf = edfio.read_edf(path, lazy_load_data=False)
        signals = [s for s in edf.signals if _lead_label(s.label)]
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
    return Parsed(_stacked(path, rows, "EDF"), [_lead_label(s.label) for s in signals],
                  [s.physical_dimension.strip() for s in signals],
                  _rate(path, rates[0] if rates else None, "samples per data record / duration"),
                  "edf", {"statements": []}, key)


def _lead_label(label: str) -> str:
    """EDF+ "ECG V1" -> "V1"; "EDF Annotations" and other signal types -> ""."""
    if label.strip() == "EDF Annotations":
        return ""
    return _EDF_TYPE.sub("", label).strip()
