"""canonical_ecg's windows: cut at the record's rate, checked for NaN, then resampled (ST-MEM's
order), against scipy applied by hand to the same slice."""
import numpy as np
import pytest
import scipy.signal

from crema_jax.data.reading.ecg import RecordError, Window, canonical_ecg, check_sampling_rate
from crema_jax.data.reading.leads import LEADS

FS = 500.0


def _raw(seconds: float, seed: int = 0) -> np.ndarray:
    """(T, 12) random-walk leads in mV."""
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.standard_normal((int(seconds * FS), 12)), axis=0) * 0.01


def _read(raw, **options):
    return canonical_ecg(raw, list(LEADS), ["mV"] * 12, FS, path="rec", target_fs=250.0,
                         resample_method="fft", nan_policy="drop_window", flat_leads="keep",
                         derive_limb_leads=False, **options)


def test_a_window_is_cut_at_the_record_rate_then_fft_resampled():
    raw = _raw(25.0)
    ecg = _read(raw, window=Window(1, 10.0))
    cut = raw[5000:10000].T.astype(np.float32)           # window 1: samples 5000..9999
    expected = scipy.signal.resample(cut.astype(np.float64), 2500, axis=-1)
    assert ecg.fs == 250.0 and ecg.signal.shape == (12, 2500)
    np.testing.assert_array_equal(ecg.signal, expected.astype(np.float32))


def test_nan_drops_only_its_window_and_a_partial_window_is_too_short():
    raw = _raw(25.0)
    raw[6000, 3] = np.nan                                 # inside window 1 (10-20 s)
    assert _read(raw, window=Window(0, 10.0)).signal.shape == (12, 2500)
    with pytest.raises(RecordError) as err:
        _read(raw, window=Window(1, 10.0))
    assert err.value.reason == "nan_window"
    assert str(err.value).startswith("window 1 (10 s) of rec holds NaN samples")
    with pytest.raises(RecordError) as err:
        _read(raw, window=Window(2, 10.0))                # 20-30 s: only 5 s recorded
    assert err.value.reason == "too_short"


def test_drop_window_without_windows_checks_the_whole_record():
    raw = _raw(10.0)
    raw[100, 0] = np.nan
    with pytest.raises(RecordError) as err:
        _read(raw)
    assert (err.value.reason, str(err.value)) == ("nan_window", "rec holds NaN samples "
                                                  "[nan_window]")


def test_samples_beyond_any_ecg_are_bad_units_not_silent_inf(tmp_path, cinc_sample_dir):
    """A header gain of 1e-300/mV made samples of ~1e300 mV: float32 turned them into inf (NaN
    features from embed, a cache row of zeros counted as good). Samples beyond 100 V, or
    infinite, are a skip naming the file; 30 V (raw 16-bit counts at 1 per mV) still reads."""
    raw = _raw(10.0)
    raw[100, 3] = 3e4
    assert _read(raw).signal[3].max() > 1e4
    for value in (2e5, np.inf, -np.inf):
        bad = raw.copy()
        bad[100, 3] = value
        with pytest.raises(RecordError) as err:
            _read(bad)
        assert err.value.reason == "bad_units" and "mV" in str(err.value)
    with_nan = raw.copy()
    with_nan[100:110, 3] = np.nan                 # NaN stays the NaN policy's to repair
    repaired = canonical_ecg(with_nan, list(LEADS), ["mV"] * 12, FS, path="rec")
    assert repaired.repairs["nan_replaced"] == 10

    from crema_jax.data.reading import wfdb_records
    header = (cinc_sample_dir / "E07500.hea").read_text()
    (tmp_path / "tiny.hea").write_text(header.replace("E07500", "tiny").replace(
        "1000.0(0)/mV", "1e-300(0)/mV"))
    (tmp_path / "tiny.mat").write_bytes((cinc_sample_dir / "E07500.mat").read_bytes())
    assert "1e-300(0)/mV" in (tmp_path / "tiny.hea").read_text()
    with pytest.raises(RecordError) as err:
        wfdb_records.read_record(str(tmp_path / "tiny"))
    assert err.value.reason == "bad_units" and "tiny" in str(err.value)


@pytest.mark.parametrize("fs, shown", [(49.99, "49.99"), (10_000.5, "10000.5"), ("nan", "nan"),
                                       (None, "None"), ("500 Hz", "500 Hz"), (-500, "-500")])
def test_a_sampling_rate_outside_50_to_10000_hz_is_a_bad_sampling_rate_skip(fs, shown):
    """Every reader checks a file's stated rate here (it had been written out six times)."""
    with pytest.raises(RecordError) as err:
        check_sampling_rate("rec", fs, "the header gives", file="rec.hea")
    assert err.value.reason == "bad_sampling_rate" and err.value.path == "rec"
    assert err.value.message == f"rec.hea: the header gives {shown} Hz, expected 50-10000 Hz"


def test_the_bounds_of_the_sampling_rate_are_accepted():
    assert check_sampling_rate("rec", "50", "rate") == 50.0
    assert check_sampling_rate("rec", 10_000, "rate") == 10_000.0


@pytest.mark.parametrize("fill", ["nan", "zero", "constant"])
def test_a_record_with_no_signal_is_skipped_on_a_path_keeping_flat_leads(fill):
    """ECGFounder's path (NaN -> 0, flat leads kept) had turned an all-NaN or all-flat record
    into zeros, and `predict` scored it 0.5 for every label without a word."""
    raw = {"nan": np.full((5000, 12), np.nan), "zero": np.zeros((5000, 12)),
           "constant": np.full((5000, 12), 0.3)}[fill]
    with pytest.raises(RecordError) as err:
        canonical_ecg(raw, LEADS, [""] * 12, 500.0, path="rec", target_fs=500.0,
                      nan_policy="zero", flat_leads="keep")
    assert err.value.reason == "no_signal"
    assert err.value.message.startswith("record rec: every lead is constant or NaN")


def test_one_varying_lead_is_signal_on_a_path_keeping_flat_leads():
    raw = np.full((5000, 12), np.nan)
    raw[:, 1] = np.sin(np.arange(5000) / 50.0)          # lead II alone, the rest NaN
    ecg = canonical_ecg(raw, LEADS, [""] * 12, 500.0, path="rec", target_fs=500.0,
                        nan_policy="zero", flat_leads="keep", derive_limb_leads=False)
    np.testing.assert_array_equal(ecg.signal[0], np.zeros(5000, np.float32))  # NaN -> 0, kept
    np.testing.assert_allclose(ecg.signal[1], np.sin(np.arange(5000) / 50.0), atol=1e-6)
    assert ecg.lead_present.all() and ecg.repairs["nan_zeroed"] == 11 * 5000
    # Fed as zeros, and named: every lead but II held no sample at all.
    assert ecg.repairs["all_nan_leads_zeroed"] == 11
    others = ("I", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6")
    assert ecg.repaired_leads == {"nan_zeroed": others, "all_nan_leads_zeroed": others}


def _founder(raw, **options):
    """ECGFounder's reading (NaN -> 0, flat leads kept) at the record's own rate."""
    return canonical_ecg(raw, list(LEADS), ["mV"] * 12, FS, path="rec", target_fs=FS,
                         nan_policy="zero", flat_leads="keep", **options)


@pytest.mark.parametrize("fill", ["nan", "zero", "constant"])
def test_held_limb_leads_without_signal_are_derived_by_einthoven_and_goldberger(fill):
    """III and aVF held but without signal (all NaN fed as zeros, all zero, or constant) had
    been fed as they were under derive_limb_leads, while a file lacking them had them derived:
    both now come from I and II by the formulas written here, and are said as derived only."""
    raw = _raw(10.0, seed=3)
    raw[:, [2, 5]] = {"nan": np.nan, "zero": 0.0, "constant": 0.3}[fill]
    ecg = _founder(raw, derive_limb_leads=True)
    lead_i, lead_ii = raw[:, 0], raw[:, 1]
    np.testing.assert_allclose(ecg.signal[2], lead_ii - lead_i, atol=1e-5)        # III
    np.testing.assert_allclose(ecg.signal[5], lead_ii - lead_i / 2, atol=1e-5)    # aVF
    np.testing.assert_allclose(ecg.signal[3], raw[:, 3], atol=1e-6)   # aVR: held, kept
    assert ecg.lead_present.all()
    assert ecg.repairs["leads_derived"] == 2 and ecg.repaired_leads["leads_derived"] == (
        "III", "aVF")
    assert "all_nan_leads_zeroed" not in ecg.repairs and "flat_leads_kept" not in ecg.repairs


def test_held_i_without_signal_is_derived_from_ii_and_iii_then_avr_and_avl_from_i_and_ii():
    raw = _raw(10.0, seed=4)
    raw[:, [0, 3, 4]] = 0.0                              # I, aVR, aVL flat
    ecg = _founder(raw, derive_limb_leads=True)
    lead_i = raw[:, 1] - raw[:, 2]                       # I = II - III
    np.testing.assert_allclose(ecg.signal[0], lead_i, atol=1e-5)
    np.testing.assert_allclose(ecg.signal[3], -(lead_i + raw[:, 1]) / 2, atol=1e-5)  # aVR
    np.testing.assert_allclose(ecg.signal[4], lead_i - raw[:, 1] / 2, atol=1e-5)     # aVL
    assert ecg.repaired_leads == {"leads_derived": ("I", "aVR", "aVL")}


def test_a_flat_lead_fed_to_the_model_is_said_like_an_absent_one():
    """A flat aVF kept (no derivation asked, or its inputs I and II flat too) is named
    "flat_leads_kept", a note beside the repairs, as a lead not in the file is."""
    from crema_jax.data.reading import repairs
    raw = _raw(10.0, seed=5)
    raw[:, 5] = 0.0
    ecg = _founder(raw, derive_limb_leads=False)
    np.testing.assert_array_equal(ecg.signal[5], np.zeros(5000, np.float32))
    assert ecg.repairs == {"flat_leads_kept": 1}
    assert ecg.repaired_leads == {"flat_leads_kept": ("aVF",)}
    assert repairs.describe(ecg.repairs, ecg.repaired_leads) == "flat leads fed as recorded (aVF)"
    assert repairs.summary([("R", ecg.repairs, ecg.repaired_leads)], 2) == (
        "1 of 2 records lacking some leads the model reads: flat leads fed as recorded in 1: "
        "R (aVF)")
    raw[:, [0, 1]] = 0.0                                 # I and II flat: nothing to derive from
    ecg = _founder(raw, derive_limb_leads=True)
    assert ecg.repaired_leads == {"flat_leads_kept": ("I", "II", "aVF")}
