"""Writes hospital ECG exports from known signals (a helper module, not a test file).

Each writer follows its standard's documented fields and shares no code with the readers, so a
read-back that matches is a check against the standard, not against ourselves:
- DICOM 12-lead ECG waveform (PS3.3 A.34.3 / C.10.9 Waveform module): interleaved int16 samples,
  physical = sample * ChannelSensitivity * ChannelSensitivityCorrectionFactor (ChannelBaseline
  0) in the ChannelSensitivityUnitsSequence's UCUM unit; leads coded in CID 3001's SCPECG scheme
  (5.6.3-9-1 I, -2 II, -3..-8 V1..V6, -61 III, -62 aVR, -63 aVL, -64 aVF).
- HL7 aECG (HL7 v3 Annotated ECG, FDA): SLIST_PQ digits, physical = origin + scale * digit;
  the time axis a GLIST_TS (head, increment); leads MDC_ECG_LEAD_*.
- GE MUSE XML (RestingECG export): base64 little-endian int16 per lead, LeadAmplitudeUnitsPerBit
  in LeadAmplitudeUnits, rate SampleBase * 10^SampleExponent; 8 recorded leads.
- EDF+ (Kemp & Olivan 2003): a 256-byte header, 256 bytes per signal, int16 data records;
  physical = (digital - dmin) * (pmax - pmin) / (dmax - dmin) + pmin.
- Philips (Sierra) XML, schema 1.04.01: parsedwaveforms lead after lead, @resolution uV per
  count, @samplespersecond, @durationperchannel in ms, @leadlabels; XLI-compressed as the
  sierra-ecg-tools documentation describes the carts' format (one chunk per lead: an 8-byte
  header, int32 size and int16 first second-difference; 10-bit LZW codes, MSB first; the
  16-bit second differences + 64 stored high bytes first, then low bytes), III, aVR, aVL and aVF
  stored as residuals against I and II.
- SCP-ECG (EN 1064, version 2.0): a CRC-CCITT and the record size, then sections of a 16-byte
  header (CRC, id, length, versions); Section 0 points at Sections 0-11 (1-based offsets),
  Section 1 holds tags (0 last name, 1 first name, 2 patient id, 4 age, 8 sex, 255 end),
  Section 3 the leads (start, end, SCP lead code), Section 6 the rhythm data: AVM in nV per
  count, the sample interval in us, second differences coded with the standard's default
  Huffman table (Section 2 = 19999: 0 -> "0", +-m for m <= 8 -> m ones, "0", a sign bit; else
  "1111111110" + 8 bits or "1111111111" + 16 bits), or plain int16 amplitudes without
  Section 2; Section 8 the statements.

Every writer quantises the signal; `quantised(...)` returns the exact mV values a correct reader
must give back. `extra` (DICOM, aECG, MUSE, EDF) adds channels that are not ECG leads, as Holter
and sleep exports carry them (a respiration or pacing trace), each unlike a lead in every field
a lead is checked by (`non_ecg_channel`); `sex` and `age` are the patient fields as the format
spells them.
"""
from __future__ import annotations

import base64
import binascii
import pathlib

import numpy as np

LEADS = ("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
PATIENT_NAME = "Quixote^Dulcinea"
PATIENT_ID = "MRN-99417"
STATEMENTS = ("Sinus rhythm", "Atrial fibrillation with rapid ventricular response")
DICOM_UV_PER_BIT = 2.5
AECG_UV_PER_DIGIT = 5.0
MUSE_UV_PER_BIT = 4.88
SCPECG_CODES = {"I": 1, "II": 2, **{f"V{k}": k + 2 for k in range(1, 7)}, "III": 61, "aVR": 62,
                "aVL": 63, "aVF": 64}
MUSE_LEADS = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")


def non_ecg_channel(samples: int) -> np.ndarray:
    """An extra channel's int16 counts: a quarter of the leads' samples, a slow ramp."""
    return (np.arange(max(samples // 4, 1)) % 200 - 100).astype(np.int16)


def quantised(signal_mv: np.ndarray, uv_per_bit: float) -> np.ndarray:
    """(leads, T) mV -> the int16 counts a writer stores at `uv_per_bit`."""
    return np.clip(np.round(signal_mv * 1000.0 / uv_per_bit), -32768, 32767).astype(np.int16)


def write_dicom(path, signal_mv: np.ndarray, fs: float, *, patient_name=PATIENT_NAME,
                patient_id=PATIENT_ID, statements=STATEMENTS, deflated=False, extra=(),
                sex=None, age=None) -> np.ndarray:
    """12-lead ECG waveform object (deflated: in the Deflated Explicit VR Little Endian transfer
    syntax); returns the stored values in mV. extra: channels after the leads, named by their
    CodeMeaning (scheme MDC), with no ChannelSensitivity or units; sex: PatientSex; age:
    PatientAge (AS, e.g. "006M")."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid

    counts = quantised(signal_mv, DICOM_UV_PER_BIT)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.9.1.1"  # 12-lead ECG waveform
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian if deflated else ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "ECG"
    ds.PatientName, ds.PatientID = patient_name, patient_id
    if sex is not None:
        ds.PatientSex = sex
    if age is not None:
        ds.PatientAge = age
    ds.AccessionNumber = "ACC123"
    ds.StudyInstanceUID = generate_uid()
    group = Dataset()
    group.MultiplexGroupTimeOffset = 0.0
    group.WaveformOriginality = "ORIGINAL"
    group.NumberOfWaveformChannels = len(LEADS) + len(extra)
    group.NumberOfWaveformSamples = counts.shape[1]
    group.SamplingFrequency = fs
    group.MultiplexGroupLabel = "RHYTHM"
    channels = []
    for k, lead in enumerate(LEADS):
        ch = Dataset()
        source = Dataset()
        source.CodeValue = f"5.6.3-9-{SCPECG_CODES[lead]}"
        source.CodingSchemeDesignator = "SCPECG"
        source.CodeMeaning = f"Lead {lead}"
        ch.ChannelSourceSequence = Sequence([source])
        ch.ChannelSensitivity = DICOM_UV_PER_BIT
        unit = Dataset()
        unit.CodeValue, unit.CodingSchemeDesignator, unit.CodeMeaning = "uV", "UCUM", "microvolt"
        ch.ChannelSensitivityUnitsSequence = Sequence([unit])
        ch.ChannelSensitivityCorrectionFactor = 1.0
        ch.ChannelBaseline = 0.0
        ch.WaveformBitsStored = 16
        channels.append(ch)
    for name in extra:
        ch, source = Dataset(), Dataset()
        source.CodeValue, source.CodingSchemeDesignator, source.CodeMeaning = "0", "MDC", name
        ch.ChannelSourceSequence = Sequence([source])
        ch.WaveformBitsStored = 16
        channels.append(ch)
    group.ChannelDefinitionSequence = Sequence(channels)
    group.WaveformBitsAllocated = 16
    group.WaveformSampleInterpretation = "SS"
    written = np.concatenate([counts, np.resize(non_ecg_channel(counts.shape[1]),
                                                (len(extra), counts.shape[1]))])
    group.WaveformData = np.ascontiguousarray(written.T).astype("<i2").tobytes()  # interleaved
    ds.WaveformSequence = Sequence([group])
    notes = []
    for text in statements:
        note = Dataset()
        note.UnformattedTextValue = text
        note.ReferencedWaveformChannels = [1, 0]
        notes.append(note)
    ds.WaveformAnnotationSequence = Sequence(notes)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return counts.astype(np.float64) * DICOM_UV_PER_BIT / 1000.0


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def write_aecg(path, signal_mv: np.ndarray, fs: float, *, patient_name=PATIENT_NAME,
               patient_id=PATIENT_ID, statements=STATEMENTS, extra=(), sex=None) -> np.ndarray:
    """HL7 aECG rhythm series; returns the stored values in mV. extra: sequences after the
    leads, coded by these names, their scale without a unit and a quarter of the digits; sex:
    the administrativeGenderCode."""
    counts = quantised(signal_mv, AECG_UV_PER_DIGIT)
    given, family = patient_name.split("^")[1], patient_name.split("^")[0]
    seqs = [f"""<component><sequence><code code="TIME_ABSOLUTE" codeSystem="2.16.840.1.113883.5.4"/>
<value xsi:type="GLIST_TS"><head value="20260101120000.000"/><increment value="{1.0 / fs!r}" unit="s"/></value>
</sequence></component>"""]
    for lead, row in zip(LEADS, counts):
        seqs.append(f"""<component><sequence><code code="MDC_ECG_LEAD_{lead.upper() if lead[0] != 'a' else 'a' + lead[1:]}" codeSystem="2.16.840.1.113883.6.24"/>
<value xsi:type="SLIST_PQ"><origin value="0" unit="uV"/><scale value="{AECG_UV_PER_DIGIT}" unit="uV"/>
<digits>{' '.join(map(str, row.tolist()))}</digits></value></sequence></component>""")
    extra_digits = " ".join(map(str, non_ecg_channel(counts.shape[1]).tolist()))
    for name in extra:
        seqs.append(f"""<component><sequence><code code="{name}"/>
<value xsi:type="SLIST_PQ"><origin value="0"/><scale value="1"/>
<digits>{extra_digits}</digits></value></sequence></component>""")
    gender = "" if sex is None else f'<administrativeGenderCode code="{sex}"/>'
    notes = "".join(f"""<component><annotation><code code="MDC_ECG_INTERPRETATION_STATEMENT" codeSystem="2.16.840.1.113883.6.24"/>
<value xsi:type="ST">{_esc(t)}</value></annotation></component>""" for t in statements)
    xml = f"""<?xml version="1.0" encoding="UTF-8"?>
<AnnotatedECG xmlns="urn:hl7-org:v3" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
<id root="2.16.840.1.113883.3.1" extension="EXAM-42"/>
<code code="93000" codeSystem="2.16.840.1.113883.6.12"/>
<componentOf><timepointEvent><componentOf><subjectAssignment><subject><trialSubject>
<id root="1.2.3" extension="{_esc(patient_id)}"/>
<subjectDemographicPerson><name><given>{_esc(given)}</given><family>{_esc(family)}</family></name>{gender}</subjectDemographicPerson>
</trialSubject></subject></subjectAssignment></componentOf></timepointEvent></componentOf>
<component><series><code code="RHYTHM" codeSystem="2.16.840.1.113883.5.4"/>
<component><sequenceSet>{''.join(seqs)}</sequenceSet></component>
<subjectOf><annotationSet>{notes}</annotationSet></subjectOf>
</series></component>
</AnnotatedECG>
"""
    pathlib.Path(path).write_text(xml, encoding="utf-8")
    return counts.astype(np.float64) * AECG_UV_PER_DIGIT / 1000.0


def write_muse(path, signal_mv: np.ndarray, fs: float, *, patient_name=PATIENT_NAME,
               patient_id=PATIENT_ID, statements=STATEMENTS, extra=(), sex="FEMALE", age="61",
               age_units=None) -> np.ndarray:
    """GE MUSE RestingECG with the 8 recorded leads; returns all 12 leads in mV as a reader
    must give them (III, aVR, aVL, aVF by Einthoven/Goldberger from the stored I and II).
    extra: LeadData after the leads with these LeadIDs, no LeadAmplitudeUnits and a quarter of
    the samples; sex: Gender; age, age_units: PatientAge and AgeUnits (None: no element)."""
    rows = [LEADS.index(lead) for lead in MUSE_LEADS]
    counts = quantised(signal_mv[rows], MUSE_UV_PER_BIT)
    family, given = patient_name.split("^")
    leads = "".join(f"""<LeadData><LeadByteCountTotal>{2 * counts.shape[1]}</LeadByteCountTotal>
<LeadSampleCountTotal>{counts.shape[1]}</LeadSampleCountTotal>
<LeadAmplitudeUnitsPerBit>{MUSE_UV_PER_BIT}</LeadAmplitudeUnitsPerBit>
<LeadAmplitudeUnits>MICROVOLTS</LeadAmplitudeUnits><LeadID>{lead}</LeadID>
<WaveFormData>{base64.b64encode(row.astype('<i2').tobytes()).decode()}</WaveFormData></LeadData>"""
                    for lead, row in zip(MUSE_LEADS, counts))
    for name in extra:
        row = non_ecg_channel(counts.shape[1])
        leads += f"""<LeadData><LeadSampleCountTotal>{len(row)}</LeadSampleCountTotal>
<LeadAmplitudeUnitsPerBit>1</LeadAmplitudeUnitsPerBit><LeadID>{name}</LeadID>
<WaveFormData>{base64.b64encode(row.astype('<i2').tobytes()).decode()}</WaveFormData></LeadData>"""
    units = "" if age_units is None else f"<AgeUnits>{age_units}</AgeUnits>"
    stmts = "".join(f"<DiagnosisStatement><StmtFlag>ENDSLINE</StmtFlag><StmtText>{_esc(t)}"
                    f"</StmtText></DiagnosisStatement>" for t in statements)
    xml = f"""<?xml version="1.0" encoding="ISO-8859-1"?>
<!DOCTYPE RestingECG SYSTEM "restecg.dtd">
<RestingECG><MuseInfo><MuseVersion>9.0.9.18167</MuseVersion></MuseInfo>
<PatientDemographics><PatientID>{_esc(patient_id)}</PatientID><PatientLastName>{_esc(family)}</PatientLastName>
<PatientFirstName>{_esc(given)}</PatientFirstName><PatientAge>{age}</PatientAge>{units}<Gender>{sex}</Gender></PatientDemographics>
<TestDemographics><AcquisitionDate>01-01-2026</AcquisitionDate><AcquisitionTime>12:00:00</AcquisitionTime></TestDemographics>
<Diagnosis>{stmts}</Diagnosis>
<Waveform><WaveformType>Median</WaveformType><SampleBase>500</SampleBase><SampleExponent>0</SampleExponent></Waveform>
<Waveform><WaveformType>Rhythm</WaveformType><WaveformStartTime>0</WaveformStartTime>
<NumberofLeads>{len(MUSE_LEADS)}</NumberofLeads><SampleType>CONTINUOUS_SAMPLES</SampleType>
<SampleBase>{int(fs)}</SampleBase><SampleExponent>0</SampleExponent>{leads}</Waveform>
</RestingECG>
"""
    pathlib.Path(path).write_bytes(xml.encode("iso-8859-1"))
    stored = counts.astype(np.float64) * MUSE_UV_PER_BIT / 1000.0
    lead_i, lead_ii = stored[0], stored[1]
    derived = [lead_ii - lead_i, -(lead_i + lead_ii) / 2, lead_i - lead_ii / 2,
               lead_ii - lead_i / 2]
    return np.concatenate([stored[:2], np.stack(derived), stored[2:]])


def _field(value, width: int) -> bytes:
    text = str(value).encode("ascii")
    assert len(text) <= width, (value, width)
    return text.ljust(width)


def write_edf(path, signal_mv: np.ndarray, fs: float, *, patient_name=PATIENT_NAME,
              patient_id=PATIENT_ID, extra=()) -> np.ndarray:
    """EDF+C, one data record per second, labels "ECG <lead>" (EDF+ signal type + name), in uV
    with physical range +-32768*2.5 uV; returns the stored values in mV. extra: signals after
    the leads with these labels, no physical dimension and a quarter of the leads' rate."""
    per_record = int(fs)
    seconds = signal_mv.shape[1] // per_record
    counts = quantised(signal_mv[:, :seconds * per_record], DICOM_UV_PER_BIT)
    pmin, pmax, dmin, dmax = -32768 * 2.5, 32767 * 2.5, -32768, 32767
    ecg, other = len(LEADS), len(extra)
    ns, tal_samples = ecg + other + 1, 16   # + the EDF+ "EDF Annotations" signal
    name = patient_name.replace("^", "_").replace(" ", "_")
    head = b"".join([
        _field("0", 8), _field(f"{patient_id} F 02-MAY-1951 {name}", 80),
        _field("Startdate 01-JAN-2026 X X X", 80), _field("01.01.26", 8), _field("12.00.00", 8),
        _field(256 * (ns + 1), 8), _field("EDF+C", 44), _field(seconds, 8), _field(1, 8),
        _field(ns, 4)])
    extra_row = non_ecg_channel(per_record)
    columns = [
        [_field(f"ECG {lead}", 16) for lead in LEADS] + [_field(label, 16) for label in extra]
        + [_field("EDF Annotations", 16)],
        [_field("AgAgCl electrode", 80)] * ns, [_field("uV", 8)] * ecg + [_field("", 8)] * (
            other + 1),
        [_field(pmin, 8)] * ecg + [_field(-1, 8)] * (other + 1),
        [_field(pmax, 8)] * ecg + [_field(1, 8)] * (other + 1),
        [_field(dmin, 8)] * ns, [_field(dmax, 8)] * ns, [_field("HP:0.05Hz LP:150Hz", 80)] * ns,
        [_field(per_record, 8)] * ecg + [_field(len(extra_row), 8)] * other
        + [_field(tal_samples, 8)], [_field("", 32)] * ns]
    blocks = counts.reshape(ecg, seconds, per_record).transpose(1, 0, 2).astype("<i2")
    others = extra_row.astype("<i2").tobytes() * other
    data = b"".join(block.tobytes() + others
                    + f"+{k}\x14\x14\x00".encode().ljust(2 * tal_samples, b"\x00")
                    for k, block in enumerate(blocks))   # each record opens with its time stamp
    pathlib.Path(path).write_bytes(head + b"".join(b"".join(c) for c in columns) + data)
    gain = (pmax - pmin) / (dmax - dmin)
    return ((counts.astype(np.float64) - dmin) * gain + pmin) / 1000.0


PHILIPS_UV_PER_BIT = 5.0
PHILIPS_NS = "http://www3.medical.philips.com"


def _lzw_10bit(data: bytes) -> bytes:
    """LZW with 10-bit codes packed most significant bit first; the table (codes 256-1022)
    grows by one entry per code emitted until full, as the XLI decoder expects."""
    table, next_code, word, codes = {bytes([i]): i for i in range(256)}, 256, b"", []
    for byte in data:
        grown = word + bytes([byte])
        if grown in table:
            word = grown
            continue
        codes.append(table[word])
        if next_code <= 1022:
            table[grown], next_code = next_code, next_code + 1
        word = bytes([byte])
    if word:
        codes.append(table[word])
    acc, bits, out = 0, 0, bytearray()
    for code in codes:
        acc, bits = (acc << 10) | code, bits + 10
        while bits >= 8:
            bits -= 8
            out.append((acc >> bits) & 0xFF)
    if bits:
        out.append((acc << (8 - bits)) & 0xFF)
    return bytes(out)


def xli_chunk(samples: np.ndarray) -> bytes:
    """One lead's XLI chunk: samples[0], samples[1] as they are, then for j >= 2 the value
    64 + 2 s[j] - s[j-1] - s[j+1] (the decoder applies value j-1 at sample j; the header's
    int16 holds the first one, 2 s[1] - s[0] - s[2])."""
    s = samples.astype(np.int64)
    stored = np.zeros(len(s), np.int64)
    stored[:2] = s[:2]
    stored[2:-1] = 64 + 2 * s[2:-1] - s[1:-2] - s[3:]
    first = int(2 * s[1] - s[0] - s[2])
    assert np.abs(stored).max() < 2**15 and abs(first) < 2**15
    words = stored.astype(np.int16).view(np.uint16)
    body = _lzw_10bit(bytes((words >> 8).astype(np.uint8)) + bytes((words & 0xFF).astype(np.uint8)))
    header = len(body).to_bytes(4, "little") + bytes(2) + first.to_bytes(2, "little", signed=True)
    return header + body


def write_philips(path, signal_mv: np.ndarray, fs: float, *, patient_name=PATIENT_NAME,
                  patient_id=PATIENT_ID, statements=STATEMENTS, compression="XLI",
                  sex="Female") -> np.ndarray:
    """Philips Sierra XML 1.04.01 with the 12 leads, XLI-compressed (or compression=None:
    plain base64 little-endian int16); returns the stored values in mV. sex: the sex element."""
    counts = quantised(signal_mv, PHILIPS_UV_PER_BIT).astype(np.int64)
    if compression == "XLI":
        i, ii, iii, avr, avl, avf = counts[:6]
        residuals = [ii - i - iii, -avr - (i + ii) // 2, (i - iii) // 2 - avl,
                     (ii + iii) // 2 - avf]
        payload = b"".join(xli_chunk(row) for row in [i, ii, *residuals, *counts[6:]])
        attrs = 'compression="XLI"'
    else:
        payload, attrs = counts.astype("<i2").tobytes(), ""
    family, given = patient_name.split("^")
    stmts = "".join(f"<statement><statementcode>X{k}</statementcode><leftstatement>{_esc(t)}"
                    f"</leftstatement><rightstatement></rightstatement></statement>"
                    for k, t in enumerate(statements))
    duration_ms = int(round(counts.shape[1] * 1000 / fs))
    xml = f"""<?xml version="1.0" encoding="UTF-8"?>
<restingecgdata xmlns="{PHILIPS_NS}" status="Confirmed" lang="en">
<documentinfo><documentname>0a1b2c3d-0000-4000-8000-00000000e042.xml</documentname>
<documenttype>PhilipsECG</documenttype><documentversion>1.04.01</documentversion></documentinfo>
<reportinfo/>
<dataacquisition date="2026-01-01" time="12:00:00"><machine detaildescription="Philips Medical Products:860306:A.07.07.07">PageWriter TC</machine>
<signalcharacteristics><samplingrate>{fs}</samplingrate><resolution>{PHILIPS_UV_PER_BIT}</resolution><hipass>0.05</hipass><lowpass>150</lowpass>
<acquisitiontype>10-WIRE</acquisitiontype><bitspersample>16</bitspersample><signaloffset>0</signaloffset><signalsigned>True</signalsigned>
<numberchannelsallocated>12</numberchannelsallocated><numberchannelsvalid>12</numberchannelsvalid><electrodeplacement>STD</electrodeplacement></signalcharacteristics></dataacquisition>
<patient criteriaversionforpatientdata="Unknown"><generalpatientdata><patientid>{_esc(patient_id)}</patientid>
<name><lastname>{_esc(family)}</lastname><firstname>{_esc(given)}</firstname></name>
<age><years>61</years></age><pacestatus>Non paced</pacestatus><sex>{sex}</sex></generalpatientdata></patient>
<interpretations><interpretation>{stmts}</interpretation></interpretations>
<waveforms><parsedwaveforms dataencoding="Base64" {attrs} numberofleads="12" leadlabels="{' '.join(LEADS)}"
 durationperchannel="{duration_ms}" samplespersecond="{fs}" resolution="{PHILIPS_UV_PER_BIT}" signaloffset="0"
 signalsigned="True" bitspersample="16" hipass="0.05" lowpass="150" notchfiltered="False">
{base64.encodebytes(payload).decode()}</parsedwaveforms></waveforms>
</restingecgdata>
"""
    pathlib.Path(path).write_text(xml, encoding="utf-8")
    return counts.astype(np.float64) * PHILIPS_UV_PER_BIT / 1000.0


SCP_NV_PER_COUNT = 5000


def _scp_section(sid: int, body: bytes) -> bytes:
    body += b"\0" * (len(body) % 2)  # sections have even lengths
    reserved = b"SCPECG" if sid == 0 else bytes(6)
    chunk = sid.to_bytes(2, "little") + (16 + len(body)).to_bytes(4, "little") + bytes(
        [20, 20]) + reserved + body
    return binascii.crc_hqx(chunk, 0xFFFF).to_bytes(2, "little") + chunk


def _huffman_default(values) -> bytes:
    bits = []
    for v in values.tolist():
        if v == 0:
            bits.append("0")
        elif abs(v) <= 8:
            bits.append("1" * abs(v) + "0" + ("0" if v > 0 else "1"))
        elif -128 <= v <= 127:
            bits.append("1111111110" + format(v & 0xFF, "08b"))
        else:
            bits.append("1111111111" + format(v & 0xFFFF, "016b"))
    text = "".join(bits)
    text += "0" * (-len(text) % 8)
    return int(text, 2).to_bytes(len(text) // 8, "big") if text else b""


def _scp_lead_data(counts: np.ndarray, huffman: bool) -> list[bytes]:
    """Each lead's bytes: second differences in the default Huffman table, or int16 values."""
    if not huffman:
        return [row.astype("<i2").tobytes() for row in counts]
    second = counts.copy()
    second[:, 2:] = counts[:, 2:] - 2 * counts[:, 1:-1] + counts[:, :-2]
    return [_huffman_default(row) for row in second]


def write_scp(path, signal_mv: np.ndarray, fs: float, *, patient_name=PATIENT_NAME,
              patient_id=PATIENT_ID, statements=STATEMENTS, huffman=True, reference_avm=None,
              lead_starts=None, sex=2) -> np.ndarray:
    """SCP-ECG 2.0 record with the 12 leads; returns the stored values in mV.

    reference_avm: reference-beat subtraction (Section 3 flag bit 0): Section 5 holds a 100-ms
    reference beat (fiducial at its sample 25) at that AVM (nV), Section 4 one type-0 QRS zone
    around the first R peak of lead II; Section 6 then holds rhythm - beat (beat sample k
    aligned with rhythm sample k + fiducial - 25, inside the zone) at SCP_NV_PER_COUNT.
    lead_starts: each lead's first sample (1-based), for leads not recorded together.
    sex: Section 1 tag 8's code (0 not known, 1 male, 2 female, 9 unspecified)."""
    n = signal_mv.shape[1]
    counts = quantised(signal_mv, SCP_NV_PER_COUNT / 1000).astype(np.int64)
    stored_nv = counts * SCP_NV_PER_COUNT
    family, given = patient_name.split("^")

    def tag(t, value: bytes) -> bytes:
        return bytes([t]) + len(value).to_bytes(2, "little") + value

    sections = {1: b"".join([tag(0, family.encode() + b"\0"), tag(1, given.encode() + b"\0"),
                             tag(2, patient_id.encode() + b"\0"),
                             tag(4, (61).to_bytes(2, "little") + b"\x01"), tag(8, bytes([sex])),
                             tag(255, b"")])}
    starts = lead_starts or [1] * 12
    sections[3] = bytes([12, 0x04 | (12 << 3) | (1 if reference_avm else 0)]) + b"".join(
        s0.to_bytes(4, "little") + (s0 + n - 1).to_bytes(4, "little")
        + bytes([SCPECG_CODES[lead]]) for s0, lead in zip(starts, LEADS))
    interval = int(round(1e6 / fs))
    if reference_avm:
        beat_len, beat_fid = int(round(0.1 * fs)), 25
        fid = int(np.argmax(signal_mv[1, beat_len:n - beat_len])) + beat_len + 1  # 1-based
        first = fid - beat_fid + 1                       # rhythm sample of beat sample 1
        zone = (first + 5, first + beat_len - 6)          # start, end: inside the beat
        beat = quantised(signal_mv[:, first - 1:first - 1 + beat_len],
                         reference_avm / 1000).astype(np.int64)
        sl = slice(zone[0] - 1, zone[1])
        beat_nv = beat[:, zone[0] - first:zone[1] - first + 1] * reference_avm
        counts[:, sl] = np.round((signal_mv[:, sl] * 1e6 - beat_nv) / SCP_NV_PER_COUNT)
        stored_nv = counts * SCP_NV_PER_COUNT
        stored_nv[:, sl] += beat_nv
        sections[4] = (int(round(beat_len * 1000 / fs)).to_bytes(2, "little")
                       + beat_fid.to_bytes(2, "little") + (1).to_bytes(2, "little")
                       + (0).to_bytes(2, "little") + zone[0].to_bytes(4, "little")
                       + fid.to_bytes(4, "little") + zone[1].to_bytes(4, "little"))
        beats = _scp_lead_data(beat, huffman)  # Section 2's coding applies to Section 5 too
        sections[5] = (reference_avm.to_bytes(2, "little") + interval.to_bytes(2, "little")
                       + bytes([2 if huffman else 0, 0])
                       + b"".join(len(b).to_bytes(2, "little") for b in beats) + b"".join(beats))
    if huffman:
        sections[2] = (19999).to_bytes(2, "little")
    data = _scp_lead_data(counts, huffman)
    sections[6] = (SCP_NV_PER_COUNT.to_bytes(2, "little") + interval.to_bytes(2, "little")
                   + bytes([2 if huffman else 0, 0]) + b"".join(
                       len(d).to_bytes(2, "little") for d in data) + b"".join(data))
    texts = [t.encode() + b"\0" for t in statements]
    sections[8] = (bytes([0]) + (2026).to_bytes(2, "little") + bytes([1, 1, 12, 0, 0])
                   + bytes([len(texts)]) + b"".join(
                       bytes([k + 1]) + len(t).to_bytes(2, "little") + t
                       for k, t in enumerate(texts)))
    blobs = {sid: _scp_section(sid, body) for sid, body in sections.items()}
    section0_size = 16 + 10 * 12
    offset, pointers = 6 + section0_size, [(0, section0_size, 7)]
    for sid in range(1, 12):
        if sid in blobs:
            pointers.append((sid, len(blobs[sid]), offset + 1))
            offset += len(blobs[sid])
        else:
            pointers.append((sid, 0, 0))
    section0 = _scp_section(0, b"".join(sid.to_bytes(2, "little") + size.to_bytes(4, "little")
                                        + index.to_bytes(4, "little")
                                        for sid, size, index in pointers))
    body = section0 + b"".join(blobs[sid] for sid in sorted(blobs))
    size = (6 + len(body)).to_bytes(4, "little")
    record = binascii.crc_hqx(size + body, 0xFFFF).to_bytes(2, "little") + size + body
    pathlib.Path(path).write_bytes(record)
    return stored_nv.astype(np.float64) / 1e6


WRITERS = {"dcm": write_dicom, "xml_aecg": write_aecg, "xml_muse": write_muse, "edf": write_edf,
           "xml_philips": write_philips, "scp": write_scp}
SUFFIX = {"dcm": ".dcm", "xml_aecg": ".xml", "xml_muse": ".xml", "edf": ".edf",
          "xml_philips": ".xml", "scp": ".scp"}
