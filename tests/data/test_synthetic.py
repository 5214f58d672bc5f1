"""Synthetic ECGs: shape, determinism, heart rate and lead identities; the WFDB writer."""
import numpy as np
import pytest
import scipy.signal
import wfdb

from crema_jax.data import synthetic
from crema_jax.data.reading import wfdb_records


def _heart_rate(lead: np.ndarray, fs: float) -> float:
    """Beats per minute from R peaks: QRS band-pass, squared, peaks >= 0.3 s apart."""
    sos = scipy.signal.butter(2, [5.0, 20.0], "bandpass", fs=fs, output="sos")
    energy = scipy.signal.sosfiltfilt(sos, lead.astype(np.float64)) ** 2
    peaks, _ = scipy.signal.find_peaks(energy, height=0.3 * energy.max(), distance=int(0.3 * fs))
    return 60.0 / (np.diff(peaks).mean() / fs)


def test_shape_dtype_and_determinism():
    x = synthetic.synthetic_ecg(3)
    assert x.shape == (12, 5000) and x.dtype == np.float32
    np.testing.assert_array_equal(x, synthetic.synthetic_ecg(3))
    assert not np.allclose(x, synthetic.synthetic_ecg(4))
    assert synthetic.synthetic_ecg(3, seconds=2.0, fs=250.0).shape == (12, 500)
    # Plausible amplitudes: R waves around 1 mV, nothing beyond a few mV.
    assert 0.3 < np.abs(x).max() < 5.0


@pytest.mark.parametrize("seed,bpm,fs", [(0, 50.0, 500.0), (1, 72.0, 500.0), (2, 95.0, 250.0),
                                         (3, 120.0, 500.0), (14, 55.0, 500.0)])
def test_heart_rate_within_ten_percent(seed, bpm, fs):
    x = synthetic.synthetic_ecg(seed, seconds=10.0, fs=fs, heart_rate=bpm, af=False)
    assert abs(_heart_rate(x[1], fs) / bpm - 1.0) < 0.10


def test_drawn_heart_rate_matches_synthetic_labels():
    for seed in range(5):
        bpm, af = synthetic.synthetic_labels(seed)
        assert 50.0 <= bpm <= 120.0
        if not af:
            x = synthetic.synthetic_ecg(seed)
            assert abs(_heart_rate(x[1], 500.0) / bpm - 1.0) < 0.10


def test_af_rhythm_is_irregular():
    fs = 500.0
    sos = scipy.signal.butter(2, [5.0, 20.0], "bandpass", fs=fs, output="sos")

    def rr_spread(af):
        x = synthetic.synthetic_ecg(11, seconds=30.0, heart_rate=80.0, af=af)
        energy = scipy.signal.sosfiltfilt(sos, x[1].astype(np.float64)) ** 2
        peaks, _ = scipy.signal.find_peaks(energy, height=0.3 * energy.max(),
                                           distance=int(0.25 * fs))
        rr = np.diff(peaks) / fs
        return rr.std() / rr.mean()

    assert rr_spread(False) < 0.06 < 0.1 < rr_spread(True)


def test_einthoven_and_goldberger_identities():
    x = synthetic.synthetic_ecg(5).astype(np.float64)
    lead_i, lead_ii = x[0], x[1]
    np.testing.assert_allclose(x[2], lead_ii - lead_i, atol=1e-6)
    np.testing.assert_allclose(x[3], -(lead_i + lead_ii) / 2, atol=1e-6)
    np.testing.assert_allclose(x[4], lead_i - lead_ii / 2, atol=1e-6)
    np.testing.assert_allclose(x[5], lead_ii - lead_i / 2, atol=1e-6)
    # aVR + aVL + aVF = 0 (Goldberger).
    np.testing.assert_allclose(x[3] + x[4] + x[5], 0.0, atol=1e-6)


@pytest.mark.parametrize("fmt,step", [("16", 1e-3), ("212", 5e-3)])
def test_write_synthetic_wfdb(tmp_path, fmt, step):
    paths = synthetic.write_synthetic_wfdb(tmp_path, 3, fs=500, seconds=4.0, seed=20, fmt=fmt)
    assert paths == [str(tmp_path / f"SYN{k:05d}") for k in range(3)]
    for k, path in enumerate(paths):
        raw = wfdb.rdrecord(path)
        assert raw.fmt == [fmt] * 12 and raw.fs == 500 and raw.sig_len == 2000
        expected = synthetic.synthetic_ecg(20 + k, seconds=4.0, fs=500)
        # Quantised to one ADC step (1/gain mV).
        np.testing.assert_allclose(raw.p_signal.T, expected, atol=step / 2 + 1e-6)
        bpm, af = synthetic.synthetic_labels(20 + k)
        dx = [c for c in raw.comments if c.startswith("Dx:")][0][3:].strip().split(",")
        assert dx[0] == ("164889003" if af else "426783006")
        assert ("427084000" in dx) == (bpm > 100) and ("426177001" in dx) == (bpm < 60)
        ecg = wfdb_records.read_record(path)
        assert ecg.signal.shape == (12, 1000) and ecg.lead_present.all()


def test_axis_shift_turns_the_frontal_axis_by_the_angle():
    """Without noise or wander, the frontal-plane net vector of the whole record (x = lead I,
    y = (II - I/2) / sin 60 from the lead vectors at 0 and 60 degrees) turns by the angle."""
    from crema_jax.data import synthetic

    def angle(x):
        lead_i, lead_ii = x[0].astype(np.float64).sum(), x[1].astype(np.float64).sum()
        return np.degrees(np.arctan2((lead_ii - 0.5 * lead_i) / np.sin(np.pi / 3), lead_i))

    quiet = dict(noise_mv=0.0, wander_mv=0.0)
    base = angle(synthetic.synthetic_ecg(7, **quiet))
    for shift in (-60.0, 90.0):
        turned = angle(synthetic.synthetic_ecg(7, axis_shift_deg=shift, **quiet))
        assert abs((turned - base - shift + 180) % 360 - 180) < 0.05


def test_wide_qrs_widens_the_r_wave():
    """Full width at half maximum of the R wave in lead II (noise off): ~2.2x wider."""
    from crema_jax.data import synthetic

    def fwhm(x, fs=2000.0):
        lead = x[1].astype(np.float64)
        peak = int(np.argmax(lead))
        half = lead[peak] / 2
        left = peak
        while lead[left] > half:
            left -= 1
        right = peak
        while lead[right] > half:
            right += 1
        return (right - left) / fs

    quiet = dict(noise_mv=0.0, wander_mv=0.0, fs=2000.0, heart_rate=60.0, af=False)
    ratio = fwhm(synthetic.synthetic_ecg(4, qrs_width_scale=2.2, **quiet)) / fwhm(
        synthetic.synthetic_ecg(4, **quiet))
    assert 1.8 < ratio < 2.6  # Q and S overlap R's flanks: not exactly 2.2


def test_factor_labels_follow_the_drawn_factors(tmp_path):
    import wfdb

    from crema_jax.data import synthetic

    paths = synthetic.write_synthetic_wfdb(tmp_path, 40, fs=250.0, seconds=2.0, seed=100,
                                           factors=True)
    seen = set()
    for k, path in enumerate(paths):
        drawn = synthetic.record_factors(100 + k)
        dx = [c for c in wfdb.rdheader(path).comments if c.startswith("Dx:")][0]
        codes = set(dx[3:].strip().split(","))
        for name in ("lad", "rad", "wide_qrs"):
            assert (synthetic.SNOMED[name] in codes) == (name in drawn["labels"])
        seen.update(drawn["labels"])
        signal = wfdb.rdrecord(path).p_signal.T
        expected = synthetic.synthetic_ecg(100 + k, 2.0, 250.0,
                                           axis_shift_deg=drawn["axis_shift_deg"],
                                           qrs_width_scale=drawn["qrs_width_scale"])
        np.testing.assert_allclose(signal, expected, atol=1e-3)  # 16-bit at 1000/mV
    assert seen == {"lad", "rad", "wide_qrs"}
