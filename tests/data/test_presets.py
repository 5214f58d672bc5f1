"""The peers' data paths (data/presets.py) against implementations written here, with wfdb and
scipy, from the facts of docs/reference/stmem.md ("Its data path, file to features") and
docs/reference/ecgfounder.md ("Its data path exactly"): windows, FFT resampling, crop THEN
filter, per-crop statistics, std = 0, crop starts, probability averaging, medfilt edges."""
import numpy as np
import pytest
import scipy.signal
import wfdb

from crema_jax.data import config as config_lib
from crema_jax.data import presets
from crema_jax.data.index import dataset_index
from crema_jax.data.reading.leads import LEADS
from crema_jax.data.pipeline import batch
from crema_jax.data.pipeline import datasets
from crema_jax.data.pipeline import skips
from crema_jax.data.pipeline import sources
from crema_jax.data.reading import ecg as ecg_lib
from crema_jax.data.signal import filters
from crema_jax.data.signal import preprocess

FS = 500.0


def _write(folder, name, seconds, *, seed, nan_at=None, flat=()):
    """A 12-lead record in mV (smooth random walk plus beats), optionally NaN samples and
    constant leads (`flat`: (lead index, value) pairs)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * FS)
    t = np.arange(n) / FS
    x = 0.05 * np.cumsum(rng.normal(size=(n, 12)), 0) / np.sqrt(FS) \
        + np.sin(2 * np.pi * 1.2 * t)[:, None] * rng.uniform(0.5, 1.5, 12)
    if nan_at is not None:
        x[nan_at:nan_at + 10] = np.nan
    for lead, value in flat:
        x[:, lead] = value
    wfdb.wrsamp(name, fs=FS, units=["mV"] * 12, sig_name=list(LEADS), p_signal=x,
                fmt=["16"] * 12, adc_gain=[1000.0] * 12, baseline=[0] * 12,
                write_dir=str(folder))
    return str(folder / name)


def _rdsamp(path):
    """ST-MEM's step 1: wfdb.rdsamp in physical units, the 12 leads by exact name, (12, T)."""
    signal, fields = wfdb.rdsamp(path)
    order = [fields["sig_name"].index(name) for name in LEADS]
    return signal[:, order].T


def _stmem_crop(x):
    """Step 4 on one crop: order-5 high-pass 0.67 Hz, then order-5 low-pass 40 Hz (two
    sosfiltfilt passes at 250 Hz), then one mean and one population std; std 0 -> zeros."""
    x = np.asarray(x, np.float64)
    for cut, kind in ((0.67, "highpass"), (40.0, "lowpass")):
        x = scipy.signal.sosfiltfilt(scipy.signal.butter(5, cut, kind, fs=250.0, output="sos"),
                                     x, axis=-1)
    std = x.std()
    return np.zeros_like(x) if std == 0 else (x - x.mean()) / std


def _data_cfg(preset, **fields):
    cfg = presets.apply(config_lib.default_data_config(), preset)
    cfg.split, cfg.num_epochs, cfg.batch_size = "", 1, 2
    for key, value in fields.items():
        cfg[key] = value
    return cfg


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("presets")
    return {"r35": _write(root, "R35", 35.0, seed=0), "r9": _write(root, "R9", 9.0, seed=1),
            "rnan": _write(root, "RNAN", 25.0, seed=2, nan_at=int(13 * FS)),
            "rflat": _write(root, "RFLAT", 10.0, seed=5, flat=((8, 0.3), (10, 0.0)))}


def _source(paths, cfg):
    infos = [dataset_index.RecordInfo(dataset_index.record_id_of(p), p, (), "", "") for p in paths]
    return sources.WfdbSource(infos, [], reading=sources.Reading.from_data_config(cfg))


def test_stmem_windows_fft_resampling_and_skips(folder):
    cfg = _data_cfg("stmem")
    source = _source([folder["r35"], folder["r9"], folder["rnan"]], cfg)
    # 35 s -> 3 windows (5 s remainder dropped), 9 s -> one placeholder skipped as too short,
    # 25 s -> 2 windows, the second of which holds NaN.
    assert len(source) == 6
    np.testing.assert_array_equal(source.record_rows, [0, 0, 0, 1, 2, 2])
    raw = _rdsamp(folder["r35"])
    for k in range(3):
        want = scipy.signal.resample(raw[:, k * 5000:(k + 1) * 5000], 2500, axis=-1)
        got = source.load(source[k])
        assert got["signal"].shape == (12, 2500)
        np.testing.assert_allclose(got["signal"], want, rtol=1e-5, atol=1e-5)  # unfiltered yet
    with pytest.raises(ecg_lib.RecordError) as short:
        source.load(source[3])
    assert short.value.reason == "too_short"
    source.load(source[4])
    with pytest.raises(ecg_lib.RecordError) as nan:
        source.load(source[5])
    assert nan.value.reason == "nan_window" and "window 1" in str(nan.value)
    stats = skips.SkipStats()
    batches = list(datasets.make_eval_dataset(cfg, source=source, process_index=0,
                                              process_count=1, stats=stats))
    assert dict(stats.counts) == {"too_short": 1, "nan_window": 1}
    assert sum(int(b["valid"].sum()) for b in batches) == 4


def test_an_example_is_named_by_its_record_and_window_on_a_windowed_path_only(folder):
    """The "ID#k" names of embed, predict and the evaluation reports: window k of a record cut
    into windows (ST-MEM's path), the record's id alone where records are not cut (crema's, and
    an array source on any path)."""
    paths = [folder["r35"], folder["rnan"]]
    windowed = _source(paths, _data_cfg("stmem"))
    examples = [4, 0, 2, 3]        # of R35's three 10 s windows, then RNAN's two
    got = sources.example_windows(windowed, examples)
    np.testing.assert_array_equal(got, [1, 0, 2, 0])
    names = [("R35", "RNAN")[r] for r in windowed.record_rows[examples]]
    assert [sources.example_name(n, w) for n, w in zip(names, got)] == [
        "RNAN#1", "R35#0", "R35#2", "RNAN#0"]
    whole = _source(paths, _data_cfg("crema"))
    np.testing.assert_array_equal(sources.example_windows(whole, [1, 0]), [-1, -1])
    assert sources.example_name("R35", -1) == "R35"
    arrays = sources.RawArraySource(np.zeros((2, 12, 5000), np.float32), fs=FS,
                                    reading=sources.Reading.from_data_config(_data_cfg("stmem")))
    np.testing.assert_array_equal(sources.example_windows(arrays, [0, 1]), [-1, -1])


def test_stmem_crops_are_cut_then_filtered_and_standardised_each(folder):
    cfg = _data_cfg("stmem")
    source = _source([folder["r35"]], cfg)
    first = next(iter(datasets.make_eval_dataset(cfg, source=source, process_index=0,
                                                 process_count=1)))
    window = scipy.signal.resample(_rdsamp(folder["r35"])[:, :5000], 2500, axis=-1)
    s = (2500 - 2250) // 2                       # ST-MEM's crop starts 0, s, 2s: 0/125/250
    want = np.stack([_stmem_crop(window[:, o:o + 2250]) for o in (0, s, 2 * s)])
    got = first["patches"][0].reshape(3, 12, 2250)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for c in range(3):                           # every crop has its own statistics
        assert abs(got[c].mean()) < 1e-5 and abs(got[c].std() - 1) < 1e-5
    # The order matters: filtering and standardising the window first gives other crops.
    whole = _stmem_crop(window)
    assert np.abs(whole[:, :2250] - want[0]).max() > 1e-2
    # A flat crop has std 0: all zeros, not NaN.
    flat = preprocess.preprocess(np.full((12, 2250), 0.7), 250.0, presets.preprocessing("stmem"))
    assert not flat.any()


@pytest.mark.parametrize("seconds", [10, 15, 60])
def test_crop_starts_are_stmems_formula(seconds):
    """'starts 0, s, 2s, ... up to T - 2250 with s = (T - 2250) // 2' (T at 250 Hz)."""
    t = seconds * 250
    s = (t - 2250) // 2
    assert batch.eval_crop_starts(t, 2250, 3) == list(range(0, t - 2250 + 1, s))
    assert batch.eval_crop_starts(t, 2250, 3) == {10: [0, 125, 250], 15: [0, 750, 1500],
                                                  60: [0, 6375, 12750]}[seconds]
    assert batch.eval_crop_starts(2 * t, 5000, 1) == [(2 * t - 5000) // 2]  # Net1D: centred


def test_the_data_path_line_names_the_crops_in_words():
    """Every evaluation command prints this summary ("1 crop(s) of 5000" had been ECGFounder's)."""
    from crema_jax.inference import backbones

    def summary(name, averaging=""):
        data = presets.apply(config_lib.default_data_config(), name)
        return backbones.data_path_summary(data, averaging)
    assert summary("crema") == "crema: 250 Hz, 3 crops of 2250 samples, embedding averaging"
    assert summary("stmem", "logit") == "stmem: 250 Hz, 3 crops of 2250 samples, logit averaging"
    assert summary("ecgfounder") == ("ecgfounder: 500 Hz, one crop of 5000 samples, embedding "
                                     "averaging")
    assert batch.crops_text(1) == "one crop" and batch.crops_text(2) == "2 crops"


def test_probability_averaging_is_the_mean_of_the_crops_probabilities():
    from crema_jax.evaluate import finetune, linear_probe

    rng = np.random.default_rng(3)
    logits = rng.normal(size=(4, 3, 5))
    sigmoid = 1 / (1 + np.exp(-logits))
    np.testing.assert_allclose(finetune.crop_probabilities(logits, "multilabel", "probability"),
                               sigmoid.mean(1), rtol=1e-6)
    np.testing.assert_allclose(finetune.crop_probabilities(logits, "multilabel", "embedding"),
                               1 / (1 + np.exp(-logits.mean(1))), rtol=1e-6)
    softmax = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(finetune.crop_probabilities(logits, "multiclass", "probability"),
                               softmax.mean(1), rtol=1e-6)
    feats = rng.normal(size=(4, 3, 6)).astype(np.float32)
    probe = linear_probe.LinearProbe(kernel=rng.normal(size=(6, 5)).astype(np.float32),
                                     bias=np.zeros(5, np.float32), mean=np.zeros(6, np.float32),
                                     std=np.ones(6, np.float32), label_type="multilabel", l2=0.0,
                                     val_auroc_by_l2={})
    per_crop = 1 / (1 + np.exp(-(feats.astype(np.float64) @ probe.kernel)))
    np.testing.assert_allclose(linear_probe.predict_proba(probe, feats), per_crop.mean(1),
                               rtol=1e-5)


def test_ecgfounder_median_baseline_has_medfilts_zero_edges():
    x = np.random.default_rng(4).normal(size=(3, 1200)).cumsum(1)
    got = filters.median_baseline(x, FS, window_s=0.4, edges="zero")
    want = x - np.stack([scipy.signal.medfilt(r, 201) for r in x])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)   # at the edges too
    nearest = filters.median_baseline(x, FS, window_s=0.4, edges="nearest")
    assert np.abs(nearest[:, :100] - want[:, :100]).max() > 1e-3  # the edge mode matters


def _ecgfounder_reference(x):
    """Steps 2-5 of ECGFounder's preprocessing on (12, T) at 500 Hz."""
    b, a = scipy.signal.iirnotch(50.0, 30.0, fs=FS)
    x = scipy.signal.filtfilt(b, a, x, axis=-1)
    b, a = scipy.signal.butter(N=4, Wn=[0.67, 40], btype="bandpass", fs=FS)
    x = scipy.signal.filtfilt(b, a, x, axis=-1)
    x = x - np.stack([scipy.signal.medfilt(r, 201) for r in x])
    return (x - x.mean()) / (x.std() + 1e-8)


def test_peer_paths_feed_a_flat_lead_as_recorded(folder):
    """ST-MEM's and ECGFounder's scripts pick the 12 leads and process them all: a constant
    lead (0.3 mV on V3, all zero on V5) is filtered, counted in the statistics and, for
    ST-MEM, pooled like the others. Ours marks it absent and leaves it out."""
    raw = _rdsamp(folder["rflat"])
    cfg = _data_cfg("stmem")
    first = next(iter(datasets.make_eval_dataset(cfg, source=_source([folder["rflat"]], cfg),
                                                 process_index=0, process_count=1)))
    window = scipy.signal.resample(raw, 2500, axis=-1)
    want = np.stack([_stmem_crop(window[:, o:o + 2250]) for o in (0, 125, 250)])
    np.testing.assert_allclose(first["patches"][0].reshape(3, 12, 2250), want,
                               rtol=1e-5, atol=1e-5)
    assert first["patch_valid"][0].all()          # every lead's tokens enter the mean
    assert np.abs(want[:, 8]).max() > 1e-3        # the flat lead is -mean/std, not zero

    cfg = _data_cfg("ecgfounder")
    got = _source([folder["rflat"]], cfg).load({"index": 0})
    assert got["lead_present"].all()
    want = _ecgfounder_reference(raw)
    assert np.abs(got["signal"] - want).max() <= 1e-5 * np.abs(want).max()

    ours = _source([folder["rflat"]], _data_cfg("crema")).load({"index": 0})
    assert list(np.flatnonzero(~ours["lead_present"])) == [8, 10]
    assert not ours["signal"][[8, 10]].any()


def test_a_checkpoint_config_without_a_newer_field_keeps_its_presets_value():
    from crema_jax import config as crema_config

    saved = crema_config.default_config("sit_pretrain").to_dict()
    saved["data"] = presets.apply(config_lib.default_data_config(), "stmem").to_dict()
    del saved["data"]["flat_leads"]               # written before the field existed
    assert crema_config.from_saved(saved).data.flat_leads == "keep"
    saved["data"]["flat_leads"] = "absent"        # a stored value always wins
    assert crema_config.from_saved(saved).data.flat_leads == "absent"


def test_ecgfounder_path_zeroes_nan_then_preprocesses_the_record(folder):
    cfg = _data_cfg("ecgfounder")
    source = _source([folder["rnan"]], cfg)
    got = source.load(source[0])["signal"]
    x = np.nan_to_num(_rdsamp(folder["rnan"]))             # NaN -> 0, at 500 Hz
    b, a = scipy.signal.iirnotch(50.0, 30.0, fs=FS)
    x = scipy.signal.filtfilt(b, a, x, axis=-1)
    b, a = scipy.signal.butter(N=4, Wn=[0.67, 40], btype="bandpass", fs=FS)
    x = scipy.signal.filtfilt(b, a, x, axis=-1)
    x = x - np.stack([scipy.signal.medfilt(r, 201) for r in x])
    want = (x - x.mean()) / (x.std() + 1e-8)
    # float32 in, float64 here: medfilt may pick a neighbouring sample where two are within
    # float32 rounding, so the bound is relative to the signal's scale.
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()


def test_presets_set_every_field_and_refuse_unknown_names():
    cfg = presets.apply(config_lib.default_data_config(), "stmem")
    assert (cfg.preset, cfg.window_seconds, cfg.resample, cfg.nan_policy, cfg.preprocess.stage,
            cfg.eval_crop_average, cfg.target_fs) == ("stmem", 10.0, "fft", "drop_window", "crop",
                                                      "probability", 250.0)
    back = presets.apply(cfg, "crema")
    assert back.to_dict() == presets.apply(config_lib.default_data_config(), "crema").to_dict()
    assert back.to_dict() == config_lib.default_data_config().to_dict()  # crema = the defaults
    with pytest.raises(ValueError, match="expected one of"):
        presets.apply(cfg, "physionet")


def test_stmem_pretraining_views_are_standardised_per_crop(folder):
    """configs/stmem_base.py trains on ST-MEM's path: every random crop is filtered and
    standardised on its own before it is patchified and masked."""
    cfg = _data_cfg("stmem", num_views=1, num_epochs=None)
    source = _source([folder["r35"]], cfg)
    views = next(iter(datasets.make_pretrain_dataset(cfg, source=source, process_index=0,
                                                     process_count=1)))
    crops = views["patches"][:, 0].reshape(2, 12, 2250)
    for crop in crops:
        assert abs(crop.mean()) < 1e-5 and abs(crop.std() - 1.0) < 1e-5
