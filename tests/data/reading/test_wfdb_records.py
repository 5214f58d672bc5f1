"""Record reading against wfdb, scipy.io.loadmat and hand-applied header gains."""
import hashlib
import os
import pathlib

import numpy as np
import pytest
import scipy.io
import scipy.signal
import wfdb

from crema_jax.data.reading import ecg as ecg_lib
from crema_jax.data.reading import leads
from crema_jax.data.reading import wfdb_records
from tests.data.broken_records import (EXPECTED_REASONS, FRANK_NAMES, NAN_LEAD, NAN_SAMPLES,
                                       ZERO_LEAD, make_broken_records)

CANONICAL = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]


def _hand_header(hea: pathlib.Path):
    """(names, gains, baselines) parsed here without crema_jax or wfdb."""
    lines = [ln.split() for ln in hea.read_text().splitlines() if ln and not ln.startswith("#")]
    names, gains, baselines = [], [], []
    for tokens in lines[1:]:
        gain, _, rest = tokens[2].partition("(")
        gains.append(float(gain))
        baselines.append(int(rest.split(")")[0]))
        names.append(tokens[8])
    return names, np.array(gains), np.array(baselines)


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    return make_broken_records(tmp_path_factory.mktemp("broken"))


def test_all_sample_records_physical_units_and_lead_order(cinc_sample_dir):
    heas = sorted(cinc_sample_dir.glob("*.hea"))
    assert len(heas) == 50
    for hea in heas:
        names, gains, baselines = _hand_header(hea)
        digital = scipy.io.loadmat(hea.with_suffix(".mat"))["val"].astype(np.float64)  # (12, T)
        expected = (digital - baselines[:, None]) / gains[:, None]
        rows = [names.index(lead) for lead in CANONICAL]
        expected = expected[rows]
        ecg = wfdb_records.read_record(hea, target_fs=500.0)  # No resampling: fs is 500 already.
        assert ecg.signal.shape == (12, 5000) and ecg.signal.dtype == np.float32
        assert ecg.fs == 500.0 and ecg.record_id == hea.stem
        flat = np.ptp(expected, axis=1) == 0
        np.testing.assert_array_equal(ecg.lead_present, ~flat)
        expected[flat] = 0.0
        np.testing.assert_allclose(ecg.signal, expected, rtol=1e-6, atol=1e-7)

        ecg250 = wfdb_records.read_record(hea)  # default target 250 Hz
        assert ecg250.signal.shape == (12, 2500) and ecg250.fs == 250.0
        np.testing.assert_allclose(ecg250.signal, scipy.signal.resample_poly(expected, 1, 2,
                                                                             axis=-1),
                                   rtol=1e-5, atol=1e-5)


def test_known_record_values_and_meta(cinc_sample_dir):
    ecg = wfdb_records.read_record(cinc_sample_dir / "E07500.mat", target_fs=None)
    # First samples of E07500 from its header's "initial value" column, divided by gain 1000.
    np.testing.assert_allclose(ecg.signal[:, 0], np.array(
        [-68, -58, 9, 63, -39, -24, 156, 97, -146, -68, -48, -156]) / 1000.0, rtol=1e-6)
    assert set(ecg.meta["labels"]) == {"67741000119109", "426177001"}
    assert ecg.meta["age"] == 78 and ecg.meta["sex"] == "Male"
    assert ecg.path == str(cinc_sample_dir / "E07500")
    # HR records write units as lower-case "mv".
    hr = wfdb_records.read_record(cinc_sample_dir / "HR06000", target_fs=None)
    assert abs(hr.signal[0, 0] - 0.010) < 1e-7


def test_resampling_keeps_sinusoid_frequency_and_amplitude(tmp_path):
    fs, seconds = 500.0, 10.0
    t = np.arange(int(fs * seconds)) / fs
    freqs = np.array([2.0, 7.0, 13.0, 25.0, 31.0, 40.0, 3.0, 5.0, 11.0, 17.0, 23.0, 29.0])
    signal = np.sin(2 * np.pi * freqs[:, None] * t)
    wfdb.wrsamp("sine", fs=fs, units=["mV"] * 12, sig_name=CANONICAL, p_signal=signal.T,
                fmt=["32"] * 12, adc_gain=[1e6] * 12, baseline=[0] * 12, write_dir=str(tmp_path))
    ecg = wfdb_records.read_record(tmp_path / "sine", target_fs=250.0, derive_limb_leads=False)
    assert ecg.signal.shape == (12, 2500)
    spectrum = np.abs(np.fft.rfft(ecg.signal.astype(np.float64), axis=-1))
    bin_hz = np.fft.rfftfreq(2500, 1 / 250.0)
    np.testing.assert_allclose(bin_hz[spectrum.argmax(axis=-1)], freqs)
    amplitude = 2 * spectrum.max(axis=-1) / 2500
    np.testing.assert_allclose(amplitude, 1.0, rtol=0.01)


def test_resampling_from_360_and_1000_hz(tmp_path):
    for fs in (360.0, 1000.0):
        t = np.arange(int(fs * 10)) / fs
        sig = np.tile(np.sin(2 * np.pi * 5.0 * t), (12, 1))
        wfdb.wrsamp(f"r{int(fs)}", fs=fs, units=["mV"] * 12, sig_name=CANONICAL,
                    p_signal=sig.T, fmt=["16"] * 12, adc_gain=[1000.0] * 12, baseline=[0] * 12,
                    write_dir=str(tmp_path))
        ecg = wfdb_records.read_record(tmp_path / f"r{int(fs)}", derive_limb_leads=False)
        assert ecg.signal.shape == (12, 2500) and ecg.fs == 250.0
        t250 = np.arange(2500) / 250.0
        mid = slice(250, 2250)  # Polyphase filters ring at the edges only.
        np.testing.assert_allclose(ecg.signal[0, mid], np.sin(2 * np.pi * 5.0 * t250[mid]),
                                   atol=0.01)


ERRORS = {name: reason for name, reason in EXPECTED_REASONS.items() if reason}


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_broken_record_raises(broken, name):
    with pytest.raises(ecg_lib.RecordError) as info:
        wfdb_records.read_record(broken[name])
    assert info.value.reason == ERRORS[name]
    assert broken[name] in str(info.value)
    assert info.value.path.startswith(broken[name])


def test_short_record_is_read_unless_min_seconds_says_otherwise(broken):
    assert wfdb_records.read_record(broken["short_3s"]).signal.shape == (12, 750)
    with pytest.raises(ecg_lib.RecordError, match="short_3s") as info:
        wfdb_records.read_record(broken["short_3s"], min_seconds=5.0)
    assert info.value.reason == "too_short"
    assert wfdb_records.read_record(broken["short_1s"], min_seconds=None).signal.shape == (12, 250)


def test_fifteen_lead_1khz_lower_case_names(broken):
    ecg = wfdb_records.read_record(broken["frank_15lead_1khz"])
    raw = wfdb.rdrecord(broken["frank_15lead_1khz"])
    assert raw.sig_name == FRANK_NAMES
    by_name = {n: raw.p_signal[:, i] for i, n in enumerate(raw.sig_name)}
    expected = np.stack([by_name[n.lower()] for n in CANONICAL])
    expected = scipy.signal.resample_poly(expected, 1, 4, axis=-1)
    assert ecg.signal.shape == (12, 2500) and ecg.fs == 250.0
    assert ecg.lead_present.all()
    assert ecg.repairs == {"leads_dropped": 3}
    assert ecg.repaired_leads == {"leads_dropped": ("vx", "vy", "vz")}   # as the file names them
    np.testing.assert_allclose(ecg.signal, expected, rtol=1e-5, atol=2e-5)


def test_limb_leads_derived_from_i_and_ii(broken):
    ecg = wfdb_records.read_record(broken["limb_i_ii_only"], target_fs=None)
    lead_i, lead_ii = ecg.signal[0].astype(np.float64), ecg.signal[1].astype(np.float64)
    raw = wfdb.rdrecord(broken["limb_i_ii_only"]).p_signal
    np.testing.assert_allclose(lead_i, raw[:, 0], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ecg.signal[2], lead_ii - lead_i, atol=1e-6)
    np.testing.assert_allclose(ecg.signal[3], -(lead_i + lead_ii) / 2, atol=1e-6)
    np.testing.assert_allclose(ecg.signal[4], lead_i - lead_ii / 2, atol=1e-6)
    np.testing.assert_allclose(ecg.signal[5], lead_ii - lead_i / 2, atol=1e-6)
    np.testing.assert_array_equal(ecg.lead_present, [True] * 6 + [False] * 6)
    assert not ecg.signal[6:].any()
    assert ecg.repairs == {"leads_derived": 4}
    assert ecg.repaired_leads == {"leads_derived": ("III", "aVR", "aVL", "aVF")}
    plain = wfdb_records.read_record(broken["limb_i_ii_only"], derive_limb_leads=False)
    np.testing.assert_array_equal(plain.lead_present, [True, True] + [False] * 10)
    assert not plain.signal[2:].any()


def test_nan_lead_zero_filled_and_flagged(broken):
    ecg = wfdb_records.read_record(broken["nan_lead"], target_fs=None)
    assert not ecg.lead_present[NAN_LEAD] and not ecg.signal[NAN_LEAD].any()
    assert ecg.lead_present.sum() == 11 and ecg.repairs == {"all_nan_leads": 1}
    assert ecg.repaired_leads == {"all_nan_leads": (CANONICAL[NAN_LEAD],)} and NAN_LEAD == 8
    raw = wfdb.rdrecord(broken["nan_lead"]).p_signal.T
    keep = np.arange(12) != NAN_LEAD
    np.testing.assert_allclose(ecg.signal[keep], raw[keep], rtol=1e-6, atol=1e-7)


def test_nan_samples_interpolated(broken):
    ecg = wfdb_records.read_record(broken["nan_samples"], target_fs=None)
    raw = wfdb.rdrecord(broken["nan_samples"]).p_signal.T
    lead, span = NAN_SAMPLES
    assert np.isnan(raw[lead, span]).all()
    left, right = raw[lead, span.start - 1], raw[lead, span.stop]
    steps = np.arange(1, 11) / 11.0
    np.testing.assert_allclose(ecg.signal[lead, span], left + (right - left) * steps, atol=1e-6)
    assert ecg.repairs == {"nan_replaced": 10} and ecg.lead_present.all()
    assert ecg.repaired_leads == {"nan_replaced": ("V1",)} and lead == 6


def test_zero_lead_flagged(broken):
    ecg = wfdb_records.read_record(broken["zero_lead"])
    assert not ecg.lead_present[ZERO_LEAD] and ecg.lead_present.sum() == 11
    assert ecg.repairs == {"flat_leads": 1}
    assert ecg.repaired_leads == {"flat_leads": ("V2",)} and ZERO_LEAD == 7


def test_microvolts_in_format_212(broken):
    ecg = wfdb_records.read_record(broken["microvolt_212"], target_fs=None)
    raw = wfdb.rdrecord(broken["microvolt_212"])
    assert raw.units[0] == "uV" and raw.fmt[0] == "212"
    np.testing.assert_allclose(ecg.signal, raw.p_signal.T / 1000.0, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("fmt", ["16", "61", "80", "160", "24", "32", "212", "516"])
def test_formats_match_wfdb(tmp_path, fmt):
    """Formats decoded by numpy (and FLAC 516, read through wfdb) agree with wfdb.rdrecord."""
    rng = np.random.default_rng(int(fmt))
    signal = rng.normal(0.0, 0.5, (3, 1001))  # Odd length: 212's last pair is half-filled.
    signal[1, 10:13] = np.nan  # Invalid samples become NaN, then get interpolated.
    gain = {"80": 50.0, "212": 400.0}.get(fmt, 1000.0)
    # wfdb cannot write 61 (big-endian) or 160 (offset binary): write 16 and re-encode by hand.
    write_fmt = "16" if fmt in ("61", "160") else fmt
    wfdb.wrsamp("f", fs=500, units=["mV"] * 3, sig_name=["V1", "II", "I"], p_signal=signal.T,
                fmt=[write_fmt] * 3, adc_gain=[gain] * 3, baseline=[3] * 3,
                write_dir=str(tmp_path))
    if fmt != write_fmt:
        dat, hea = tmp_path / "f.dat", tmp_path / "f.hea"
        values = np.frombuffer(dat.read_bytes(), "<i2")
        encoded = values.astype(">i2") if fmt == "61" else (values.astype(np.int32) + 32768
                                                            ).astype("<u2")
        dat.write_bytes(encoded.tobytes())
        hea.write_text(hea.read_text().replace("f.dat 16 ", f"f.dat {fmt} "))
    ref = wfdb.rdrecord(str(tmp_path / "f"))
    assert ref.fmt == [fmt] * 3
    ref = ref.p_signal.T
    ecg = wfdb_records.read_record(tmp_path / "f", target_fs=None, derive_limb_leads=False,
                                   min_seconds=None)
    valid = ~np.isnan(ref[1])
    assert valid.sum() == 1001 - 3
    np.testing.assert_allclose(ecg.signal[[6, 1, 0]][:, valid], ref[:, valid], rtol=1e-6,
                               atol=1e-7)
    assert ecg.repairs == {"nan_replaced": 3}


def test_header_parser_matches_wfdb(cinc_sample_dir, broken):
    paths = [str(p.with_suffix("")) for p in sorted(cinc_sample_dir.glob("*.hea"))[::7]]
    paths += [broken["frank_15lead_1khz"], broken["microvolt_212"]]
    for path in paths:
        ours, ref = wfdb_records.read_header(path), wfdb.rdheader(path)
        assert ours.fs == ref.fs and ours.sig_len == ref.sig_len
        assert [s.name for s in ours.signals] == ref.sig_name
        assert [s.adc_gain for s in ours.signals] == ref.adc_gain
        assert [s.baseline for s in ours.signals] == ref.baseline
        assert [s.units for s in ours.signals] == ref.units
        assert [s.fmt for s in ours.signals] == ref.fmt
        assert [s.byte_offset or None for s in ours.signals] == [
            b or None for b in (ref.byte_offset or [None] * ref.n_sig)]
        assert list(ours.comments) == ref.comments


@pytest.mark.parametrize("name,index", [
    ("I", 0), ("LEAD I", 0), ("lead_ii", 1), ("DI", 0), ("DII", 1), ("DIII", 2), ("iii", 2),
    ("AVR", 3), ("avl", 4), ("aVF", 5), ("v1", 6), ("V6", 11), ("C3", 8),
    ("-aVR", None), ("MLII", None), ("vx", None), ("Z", None), ("", None)])
def test_lead_aliases(name, index):
    assert leads.lead_index(name) == index


def test_files_never_modified(cinc_sample_dir, tmp_path):
    paths = make_broken_records(tmp_path)

    def snapshot():
        files = sorted(tmp_path.iterdir()) + sorted(cinc_sample_dir.glob("E0750*"))
        return {str(f): (os.stat(f).st_mtime_ns, hashlib.sha1(f.read_bytes()).hexdigest())
                for f in files}

    before = snapshot()
    for path in list(paths.values()) + [str(p)[:-4] for p in cinc_sample_dir.glob("E0750*.hea")]:
        try:
            wfdb_records.read_record(path)
        except ecg_lib.RecordError:
            pass
    assert snapshot() == before


def test_multi_segment_record_through_wfdb(tmp_path):
    names = CANONICAL[:6] + ["V1", "V2", "V3", "V4", "V5", "V6"]
    signal = np.random.default_rng(9).normal(0.0, 0.4, (12, 3000))
    for k in range(2):
        wfdb.wrsamp(f"seg{k}", fs=500, units=["mV"] * 12, sig_name=names,
                    p_signal=signal[:, k * 1500:(k + 1) * 1500].T, fmt=["16"] * 12,
                    adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(tmp_path))
    (tmp_path / "multi.hea").write_text("multi/2 12 500 3000\nseg0 1500\nseg1 1500\n"
                                        "# Dx: 164889003\n")
    ecg = wfdb_records.read_record(tmp_path / "multi", target_fs=None, derive_limb_leads=False)
    np.testing.assert_allclose(ecg.signal, signal, atol=0.5e-3 + 1e-6)  # One ADC step.
    assert ecg.meta["labels"] == ("164889003",) and ecg.lead_present.all()


def _two_segments(tmp_path, units: tuple[str, str]) -> np.ndarray:
    """multi.hea: two 1500-sample segments of 3 signals in uV, segment k stating units[k]."""
    signal_uv = np.random.default_rng(4).normal(0.0, 300.0, (3, 3000)).clip(-2000, 2000)
    for k in range(2):
        wfdb.wrsamp(f"seg{k}", fs=500, units=["uV"] * 3, sig_name=["I", "II", "V1"],
                    p_signal=signal_uv[:, k * 1500:(k + 1) * 1500].T, fmt=["16"] * 3,
                    adc_gain=[0.2] * 3, baseline=[0] * 3, write_dir=str(tmp_path))
        hea = tmp_path / f"seg{k}.hea"
        hea.write_bytes(hea.read_bytes().replace(b"/uV", b"/" + units[k].encode(
            "latin-1" if k else "utf-8")))
    (tmp_path / "multi.hea").write_text("multi/2 3 500 3000\nseg0 1500\nseg1 1500\n")
    return signal_uv


def test_multi_segment_units_are_read_from_the_segment_headers(tmp_path):
    """"µV" in a segment header (UTF-8 in one, Latin-1 in the other) is uV: wfdb, which reads
    headers as ASCII, had made it "V", volts, 10^6 times too large."""
    signal_uv = _two_segments(tmp_path, ("µV", "µV"))
    ecg = wfdb_records.read_record(tmp_path / "multi", target_fs=None, min_seconds=None,
                                   derive_limb_leads=False)
    # Half an ADC step (5 uV):
    np.testing.assert_allclose(ecg.signal[[0, 1, 6]], signal_uv / 1000, atol=0.0026)


def test_multi_segment_signal_with_two_units_is_refused(tmp_path):
    _two_segments(tmp_path, ("µV", "mV"))
    with pytest.raises(ecg_lib.RecordError, match=r"multi\.hea: signal 'I' has different units "
                       r"in its segments \('µV' in seg0\.hea, 'mV' in seg1\.hea\)") as err:
        wfdb_records.read_record(tmp_path / "multi", target_fs=None, min_seconds=None)
    assert err.value.reason == "bad_units"


@pytest.mark.parametrize("fmt", ["16", "516"])  # numpy's fast path; FLAC: wfdb.rdrecord's
@pytest.mark.parametrize("micro", ["µV".encode("utf-8"), "µV".encode("latin-1")],
                         ids=["utf8", "latin1"])
def test_micro_sign_units_in_utf8_or_latin1_headers(tmp_path, fmt, micro):
    """A header unit "µV" reads as uV in either encoding. Decoded as Latin-1 the UTF-8 spelling
    had been "ÂµV", refused as not a voltage; wfdb (which decodes headers as ASCII, dropping
    other bytes) had made either spelling "V", volts: 10^6 times too large."""
    rng = np.random.default_rng(0)
    signal_uv = rng.normal(0.0, 300.0, (3, 1500)).clip(-2000, 2000)
    wfdb.wrsamp("f", fs=500, units=["uV"] * 3, sig_name=["I", "II", "V1"], p_signal=signal_uv.T,
                fmt=[fmt] * 3, adc_gain=[0.2] * 3, baseline=[0] * 3, write_dir=str(tmp_path))
    want = wfdb_records.read_record(tmp_path / "f", target_fs=None, min_seconds=None)
    np.testing.assert_allclose(want.signal[[0, 1, 6]], signal_uv / 1000, atol=0.0026)
    hea = tmp_path / "f.hea"
    text = hea.read_bytes()
    assert text.count(b"/uV") == 3
    hea.write_bytes(text.replace(b"/uV", b"/" + micro))
    ecg = wfdb_records.read_record(tmp_path / "f", target_fs=None, min_seconds=None)
    np.testing.assert_array_equal(ecg.signal, want.signal)
