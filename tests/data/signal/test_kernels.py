"""The compiled preprocessing loops against independent references: numpy's median of every
window (sliding_window_view), scipy.signal.medfilt, filtfilt and sosfiltfilt."""
import numpy as np
import pytest
import scipy.signal

from crema_jax.data.signal import kernels


def _median_reference(p, width):
    return np.median(np.lib.stride_tricks.sliding_window_view(p, width, axis=-1), axis=-1)


def _signals(rng, shape, width):
    """Signals that stress the sort: continuous, many exact ties, zero-padded edges, values
    closer than the packed key keeps apart (1e-15 apart around 1), both signs and -0.0."""
    ecg_like = np.cumsum(rng.standard_normal(shape), axis=-1) * 0.01
    ties = rng.integers(-3, 4, shape).astype(np.float64)
    padded = np.pad(ecg_like, [(0, 0)] * (len(shape) - 1) + [(width // 2, width // 2)])
    near = 1.0 + rng.integers(0, 50, shape) * 1e-15
    signs = -rng.exponential(size=shape) * (rng.random(shape) < 0.5)
    signs[..., ::7] = -0.0
    return [ecg_like, ties, padded, near, signs]


@pytest.mark.parametrize("width", [1, 3, 5, 201, 401])
def test_running_median_equals_the_median_of_every_window(width):
    rng = np.random.default_rng(width)
    for n in (width, 2 * width, 3 * width + 17, 5000 + 2 * (width // 2)):
        for p in _signals(rng, (3, n), width):
            got = kernels.running_median(p, width)
            np.testing.assert_array_equal(got, _median_reference(p, width))


def test_running_median_keeps_leading_axes_and_equals_medfilt_on_zero_padding():
    rng = np.random.default_rng(0)
    x = np.cumsum(rng.standard_normal((2, 12, 5000)), axis=-1) * 0.01
    padded = np.pad(x, [(0, 0), (0, 0), (100, 100)])
    got = kernels.running_median(padded, 201)
    assert got.shape == x.shape
    np.testing.assert_array_equal(got, scipy.signal.medfilt(x, [1, 1, 201]))


def test_running_median_refuses_bad_input_with_the_reason():
    with pytest.raises(ValueError, match="positive odd"):
        kernels.running_median(np.zeros(10), 4)
    with pytest.raises(ValueError, match="at least 5 samples, got 3"):
        kernels.running_median(np.zeros(3), 5)
    x = np.zeros(10)
    x[4] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        kernels.running_median(x, 3)


_DESIGNS = [
    scipy.signal.butter(4, (0.67, 40.0), btype="bandpass", fs=500.0),  # ECGFounder's band-pass
    scipy.signal.iirnotch(50.0, 30.0, fs=500.0),                        # and its notch
    scipy.signal.butter(2, 0.5, btype="highpass", fs=250.0),
]


@pytest.mark.parametrize("design", range(len(_DESIGNS)))
@pytest.mark.parametrize("shape", [(5000,), (12, 5000), (3, 4, 2554)])
def test_filtfilt_equals_scipy(design, shape):
    b, a = _DESIGNS[design]
    x = np.cumsum(np.random.default_rng(1).standard_normal(shape), axis=-1) * 0.01
    padlen = 3 * max(len(a), len(b))
    got = kernels.filtfilt(b, a, scipy.signal.lfilter_zi(b, a), x, padlen)
    np.testing.assert_allclose(got, scipy.signal.filtfilt(b, a, x, axis=-1), rtol=1e-12,
                               atol=1e-15)


def test_filtfilt_of_a_signal_shorter_than_the_padding_pads_all_it_has():
    b, a = _DESIGNS[0]
    x = np.random.default_rng(2).standard_normal((2, 20))  # padlen 27 > 19
    got = kernels.filtfilt(b, a, scipy.signal.lfilter_zi(b, a), x, 27)
    np.testing.assert_allclose(got, scipy.signal.filtfilt(b, a, x, padlen=19), rtol=1e-12,
                               atol=1e-15)
    with pytest.raises(ValueError, match="need at least 2"):
        kernels.filtfilt(b, a, scipy.signal.lfilter_zi(b, a), x[:, :1], 27)


@pytest.mark.parametrize("order,cut,kind,fs", [(5, 0.67, "highpass", 500.0),
                                               (5, 40.0, "lowpass", 250.0),
                                               (4, (0.5, 45.0), "bandpass", 400.0)])
@pytest.mark.parametrize("shape", [(12, 5000), (3, 12, 2500)])
def test_sosfiltfilt_equals_scipy(order, cut, kind, fs, shape):
    sos = scipy.signal.butter(order, cut, btype=kind, fs=fs, output="sos")
    x = np.cumsum(np.random.default_rng(3).standard_normal(shape), axis=-1) * 0.01
    padlen = 3 * (2 * len(sos) + 1 - min((sos[:, 2] == 0).sum(), (sos[:, 5] == 0).sum()))
    got = kernels.sosfiltfilt(sos, scipy.signal.sosfilt_zi(sos), x, padlen)
    np.testing.assert_allclose(got, scipy.signal.sosfiltfilt(sos, x, axis=-1), rtol=1e-12,
                               atol=1e-15)
