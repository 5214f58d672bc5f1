"""Hospital exports read back: files written from the standards' fields (tests/data/
clinical_files.py) give the stored signal in mV, in canonical lead order, at the file's rate;
damaged files are RecordErrors with their reason."""
import base64
import os
import re

import numpy as np
import pytest
import wfdb

from crema_jax.data.reading import clinical, clinical_formats
from crema_jax.data.reading.ecg import RecordError
from tests.data import clinical_files as cf

FS = 500.0


@pytest.fixture(scope="module")
def signal_mv(cinc_sample_dir):
    """E07500's 12 leads (mV, 500 Hz, 10 s) in the order I..V6, as wfdb reads them."""
    record = wfdb.rdrecord(str(cinc_sample_dir / "E07500"))
    assert list(record.sig_name) == list(cf.LEADS) and record.fs == FS
    return record.p_signal.T.copy()


@pytest.mark.parametrize("fmt", sorted(cf.WRITERS))
def test_read_back_in_mv_lead_order_and_rate(tmp_path, signal_mv, fmt):
    path = tmp_path / f"exam{cf.SUFFIX[fmt]}"
    stored = cf.WRITERS[fmt](path, signal_mv, FS)
    ecg = clinical.read_clinical(path, target_fs=None)
    assert ecg.fs == FS and ecg.signal.shape == (12, 5000) and ecg.lead_present.all()
    recorded = [0, 1, 6, 7, 8, 9, 10, 11] if fmt == "xml_muse" else list(range(12))
    derived = sorted(set(range(12)) - set(recorded))
    # float32 of the stored values: one rounding (relative 2^-24) plus float64 scaling noise.
    np.testing.assert_allclose(ecg.signal[recorded], stored[recorded], rtol=1.2e-7, atol=1e-9)
    # MUSE's III, aVR, aVL, aVF: the identities evaluated in float32 (a few roundings of I, II).
    np.testing.assert_allclose(ecg.signal[derived], stored[derived], rtol=0,
                               atol=2.0**-21 * np.abs(stored[:2]).max())
    # The stored values are the recording to the writer's quantisation (half a step).
    step_mv = {"dcm": cf.DICOM_UV_PER_BIT, "edf": cf.DICOM_UV_PER_BIT,
               "xml_aecg": cf.AECG_UV_PER_DIGIT, "xml_muse": cf.MUSE_UV_PER_BIT,
               "xml_philips": cf.PHILIPS_UV_PER_BIT, "scp": cf.SCP_NV_PER_COUNT / 1000}[fmt] / 1000
    assert np.abs(ecg.signal[recorded] - signal_mv[recorded]).max() <= step_mv / 2 + 1e-6
    assert ecg.meta["source_fs"] == FS
    assert ecg.meta["statements"] == (() if fmt == "edf" else cf.STATEMENTS)


@pytest.mark.parametrize("fmt", sorted(cf.WRITERS))
def test_patient_identity_is_only_a_salted_hash(tmp_path, signal_mv, fmt, monkeypatch):
    path = tmp_path / f"exam{cf.SUFFIX[fmt]}"
    cf.WRITERS[fmt](path, signal_mv[:, :1000], FS)
    monkeypatch.setenv(clinical.SALT_ENV, "site-secret")
    meta = clinical.read_clinical(path).meta
    text = repr(meta)
    for part in ("Quixote", "Dulcinea", cf.PATIENT_ID):
        assert part not in text
    import hashlib
    want = "p" + hashlib.sha256(f"site-secret\0{cf.PATIENT_ID}".encode()).hexdigest()[:16]
    assert meta["patient_id"] == want


@pytest.mark.parametrize("word", ["NaN", "N/A", "null"])
def test_a_missing_value_word_as_patient_id_is_no_patient_id(tmp_path, signal_mv, word):
    """A file whose patient id is "NaN" has none (""), as a file without one: never the hash of
    "NaN" that would make every such file one patient."""
    path = tmp_path / "exam.dcm"
    cf.write_dicom(path, signal_mv[:, :1000], FS, patient_id=word)
    assert clinical.read_meta(path)["patient_id"] == ""
    assert clinical.patient_hash(f" {word} ") == ""


@pytest.mark.parametrize("fmt", sorted(cf.WRITERS))
def test_the_index_meta_is_the_files_facts_and_the_reads_meta(tmp_path, signal_mv, fmt):
    """read_meta (what an index stores; Philips XLI and SCP-ECG rhythm data left coded) gives
    what the writer put in the file, and what reading the whole record gives."""
    path = tmp_path / f"exam{cf.SUFFIX[fmt]}"
    cf.WRITERS[fmt](path, signal_mv[:, :1000], FS)
    meta = clinical.read_meta(path)
    assert meta["statements"] == (() if fmt == "edf" else cf.STATEMENTS)
    assert meta["patient_id"] == clinical.patient_hash(cf.PATIENT_ID)
    assert meta["format"] == {"dcm": "dicom", "xml_aecg": "aecg", "xml_muse": "muse",
                              "xml_philips": "philips"}.get(fmt, fmt)
    whole = clinical.read_clinical(path).meta
    assert {k: whole[k] for k in meta} == meta


def _undecodable(path, fmt, signal_mv, monkeypatch):
    """A file whose structure, sizes and CRCs are right but whose coded leads do not decode:
    Philips XLI chunk 0's LZW stream garbled after its header; SCP-ECG Huffman data cut to a
    third per lead before the writer computes the CRCs."""
    if fmt == "scp":
        whole = cf._huffman_default
        monkeypatch.setattr(cf, "_huffman_default", lambda v: whole(v)[:len(whole(v)) // 3])
        cf.write_scp(path, signal_mv[:, :1000], FS)
        return "unreadable"
    cf.write_philips(path, signal_mv[:, :1000], FS)
    data = _philips_payload(path)
    data[8:12] = b"\xff" * 4  # 10-bit codes 1023: no such string yet, or an empty lead
    _philips_payload(path, data)
    return "truncated_signal"


def _philips_payload(path, data: bytearray | None = None) -> bytearray | None:
    """The decoded parsedwaveforms bytes of a Philips file, or (data given) those written back
    in their place."""
    text = path.read_text(encoding="utf-8")
    head, rest = text.split("<parsedwaveforms", 1)
    attrs, rest = rest.split(">", 1)
    payload, tail = rest.split("</parsedwaveforms>", 1)
    if data is None:
        return bytearray(base64.b64decode(payload))
    path.write_text(f"{head}<parsedwaveforms{attrs}>{base64.encodebytes(bytes(data)).decode()}"
                    f"</parsedwaveforms>{tail}", encoding="utf-8")
    return None


@pytest.mark.parametrize("fmt", ["xml_philips", "scp"])
def test_the_index_leaves_philips_and_scp_rhythm_data_coded(tmp_path, signal_mv, fmt,
                                                            monkeypatch):
    """Indexing never runs the two decoders (XLI's LZW, SCP-ECG's Huffman as scp_huffman
    installs it in ecgdatakit's parser: the file's cost); damage inside the coded leads is
    found when the record is read, a RecordError naming the file (a skip, counted with its
    reason)."""
    from crema_jax.data.index import registry
    from crema_jax.data.reading import read
    path = tmp_path / f"exam{cf.SUFFIX[fmt]}"
    reason = _undecodable(path, fmt, signal_mv, monkeypatch)
    record, = registry.build_index("clinical_exports", tmp_path).records
    assert isinstance(record.reader, clinical.ClinicalFile)
    assert record.meta["statements"] == cf.STATEMENTS
    with pytest.raises(RecordError) as err:
        read.read(record.path, record.reader)
    assert err.value.reason == reason and str(path) in str(err.value)
    decoder = ("crema_jax.data.reading.philips_xml.lzw_decode" if fmt == "xml_philips" else
               "ecgdatakit.parsing.parsers.scp_ecg._huffman_decode")

    def refuse(*args, **kwargs):
        raise AssertionError("the index ran the decoder")
    good = tmp_path / f"good{cf.SUFFIX[fmt]}"
    cf.WRITERS[fmt](good, signal_mv[:, :1000], FS)
    monkeypatch.setattr(decoder, refuse)
    assert clinical.read_meta(good)["patient_id"] == clinical.patient_hash(cf.PATIENT_ID)


def test_the_public_default_salt_is_warned_about_where_ids_are_kept(monkeypatch, tmp_path,
                                                                    signal_mv):
    """Without CREMA_JAX_PATIENT_SALT the hash uses the documented public salt (recoverable by
    trying every id). Reading a file for its signal keeps no id and says nothing (embed and
    predict had warned of a cache they never write); an index of exports, which puts the ids
    into a cache, tells the user once per process."""
    from crema_jax.data.index import clinical_exports
    monkeypatch.delenv(clinical.SALT_ENV, raising=False)
    clinical._warn_public_salt.cache_clear()
    warned = []
    monkeypatch.setattr(clinical.logging, "warning", lambda msg, *a: warned.append(msg % a))
    got = [clinical.patient_hash("12345"), clinical.patient_hash("67890")]
    import hashlib
    assert got[0] == "p" + hashlib.sha256(b"crema_jax.patient\x0012345").hexdigest()[:16]
    for name in ("a.xml", "b.xml"):
        cf.write_muse(tmp_path / name, signal_mv, FS)
    assert clinical.read_clinical(tmp_path / "a.xml").meta["patient_id"] == \
        clinical.patient_hash(cf.PATIENT_ID)
    assert warned == []
    for _ in range(2):
        index = clinical_exports.clinical_exports(tmp_path, index_workers=1)
    assert [r.meta["patient_id"] for r in index.records] == [clinical.patient_hash(cf.PATIENT_ID)]*2
    assert len(warned) == 1 and clinical.SALT_ENV in warned[0]
    monkeypatch.setenv(clinical.SALT_ENV, "site-secret")
    assert clinical.patient_hash("12345") != got[0] and len(warned) == 1


def _truncated(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) * 2 // 3])
    return path


@pytest.mark.parametrize("fmt,reason", [("dcm", "truncated_signal"), ("edf", "truncated_signal"),
                                        ("xml_aecg", "unreadable"), ("xml_muse", "unreadable"),
                                        ("xml_philips", "unreadable"),
                                        ("scp", "truncated_signal")])
def test_truncated_file_is_a_skip_naming_it(tmp_path, signal_mv, fmt, reason):
    path = tmp_path / f"exam{cf.SUFFIX[fmt]}"
    cf.WRITERS[fmt](path, signal_mv, FS)
    with pytest.raises(RecordError) as err:
        clinical.read_clinical(_truncated(path))
    assert err.value.reason == reason and str(path) in str(err.value)


def test_unknown_format_and_missing_leads(tmp_path, signal_mv):
    junk = tmp_path / "notes.xml"
    junk.write_text("<Report><Text>not an ECG</Text></Report>")
    with pytest.raises(RecordError, match="unknown_format"):
        clinical.read_clinical(junk)
    muse = tmp_path / "four.xml"
    cf.write_muse(muse, signal_mv, FS)
    text = muse.read_text(encoding="iso-8859-1")
    for lead in ("V3", "V4", "V5", "V6"):  # drop four chest leads' LeadData
        start = text.index(f"<LeadID>{lead}</LeadID>")
        begin, end = text.rindex("<LeadData>", 0, start), text.index("</LeadData>", start)
        text = text[:begin] + text[end + len("</LeadData>"):]
    muse.write_text(text, encoding="iso-8859-1")
    with pytest.raises(RecordError) as err:
        clinical.read_clinical(muse)
    assert err.value.reason == "missing_leads" and "V3" in str(err.value)
    ecg = clinical.read_clinical(muse, clinical.ClinicalFile(require_12_leads=False))
    assert ecg.lead_present.tolist() == [True] * 8 + [False] * 4


def test_entity_expansion_is_refused(tmp_path):
    bomb = tmp_path / "bomb.xml"
    bomb.write_text('<?xml version="1.0"?><!DOCTYPE RestingECG [<!ENTITY a "aaaaaaaa">'
                    '<!ENTITY b "&a;&a;&a;&a;">]><RestingECG>&b;</RestingECG>')
    with pytest.raises(RecordError) as err:
        clinical.read_clinical(bomb)
    assert err.value.reason == "unreadable" and str(bomb) in str(err.value)


def _philips_variant(path, signal_mv, variant):
    """A Philips file written as the carts write it (1.04.01, XLI), then changed to `variant`:
    plain base64 int16 ("base64"), counts as text with a signal offset ("plain_offset"), 1.03's
    attributes (no lead labels or per-waveform rate and resolution, compressflag/compressmethod:
    "xli_1.03"), or four zero chunks after the 12 leads as 16-channel carts write ("xli_16")."""
    compression = None if variant == "base64" else "XLI"
    stored = cf.write_philips(path, signal_mv, FS, compression=compression)
    text = path.read_text(encoding="utf-8")
    head, rest = text.split("<parsedwaveforms ", 1)
    attrs, rest = rest.split(">", 1)
    payload, tail = rest.split("</parsedwaveforms>", 1)
    counts = np.round(stored * 1000 / cf.PHILIPS_UV_PER_BIT).astype(np.int64)
    if variant == "plain_offset":
        attrs = attrs.replace('dataencoding="Base64" compression="XLI"', 'dataencoding="Plain"')
        attrs = attrs.replace('signaloffset="0"', 'signaloffset="100"')
        payload = " ".join(map(str, (counts + 100).ravel().tolist()))
    elif variant == "xli_1.03":
        for name in ("numberofleads", "leadlabels", "samplespersecond", "resolution"):
            attrs = re.sub(rf'\s{name}="[^"]*"', "", attrs)
        attrs = attrs.replace('compression="XLI"', 'compressflag="True" compressmethod="XLI"')
        head = head.replace("<acquisitiontype>10-WIRE<", "<acquisitiontype>STD-12<")
    elif variant == "xli_16":
        zeros = b"".join(cf.xli_chunk(np.zeros(counts.shape[1], np.int64)) for _ in range(4))
        payload = base64.encodebytes(base64.b64decode(payload) + zeros).decode()
    path.write_text(f"{head}<parsedwaveforms {attrs}>{payload}</parsedwaveforms>{tail}",
                    encoding="utf-8")
    return stored


@pytest.mark.parametrize("variant", ["base64", "plain_offset", "xli_1.03", "xli_16"])
def test_philips_encodings_give_the_stored_leads(tmp_path, signal_mv, variant):
    path = tmp_path / "exam.xml"
    stored = _philips_variant(path, signal_mv, variant)
    ecg = clinical.read_clinical(path, target_fs=None)
    assert ecg.fs == FS and ecg.signal.shape == (12, 5000) and ecg.lead_present.all()
    np.testing.assert_allclose(ecg.signal, stored, rtol=1.2e-7, atol=1e-9)
    assert ecg.meta["statements"] == cf.STATEMENTS


def test_philips_xli_residual_leads_are_rebuilt_with_floor_halves():
    """The residual coding by hand on odd sums, where floor and truncation differ: I = -3,
    II = 0, III = 3 (II - I), aVR = 1 (-(I + II) / 2 = 1.5), aVL = -3, aVF = 1."""
    from crema_jax.data.reading import philips_xml
    true = np.array([[-3, 0, 3, 1, -3, 1]] * 3, np.int64).T  # 6 limb leads x 3 samples
    i, ii, iii, avr, avl, avf = true
    # Stored residuals (the cart's side): r3 = II - I - III, r4 = -aVR - floor((I+II)/2), ...
    r3, r4 = ii - i - iii, -avr - np.floor_divide(i + ii, 2)
    r5, r6 = np.floor_divide(i - iii, 2) - avl, np.floor_divide(ii + iii, 2) - avf
    assert r4.tolist() == [1, 1, 1] and r5.tolist() == [0, 0, 0]  # floor(-1.5) = -2, not -1
    data = b"".join(cf.xli_chunk(np.concatenate([row, [row[-1]]]))
                    for row in [i, ii, r3, r4, r5, r6])
    rows = philips_xml._xli("exam.xml", data, list(philips_xml.STD_LEADS[:6]), 3)
    np.testing.assert_array_equal(np.stack(rows), true)


def test_philips_damaged_xli_chunk_header_is_a_skip_not_a_hang(tmp_path, signal_mv):
    path = tmp_path / "exam.xml"
    cf.write_philips(path, signal_mv[:, :1000], FS)
    data = _philips_payload(path)
    data[:4] = (-8).to_bytes(4, "little", signed=True)  # a size pointing back at its header
    _philips_payload(path, data)
    with pytest.raises(RecordError) as err:
        clinical.read_clinical(path)
    assert err.value.reason == "truncated_signal" and "chunk 0" in str(err.value)


def test_scp_plain_amplitudes_and_the_exact_rate(tmp_path, signal_mv):
    """Without Section 2 the rhythm data is int16 amplitudes; the rate is 1e6 / the sample
    interval in us (1953 us: 512.03 Hz, not the decoder's rounded 512)."""
    path = tmp_path / "exam.scp"
    stored = cf.write_scp(path, signal_mv[:, :2000], 1e6 / 1953, huffman=False)
    ecg = clinical.read_clinical(path, target_fs=None)
    assert ecg.fs == pytest.approx(1e6 / 1953, rel=1e-12)
    np.testing.assert_allclose(ecg.signal, stored, rtol=1.2e-7, atol=1e-9)
    assert ecg.meta["statements"] == cf.STATEMENTS and ecg.meta["format"] == "scp"


def test_scp_crc_mismatch_is_a_skip(tmp_path, signal_mv):
    path = tmp_path / "exam.scp"
    cf.write_scp(path, signal_mv[:, :1000], FS)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0x01  # one bit of Section 8's text: the file still parses
    path.write_bytes(bytes(data))
    with pytest.raises(RecordError) as err:
        clinical.read_clinical(path)
    assert err.value.reason == "unreadable" and "CRC" in str(err.value)


@pytest.mark.parametrize("huffman", [False, True])
def test_scp_reference_beat_subtraction_is_undone_at_both_amplitude_steps(tmp_path, signal_mv,
                                                                          huffman):
    """Section 6 holds rhythm - reference beat inside the QRS zone, at 5 uV per count, the beat
    (Section 5) at 2 uV: the reader gives residual x 5 uV + beat x 2 uV there, the rhythm
    elsewhere (a reader scaling everything by Section 6's AVM is 2.5x off inside the zone)."""
    path = tmp_path / "exam.scp"
    stored = cf.write_scp(path, signal_mv[:, :2500], FS, huffman=huffman, reference_avm=2000)
    ecg = clinical.read_clinical(path, target_fs=None)
    np.testing.assert_allclose(ecg.signal, stored, rtol=1.2e-7, atol=1e-9)
    # The beat's 2-uV steps show inside the zone only: the stored values are not all on 5 uV.
    assert np.any(np.abs(stored * 200 - np.round(stored * 200)) > 1e-6)


def test_scp_leads_not_recorded_together_are_a_skip(tmp_path, signal_mv):
    """A 3-channel cart records 4 groups one after the other (Section 3's sample ranges):
    stacking them as one 12-lead instant would be wrong."""
    path = tmp_path / "exam.scp"
    cf.write_scp(path, signal_mv[:, :1250], FS, lead_starts=[1 + 1250 * (k // 3)
                                                             for k in range(12)])
    with pytest.raises(RecordError) as err:
        clinical.read_clinical(path)
    assert err.value.reason == "unequal_lengths"


@pytest.mark.parametrize("change,reason", [
    (('samplespersecond="500.0"', 'samplespersecond="nan"'), "bad_sampling_rate"),
    (('durationperchannel="10000"', 'durationperchannel="1e12"'), "unreadable"),
    (('bitspersample="16"', 'bitspersample="8"'), "unreadable"),
    (('resolution="5.0" signaloffset', 'resolution="inf" signaloffset'), "bad_units"),
    # 12 x 36e6 samples declared (10 kHz for 1 h): refused before XLI inflates ~600x.
    (('durationperchannel="10000" samplespersecond="500.0"',
      'durationperchannel="3600000" samplespersecond="10000"'), "too_large"),
])
def test_philips_impossible_attributes_are_skips(tmp_path, signal_mv, change, reason):
    path = tmp_path / "exam.xml"
    cf.write_philips(path, signal_mv, FS)
    text = path.read_text(encoding="utf-8")
    assert change[0] in text
    path.write_text(text.replace(change[0], change[1]), encoding="utf-8")
    with pytest.raises(RecordError) as err:
        clinical.read_clinical(path)
    assert err.value.reason == reason and str(path) in str(err.value)


def test_philips_xli_chunk_that_expands_without_end_is_cut_short():
    """LZW turns a 10-bit code into up to ~770 bytes: 2 KB of codes for a run of 400,000 zero
    bytes. The decoder stops past twice the lead's bytes instead of expanding it all."""
    import time

    from crema_jax.data.reading import philips_xml
    body = cf._lzw_10bit(bytes(400_000))
    assert len(body) < 4000
    data = (len(body).to_bytes(4, "little") + bytes(4) + body) * 12
    start = time.perf_counter()
    with pytest.raises(RecordError, match="decodes past") as err:
        philips_xml._xli("exam.xml", data, list(philips_xml.STD_LEADS), 1000)
    assert err.value.reason == "unreadable" and time.perf_counter() - start < 2.0


def test_philips_second_differences_match_the_reference_decoder():
    """Our vectorised XLI delta step against sierraecg's loop (the sierra-ecg-tools reference)
    on the bytes of random-walk leads, an odd-length stream padded as it pads, and short ones."""
    from sierraecg.xli import xli_decode_deltas

    from crema_jax.data.reading import philips_xml
    rng = np.random.default_rng(0)
    for n in (3, 4, 5, 999, 5000):
        lead = np.cumsum(rng.integers(-40, 41, n)).clip(-3000, 3000)
        chunk = cf.xli_chunk(lead)
        first = int.from_bytes(chunk[6:8], "little", signed=True)
        words = lead.copy()
        words[2:-1] = 64 + 2 * lead[2:-1] - lead[1:-2] - lead[3:]
        planar = np.concatenate([(words.astype(np.int16).view(np.uint16) >> 8),
                                 words.astype(np.int16).view(np.uint16) & 0xFF]).astype(np.uint8)
        want = np.asarray(xli_decode_deltas(planar.tolist(), first), np.int64)
        np.testing.assert_array_equal(philips_xml.second_differences(planar, first), want)
        np.testing.assert_array_equal(want, lead)


def _reference_lzw(stream: bytes, limit: int):
    """sierraecg's LzwDecoder (the sierra-ecg-tools reference) read a byte at a time, as the
    reader used it: the bytes, None past `limit`, or "IndexError" for a code before any string."""
    from sierraecg.lzw import LzwDecoder
    decoder, out = LzwDecoder(stream, bits=10), []
    try:
        while len(out) <= limit and (byte := decoder.read()) != -1:
            out.append(byte & 0xFF)
    except IndexError:
        return "IndexError"
    return None if len(out) > limit else bytes(out)


def test_philips_lzw_matches_the_reference_decoder():
    """Our LZW against sierraecg's on the streams of random-walk leads (a full code table:
    ~4,000 codes past its 767 free ones), of long runs (codes used in the step that makes them),
    cut mid-code, and of random bytes (codes before any string, end codes, unknown codes), at
    limits that cut the output short and that do not."""
    from crema_jax.data.reading import philips_xml

    def ours(stream, limit):
        try:
            return philips_xml.lzw_decode(stream, limit)
        except IndexError:
            return "IndexError"

    rng = np.random.default_rng(0)
    streams = []
    for n in (3, 1000, 5000):
        streams.append(cf.xli_chunk(np.cumsum(rng.integers(-40, 41, n)).clip(-3000, 3000))[8:])
    streams.append(cf._lzw_10bit(bytes(3000) + b"ab" * 500 + bytes(range(256)) * 4))
    streams.append(streams[-1][:-7])
    # Codes 104 105 256, the end code 1023, then codes the decoder must not read ("hihi").
    codes = "".join(format(c, "010b") for c in (104, 105, 256, 1023, 104, 105, 1022))
    streams.append(int(codes + "0" * (-len(codes) % 8), 2).to_bytes(-(-len(codes) // 8), "big"))
    for _ in range(400):
        raw = rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8)
        streams.append((raw & rng.choice([0x3F, 0x7F, 0xFF])).tobytes())
    outcomes = set()
    for stream in streams:
        for limit in (10, 1000, 30000):
            want = _reference_lzw(stream, limit)
            assert ours(stream, limit) == want, (stream[:16], limit)
            outcomes.add(type(want).__name__)
    assert outcomes == {"bytes", "NoneType", "str"}  # every outcome was compared
    assert philips_xml.lzw_decode(streams[-401], 100) == b"hihi"
    assert _reference_lzw(streams[1], 30000)[:8] != bytes(8)  # real data, not a constant run


@pytest.mark.parametrize("damage", ["header_bytes", "physical_range", "digital_range"])
def test_edf_headers_that_misstate_the_data_are_skips(tmp_path, signal_mv, damage):
    """A header-bytes field of 0 (edfio read the data from the wrong offset: 76-mV garbage),
    and a signal whose physical or digital minimum equals its maximum (edfio warned and gave
    values 2.5x too small), per the EDF fields (Kemp et al. 1992: 256 header bytes, then ns x
    16 label, 80 transducer, 8 dimension, 8 pmin, 8 pmax, 8 dmin, 8 dmax, ...)."""
    path = tmp_path / "exam.edf"
    cf.write_edf(path, signal_mv, FS)
    data = bytearray(path.read_bytes())
    ns = int(data[252:256])
    pmin, dmin = 256 + ns * 104, 256 + ns * 120
    if damage == "header_bytes":
        data[184:192] = b"0       "
    elif damage == "physical_range":
        data[pmin + ns * 8:pmin + ns * 8 + 8] = data[pmin:pmin + 8]    # signal 0: pmax = pmin
    else:
        data[dmin + ns * 8:dmin + ns * 8 + 8] = data[dmin:dmin + 8]    # signal 0: dmax = dmin
    path.write_bytes(bytes(data))
    with pytest.raises(RecordError) as err:
        clinical.read_clinical(path)
    assert err.value.reason == ("unreadable" if damage == "header_bytes" else "bad_units")
    assert str(path) in str(err.value)


@pytest.mark.parametrize("count", ["-4000", "5e3", "many"])
def test_muse_sample_count_that_is_not_a_count_is_a_skip_naming_it(tmp_path, signal_mv, count):
    """A negative LeadSampleCountTotal had cut the 10-s leads to 2 s without a word."""
    path = tmp_path / "exam.xml"
    cf.write_muse(path, signal_mv, FS)
    text = path.read_text(encoding="utf-8")
    assert "<LeadSampleCountTotal>5000</LeadSampleCountTotal>" in text
    path.write_text(text.replace("<LeadSampleCountTotal>5000<", f"<LeadSampleCountTotal>{count}<"),
                    encoding="utf-8")
    with pytest.raises(RecordError) as err:
        clinical.read_clinical(path)
    assert err.value.reason == "unreadable" and "LeadSampleCountTotal" in str(err.value)


@pytest.mark.parametrize("fmt", ["xml_aecg", "xml_muse", "xml_philips"])
def test_xml_exports_over_the_size_cap_are_skipped_unparsed(tmp_path, signal_mv, fmt,
                                                            monkeypatch):
    path = tmp_path / "exam.xml"
    cf.WRITERS[fmt](path, signal_mv, FS)
    size = path.stat().st_size
    monkeypatch.setattr(clinical_formats, "MAX_XML_BYTES", size)
    assert clinical.read_clinical(path, target_fs=None).signal.shape == (12, 5000)
    monkeypatch.setattr(clinical_formats, "MAX_XML_BYTES", size - 1)
    with pytest.raises(RecordError) as err:
        clinical.read_clinical(path)
    assert err.value.reason == "too_large" and f"{size} bytes" in str(err.value)


def test_deflated_dicom_reads_the_same_values(tmp_path, signal_mv):
    plain, deflated = tmp_path / "plain.dcm", tmp_path / "deflated.dcm"
    stored = cf.write_dicom(plain, signal_mv, FS)
    assert np.array_equal(cf.write_dicom(deflated, signal_mv, FS, deflated=True), stored)
    assert deflated.stat().st_size < plain.stat().st_size  # it is deflated
    ecg = clinical.read_clinical(deflated, target_fs=None)
    np.testing.assert_allclose(ecg.signal, stored, rtol=1.2e-7, atol=1e-9)


def _dicom_channel_edit(path, **fields):
    """The DICOM file at `path` with `fields` set on its first channel definition."""
    import pydicom
    ds = pydicom.dcmread(path)
    channel = ds.WaveformSequence[0].ChannelDefinitionSequence[0]
    for name, value in fields.items():
        setattr(channel, name, value)
    ds.save_as(path, enforce_file_format=True)


@pytest.mark.parametrize("fmt,field,value", [
    ("xml_muse", "LeadAmplitudeUnitsPerBit", "-4.88"),
    ("xml_muse", "LeadAmplitudeUnitsPerBit", "0"),     # had been a misleading no_signal
    ("xml_muse", "LeadAmplitudeUnitsPerBit", "nan"),
    ("xml_aecg", "scale value", "-5.0"),
    ("dcm", "ChannelSensitivity", "-2.5"),
    ("dcm", "ChannelSensitivityCorrectionFactor", "-1.0"),
])
def test_a_scale_that_is_not_positive_is_a_bad_units_skip_naming_it(tmp_path, signal_mv, fmt,
                                                                       field, value):
    """A negative amplitude scale had read every lead upside down (exit 0, no skip); 0 or NaN
    had been flat leads (no_signal). Each is bad_units, naming the file, field and value."""
    path = tmp_path / f"exam{cf.SUFFIX[fmt]}"
    cf.WRITERS[fmt](path, signal_mv[:, :1000], FS)
    if fmt == "dcm":
        _dicom_channel_edit(path, **{field: value})
    else:
        old = {"xml_muse": f"<LeadAmplitudeUnitsPerBit>{cf.MUSE_UV_PER_BIT}<",
               "xml_aecg": f'<scale value="{cf.AECG_UV_PER_DIGIT}"'}[fmt]
        new = {"xml_muse": f"<LeadAmplitudeUnitsPerBit>{value}<",
               "xml_aecg": f'<scale value="{value}"'}[fmt]
        text = path.read_text(encoding="iso-8859-1")
        assert old in text
        path.write_text(text.replace(old, new), encoding="iso-8859-1")
    with pytest.raises(RecordError) as err:
        clinical.read_clinical(path)
    assert err.value.reason == "bad_units"
    assert str(path) in str(err.value) and field in str(err.value)
    assert f"{value!r}" in str(err.value) and "positive finite" in str(err.value)


@pytest.mark.parametrize("fmt,field", [("xml_aecg", "scale unit"),
                                       ("edf", "physical dimension"),
                                       ("dcm", "ChannelSensitivityUnitsSequence CodeValue")])
def test_a_missing_unit_is_a_bad_units_skip_not_millivolts(tmp_path, signal_mv, fmt, field):
    """An aECG scale (and origin) without its unit attribute, an EDF signal with a blank
    physical dimension, a DICOM unit code left empty: each had been read as mV (values 1000x
    too large when they were uV), exit 0. Only WFDB defaults a missing unit to mV."""
    path = tmp_path / f"exam{cf.SUFFIX[fmt]}"
    cf.WRITERS[fmt](path, signal_mv[:, :1000], FS)
    if fmt == "xml_aecg":
        text = path.read_text(encoding="utf-8")
        old = f'<scale value="{cf.AECG_UV_PER_DIGIT}" unit="uV"/>'
        assert text.count(old) == 12
        text = text.replace(old, f'<scale value="{cf.AECG_UV_PER_DIGIT}"/>')
        path.write_text(text.replace('<origin value="0" unit="uV"/>', '<origin value="0"/>'),
                        encoding="utf-8")
    elif fmt == "edf":  # 256 header bytes, then ns x (16 label, 80 transducer, 8 dimension...)
        data = bytearray(path.read_bytes())
        ns = int(data[252:256])
        dimension = 256 + ns * 96
        assert data[dimension:dimension + 8] == b"uV      "
        data[dimension:dimension + 8 * len(cf.LEADS)] = b" " * 8 * len(cf.LEADS)
        path.write_bytes(bytes(data))
    else:
        import pydicom
        ds = pydicom.dcmread(path)
        for channel in ds.WaveformSequence[0].ChannelDefinitionSequence:
            channel.ChannelSensitivityUnitsSequence[0].CodeValue = ""
        ds.save_as(path, enforce_file_format=True)
    with pytest.raises(RecordError) as err:
        clinical.read_clinical(path)
    assert err.value.reason == "bad_units"
    assert str(path) in str(err.value) and field in str(err.value)
    assert "states no unit" in str(err.value)


def test_dicom_channel_count_contradicting_its_definitions_is_a_skip(tmp_path, signal_mv):
    """NumberOfWaveformChannels 24 over 12 channel definitions, NumberOfWaveformSamples halved
    so the byte count still matches: pydicom's waveform_array had split each instant's samples
    into two rows (a lead's neighbour read as its next sample), exit 0."""
    import pydicom
    path = tmp_path / "exam.dcm"
    cf.write_dicom(path, signal_mv[:, :3000], FS)
    ds = pydicom.dcmread(path)
    group = ds.WaveformSequence[0]
    group.NumberOfWaveformChannels, group.NumberOfWaveformSamples = 24, 1500  # 3 s at 500 Hz
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(RecordError) as err:
        clinical.read_clinical(path)
    assert err.value.reason == "bad_shape" and str(path) in str(err.value)
    assert ("NumberOfWaveformChannels is 24, ChannelDefinitionSequence defines 12 channels"
            in str(err.value))


@pytest.mark.parametrize("declared", ["20000", "-1"])
def test_edf_declaring_more_samples_than_a_record_is_read_with_is_too_large(tmp_path, signal_mv,
                                                                            declared):
    """A sparse EDF of 20,000 one-second data records (13 signals, 6,016 samples each: 1.2e8
    samples, 240 MB on disk but none of it stored) is refused from its header before edfio
    allocates the data; with -1 (still recording) the count comes from the file's size. edfio
    had read such files whole (a sparse 4 GB one into ~8 GB)."""
    path = tmp_path / "exam.edf"
    cf.write_edf(path, signal_mv[:, :1000], FS)
    data = bytearray(path.read_bytes())
    header_bytes, per_record = int(data[184:192]), 12 * 500 + 16
    data[236:244] = declared.encode().ljust(8)
    path.write_bytes(bytes(data[:header_bytes]))
    with open(path, "r+b") as f:
        f.truncate(header_bytes + 2 * per_record * 20000)
    assert os.stat(path).st_blocks * 512 < 1 << 20  # sparse: nothing but the header stored
    with pytest.raises(RecordError) as err:
        clinical.read_meta(path)  # indexing reads the header the same way
    assert err.value.reason == "too_large" and str(path) in str(err.value)
    assert f"20000 data records x {per_record} samples" in str(err.value)
    with pytest.raises(RecordError, match="too_large"):
        clinical.read_clinical(path)


@pytest.mark.parametrize("origin,shift_mv", [('<origin value="0"/>', 0.0),
                                             ('<origin value="50" unit="uV"/>', 0.05),
                                             ('<origin value="50"/>', None)])
def test_aecg_origin_is_added_in_the_scales_unit_and_must_state_it(tmp_path, signal_mv, origin,
                                                                  shift_mv):
    """physical = origin + scale x digit. An origin without a unit is an HL7 dimensionless
    quantity: a zero one is zero in any unit, a non-zero one had been taken in the scale's unit
    (uV here) without a word; it is now a bad_units skip."""
    path = tmp_path / "exam.xml"
    stored = cf.write_aecg(path, signal_mv[:, :1000], FS)
    text = path.read_text(encoding="utf-8")
    assert text.count('<origin value="0" unit="uV"/>') == 12
    path.write_text(text.replace('<origin value="0" unit="uV"/>', origin), encoding="utf-8")
    if shift_mv is None:
        with pytest.raises(RecordError, match=r"exam\.xml: aECG lead MDC_ECG_LEAD_I: origin 50 "
                           r"in no unit, scale in 'uV', expected one unit") as err:
            clinical.read_clinical(path, target_fs=None)
        assert err.value.reason == "bad_units"
        return
    ecg = clinical.read_clinical(path, target_fs=None, min_seconds=None)
    np.testing.assert_allclose(ecg.signal, stored + shift_mv, rtol=1.2e-7, atol=1e-7)
