"""Augmentations: each checked against its definition with numpy."""
import numpy as np
import pytest

from crema_jax.data.signal import augment

FS = 250.0


def _ecg(seed=0, leads=12, length=2250):
    t = np.arange(length) / FS
    rng = np.random.default_rng(seed)
    return (np.sin(2 * np.pi * 1.2 * t)[None] * rng.uniform(0.5, 2, (leads, 1))).astype(np.float32)


def test_amplitude_scale_is_one_factor_in_range():
    x, valid = _ecg(), np.ones(12, bool)
    factors = []
    for seed in range(20):
        y, v = augment.amplitude_scale(x, valid, np.random.default_rng(seed),
                                       {"prob": 1.0, "low": 0.8, "high": 1.2}, FS)
        ratio = y / np.where(x == 0, 1, x)
        factor = ratio[x != 0].mean()
        np.testing.assert_allclose(ratio[x != 0], factor, rtol=1e-5)
        assert 0.8 <= factor <= 1.2 and v is valid and y.dtype == np.float32
        factors.append(factor)
    assert np.std(factors) > 0.02


def test_baseline_wander_is_low_frequency_and_spares_absent_leads():
    x = _ecg()
    valid = np.ones(12, bool)
    valid[3] = False
    x[3] = 0.0
    params = {"prob": 1.0, "max_amplitude": 0.3, "max_freq_hz": 0.5, "num_components": 2}
    y, _ = augment.baseline_wander(x, valid, np.random.default_rng(1), params, FS)
    added = (y - x).astype(np.float64)
    assert np.all(y[3] == 0)
    assert np.abs(added).max() <= 2 * 0.3 + 1e-6 and np.abs(added[valid]).max() > 0.01
    spectrum = np.abs(np.fft.rfft(added[valid], axis=1)) ** 2
    freqs = np.fft.rfftfreq(x.shape[1], 1 / FS)
    # Nearly all energy at or below max_freq_hz (leakage of a non-integer period aside).
    assert spectrum[:, freqs <= 1.0].sum() / spectrum.sum() > 0.98


def test_gaussian_noise_std_and_absent_leads():
    x = np.zeros((12, 5000), np.float32)
    valid = np.ones(12, bool)
    valid[0] = False
    y, _ = augment.gaussian_noise(x, valid, np.random.default_rng(2), {"prob": 1.0, "std": 0.1}, FS)
    assert np.all(y[0] == 0)
    assert abs(y[1:].std() - 0.1) < 0.003 and abs(y[1:].mean()) < 0.003


def test_time_shift_is_a_roll_within_range():
    x = np.random.default_rng(3).standard_normal((12, 2250)).astype(np.float32)
    shifts = set()
    for seed in range(10):
        y, _ = augment.time_shift(x, np.ones(12, bool), np.random.default_rng(seed),
                                  {"prob": 1.0, "max_shift_s": 0.5}, FS)
        matches = [k for k in range(-125, 126) if np.array_equal(y, np.roll(x, k, axis=1))]
        assert len(matches) == 1
        shifts.add(matches[0])
    assert len(shifts) > 3


def test_lead_drop_zeroes_and_invalidates_leads_keeping_one():
    x = _ecg() + 1.0
    valid = np.ones(12, bool)
    y, v = augment.lead_drop(x, valid, np.random.default_rng(4), {"prob": 1.0, "drop_prob": 0.5}, FS)
    assert 0 < (~v).sum() < 12
    assert np.all(y[~v] == 0) and np.array_equal(y[v], x[v])
    assert valid.all() and np.all(x != 0)  # Inputs untouched.
    for seed in range(20):  # drop_prob 1 still leaves exactly one lead.
        _, v = augment.lead_drop(x, valid, np.random.default_rng(seed),
                                 {"prob": 1.0, "drop_prob": 1.0}, FS)
        assert v.sum() == 1


@pytest.mark.parametrize("name", sorted(augment.AUGMENTS))
def test_prob_zero_is_identity(name):
    params = {"prob": 0.0, "low": 0.5, "high": 2.0, "max_amplitude": 1.0, "max_freq_hz": 0.5,
              "num_components": 2, "std": 1.0, "max_shift_s": 1.0, "drop_prob": 1.0}
    x, valid = _ecg(), np.ones(12, bool)
    y, v = augment.AUGMENTS[name](x, valid, np.random.default_rng(0), params, FS)
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(v, valid)


def test_apply_in_order_and_unknown_name():
    cfg = {"names": ("amplitude_scale", "lead_drop"),
           "amplitude_scale": {"prob": 1.0, "low": 2.0, "high": 2.0},
           "lead_drop": {"prob": 1.0, "drop_prob": 0.5}}
    x = _ecg()
    y, v = augment.apply_augmentations(x, np.ones(12, bool), np.random.default_rng(0), cfg, FS)
    np.testing.assert_allclose(y[v], 2 * x[v], rtol=1e-6)
    assert np.all(y[~v] == 0)
    with pytest.raises(ValueError, match="unknown augmentation 'flip'"):
        augment.apply_augmentations(x, np.ones(12, bool), np.random.default_rng(0),
                                    {"names": ("flip",)}, FS)
