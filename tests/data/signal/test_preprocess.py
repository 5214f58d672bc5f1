"""Preprocessing against analytic filter responses, scipy's own filters and numpy by hand."""
import numpy as np
import pytest
import scipy.ndimage
import scipy.signal

from crema_jax.data import presets
from crema_jax.data.signal import filters
from crema_jax.data.signal import preprocess

FS = 250.0


def _amplitude(y: np.ndarray, freq: float, fs: float) -> float:
    """Least-squares amplitude of a sinusoid of `freq` in y (1-D)."""
    t = np.arange(y.size) / fs
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)], axis=1)
    coef, *_ = np.linalg.lstsq(basis, y, rcond=None)
    return float(np.hypot(*coef))


def _response_db(cfg, freqs, fs=FS, seconds=120.0):
    """Measured gain in dB of `preprocess` (filters only) at each frequency, away from edges."""
    t = np.arange(int(seconds * fs)) / fs
    x = np.sin(2 * np.pi * np.asarray(freqs)[:, None] * t)
    y = preprocess.preprocess(x, fs, cfg).astype(np.float64)
    mid = slice(int(20 * fs), int((seconds - 20) * fs))
    return np.array([20 * np.log10(_amplitude(y[i, mid], f, fs)) for i, f in enumerate(freqs)])


def _filters_only(name):
    cfg = presets.preprocessing(name)
    cfg.normalise, cfg.notch_hz, cfg.baseline = "none", None, "none"
    return cfg


def test_stmem_cascade_matches_analytic_zero_phase_response():
    freqs = [0.3, 0.67, 1.0, 5.0, 15.0, 30.0, 40.0, 55.0, 100.0]
    # Zero-phase filtering squares each filter's magnitude response.
    hp = scipy.signal.butter(5, 0.67, "highpass", fs=FS, output="sos")
    lp = scipy.signal.butter(5, 40.0, "lowpass", fs=FS, output="sos")
    h = np.abs(scipy.signal.sosfreqz(hp, freqs, fs=FS)[1] * scipy.signal.sosfreqz(lp, freqs,
                                                                                  fs=FS)[1])
    expected = 20 * np.log10(h ** 2)
    measured = _response_db(_filters_only("stmem"), freqs)
    np.testing.assert_allclose(measured, expected, atol=0.05)
    assert abs(measured[1] - (-6.02)) < 0.1 and abs(measured[6] - (-6.02)) < 0.1
    assert measured[-1] < -39.0


def test_ecgfounder_bandpass_response_at_500hz():
    freqs = [0.1, 0.67, 10.0, 40.0, 100.0]
    cfg = _filters_only("ecgfounder")
    bp = scipy.signal.butter(4, [0.67, 40.0], "bandpass", fs=500.0, output="sos")
    expected = 20 * np.log10(np.abs(scipy.signal.sosfreqz(bp, freqs, fs=500.0)[1]) ** 2)
    measured = _response_db(cfg, freqs, fs=500.0)
    np.testing.assert_allclose(measured[1:], expected[1:], atol=0.05)
    assert measured[0] < -60.0 and measured[-1] < -40.0  # 0.1 Hz and 100 Hz are gone.


def test_stmem_equals_scipy_pipeline_by_hand():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 2500)).cumsum(axis=1) * 0.01 + rng.normal(size=(12, 2500))
    hp = scipy.signal.butter(5, 0.67, "highpass", fs=FS, output="sos")
    lp = scipy.signal.butter(5, 40.0, "lowpass", fs=FS, output="sos")
    y = scipy.signal.sosfiltfilt(lp, scipy.signal.sosfiltfilt(hp, x, axis=-1), axis=-1)
    expected = (y - y.mean()) / y.std()
    out = preprocess.preprocess(x, FS, preprocess.default_preprocess_config())
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_ecgfounder_equals_scipy_pipeline_by_hand():
    """ECGFounder's released code (docs/reference/ecgfounder.md): notch and band-pass in (b, a) form
    with filtfilt, scipy.signal.medfilt (zero-padded edges) baseline, z-score with std + 1e-8."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(12, 5000)) + np.linspace(0, 3, 5000)
    b, a = scipy.signal.iirnotch(50.0, 30.0, fs=500.0)
    y = scipy.signal.filtfilt(b, a, x, axis=-1)
    b, a = scipy.signal.butter(N=4, Wn=[0.67, 40], btype="bandpass", fs=500.0)
    y = scipy.signal.filtfilt(b, a, y, axis=-1)
    y = y - np.stack([scipy.signal.medfilt(r, 201) for r in y])
    expected = (y - y.mean()) / (y.std() + 1e-8)
    out = preprocess.preprocess(x, 500.0, presets.preprocessing("ecgfounder"))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_short_signals_filter_with_shorter_padding():
    # scipy's default padding for these order-5 filters is 18 samples: a 12-sample crop
    # would be refused; the padding shrinks to 11.
    x = np.random.default_rng(2).normal(size=(12, 12))
    hp = scipy.signal.butter(5, 0.67, "highpass", fs=FS, output="sos")
    lp = scipy.signal.butter(5, 40.0, "lowpass", fs=FS, output="sos")
    with pytest.raises(ValueError):
        scipy.signal.sosfiltfilt(hp, x)
    expected = scipy.signal.sosfiltfilt(lp, scipy.signal.sosfiltfilt(hp, x, padlen=11), padlen=11)
    cfg = _filters_only("stmem")
    np.testing.assert_allclose(preprocess.preprocess(x, FS, cfg), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="1 sample"):
        preprocess.preprocess(x[:, :1], FS, cfg)
    with pytest.raises(ValueError, match="Nyquist"):
        filters.butterworth(x, 60.0, low_hz=0.67, high_hz=40.0, order=5)


def test_global_normalisation_by_hand():
    x = np.random.default_rng(3).normal(2.0, 3.0, size=(12, 500))
    out = filters.normalise(x, "global")
    np.testing.assert_allclose(out, (x - x.mean()) / x.std(), rtol=1e-10)
    present = np.array([True] * 6 + [False] * 6)
    x[~present] = 0.0
    out = filters.normalise(x, "global", lead_present=present)
    rows = x[:6]
    np.testing.assert_allclose(out[:6], (rows - rows.mean()) / rows.std(), rtol=1e-10)
    assert not out[6:].any()


def test_per_lead_normalisation_by_hand():
    x = np.random.default_rng(4).normal(size=(12, 500)) * np.arange(1, 13)[:, None]
    x[3] = 5.0  # A flat lead: std 0 -> zeros.
    out = filters.normalise(x, "per_lead")
    for i in range(12):
        expected = np.zeros(500) if i == 3 else (x[i] - x[i].mean()) / x[i].std()
        np.testing.assert_allclose(out[i], expected, rtol=1e-10, atol=1e-12)


def test_zero_std_gives_zeros_and_none_is_identity():
    x = np.full((12, 300), 0.7)
    assert not preprocess.preprocess(x, FS, preprocess.default_preprocess_config()).any()
    assert not filters.normalise(x, "global").any()
    y = np.random.default_rng(5).normal(size=(12, 300))
    np.testing.assert_array_equal(preprocess.preprocess(y, FS, presets.preprocessing("none")),
                                  y.astype(np.float32))
    with pytest.raises(ValueError, match="normalise"):
        filters.normalise(y, "minmax")


def test_notch_removes_50hz_and_keeps_10hz():
    fs = 500.0
    t = np.arange(int(30 * fs)) / fs
    x = np.stack([np.sin(2 * np.pi * 10.0 * t) + 0.5 * np.sin(2 * np.pi * 50.0 * t)] * 2)
    y = filters.notch(x, fs, freq_hz=50.0, q=30.0)
    mid = slice(int(5 * fs), int(25 * fs))
    assert _amplitude(y[0, mid], 50.0, fs) < 0.005
    assert abs(_amplitude(y[0, mid], 10.0, fs) - 1.0) < 0.01


def test_median_baseline_removes_slow_ramp():
    fs = 500.0
    n = 5000
    ramp = np.linspace(-1.0, 2.0, n)
    spikes = np.zeros(n)
    spikes[::400] = 1.5  # Sparse narrow peaks: the running median ignores them.
    x = np.stack([ramp + spikes, 2 * ramp])
    y = filters.median_baseline(x, fs, window_s=0.4)
    interior = slice(100, n - 100)  # 201-sample window fully inside the signal.
    np.testing.assert_allclose(y[1, interior], 0.0, atol=1e-9)
    np.testing.assert_allclose(y[0, interior], spikes[interior], atol=1e-3)
    medfilt = scipy.signal.medfilt(x[0], 201)  # Reference (zero-padded edges, so interior only).
    np.testing.assert_allclose(y[0, interior], (x[0] - medfilt)[interior], atol=1e-12)


def test_clip_and_preset_fields():
    cfg = presets.preprocessing("crema")
    cfg.clip = 0.5
    x = np.random.default_rng(6).normal(size=(12, 2500))
    out = preprocess.preprocess(x, FS, cfg)
    assert out.max() == pytest.approx(0.5) and out.min() == pytest.approx(-0.5)
    ecgf = presets.preprocessing("ecgfounder")
    assert (ecgf.filter_type, ecgf.filter_order, ecgf.filter_form, ecgf.notch_hz, ecgf.notch_q,
            ecgf.baseline, ecgf.baseline_edges, ecgf.norm_eps, ecgf.stats) == (
                "bandpass", 4, "ba", 50.0, 30.0, "median", "zero", 1e-8, "all")
    crema = preprocess.default_preprocess_config()
    assert (crema.stage, crema.filter_type, crema.filter_order, crema.low_hz, crema.high_hz,
            crema.notch_hz, crema.baseline, crema.normalise, crema.clip, crema.stats) == (
                "record", "cascade", 5, 0.67, 40.0, None, "none", "global", None, "present")
    stmem = presets.preprocessing("stmem")
    assert (stmem.stage, stmem.filter_type, stmem.filter_form, stmem.stats) == (
        "crop", "cascade", "sos", "all")


def test_absent_leads_stay_zero():
    x = np.random.default_rng(7).normal(size=(12, 2500))
    present = np.ones(12, bool)
    present[[2, 9]] = False
    x[~present] = 0.0
    out = preprocess.preprocess(x, FS, preprocess.default_preprocess_config(), lead_present=present)
    assert not out[~present].any()
    assert abs(out[present].mean()) < 1e-6 and abs(out[present].std() - 1.0) < 1e-5


def test_plain_dict_config_gives_the_same_result():
    x = np.random.default_rng(8).normal(size=(12, 1000))
    cfg = presets.preprocessing("ecgfounder")
    np.testing.assert_array_equal(preprocess.preprocess(x, 500.0, cfg.to_dict()),
                                  preprocess.preprocess(x, 500.0, cfg))


@pytest.mark.parametrize("name", ["stmem", "ecgfounder"])
def test_stacked_crops_are_each_preprocessed_on_their_own(name):
    """(C, leads, T): every crop gets its own filters and statistics, one flat crop zeros,
    checked against scipy's filters and numpy's z-score written here crop by crop."""
    fs = 250.0 if name == "stmem" else 500.0
    rng = np.random.default_rng(11)
    crops = rng.normal(size=(3, 12, 2250)) * np.array([1.0, 5.0, 0.0])[:, None, None] + 0.3
    got = preprocess.preprocess(crops, fs, presets.preprocessing(name))
    for c in range(3):
        x = crops[c]
        if name == "stmem":
            for btype, hz in (("highpass", 0.67), ("lowpass", 40.0)):
                x = scipy.signal.sosfiltfilt(scipy.signal.butter(5, hz, btype, fs=fs,
                                                                 output="sos"), x, axis=-1)
            eps = 0.0
        else:
            b, a = scipy.signal.iirnotch(50.0, 30.0, fs=fs)
            x = scipy.signal.filtfilt(b, a, x, axis=-1)
            b, a = scipy.signal.butter(4, (0.67, 40.0), "bandpass", fs=fs)
            x = scipy.signal.filtfilt(b, a, x, axis=-1)
            x = x - np.stack([scipy.signal.medfilt(row, 201) for row in x])
            eps = 1e-8
        expected = np.zeros_like(x) if c == 2 else (x - x.mean()) / (x.std() + eps)
        np.testing.assert_allclose(got[c], expected, rtol=1e-5, atol=1e-5)
    assert not got[2].any()
