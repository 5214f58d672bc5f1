"""The Grain pipeline on the shared CinC sample, synthetic arrays and broken records."""
import collections
import os
import pickle

import numpy as np
import pytest

from crema_jax.data import presets
from crema_jax.data.index import dataset_index
from crema_jax.data.index import wfdb_folder
from crema_jax.data.pipeline import datasets
from crema_jax.data.pipeline import sources
from crema_jax.data.pipeline import transforms
from crema_jax.data.pipeline.skips import SkipStats
from crema_jax.data.pipeline.sources import ArraySource, WfdbSource
from crema_jax.data.reading import ecg as ecg_lib
from crema_jax.data.reading import wfdb_records
from crema_jax.data.reading.leads import LEADS
from crema_jax.data.signal import preprocess
from tests.data import broken_records
from tests.data.configs import one_epoch_config

LIMB = ("I", "II", "III", "aVR", "aVL", "aVF")


def _reference(path):
    """The reader's output, preprocessed as the pipeline's config says (independent of it)."""
    ecg = wfdb_records.read_record(path, target_fs=250.0)
    sig = preprocess.preprocess(ecg.signal, ecg.fs, presets.preprocessing("crema"),
                                lead_present=ecg.lead_present)
    return sig, ecg.lead_present


def _find_crop(signal, crop):
    """Offsets s with signal[:, s:s+2250] == crop exactly (found by brute force)."""
    return [s for s in range(signal.shape[1] - crop.shape[1] + 1)
            if np.array_equal(signal[:, s:s + crop.shape[1]], crop)]


@pytest.fixture(scope="module")
def sample_index(cinc_sample_dir):
    return wfdb_folder.wfdb_folder(cinc_sample_dir)


def test_all_sample_records_once_per_epoch_and_equal_to_reader(cinc_sample_dir, sample_index):
    cfg = one_epoch_config(root=str(cinc_sample_dir), batch_size=10)
    batches = list(datasets.make_pretrain_dataset(cfg, process_index=0, process_count=1))
    assert len(batches) == 5
    seen = []
    for batch in batches:
        shapes = {k: (v.shape, v.dtype) for k, v in batch.items()}
        assert shapes == {
            "patches": ((10, 2, 12, 30, 75), np.float32), "mask": ((10, 2, 12, 30), bool),
            "visible_idx": ((10, 2, 84), np.int32), "masked_idx": ((10, 2, 276), np.int32),
            "patch_valid": ((10, 2, 12, 30), bool), "lead_indices": ((10, 12), np.int32),
            "index": ((10,), np.int64)}
        np.testing.assert_array_equal(batch["lead_indices"], np.tile(np.arange(12), (10, 1)))
        for b in range(10):
            info = sample_index.records[int(batch["index"][b])]
            signal, present = _reference(info.path)
            crop = batch["patches"][b, 0].reshape(12, 2250)
            assert _find_crop(signal, crop), info.record_id
            np.testing.assert_array_equal(batch["patches"][b, 1], batch["patches"][b, 0])
            for v in range(2):
                mask = batch["mask"][b, v]
                assert ((~mask).sum(axis=1) == 7).all()
                np.testing.assert_array_equal(batch["visible_idx"][b, v], np.flatnonzero(~mask))
                np.testing.assert_array_equal(batch["masked_idx"][b, v], np.flatnonzero(mask))
                np.testing.assert_array_equal(batch["patch_valid"][b, v],
                                              np.repeat(present[:, None], 30, axis=1))
            assert not np.array_equal(batch["mask"][b, 0], batch["mask"][b, 1])
        seen.extend(batch["index"].tolist())
    assert sorted(seen) == list(range(50))


def test_eval_crops_labels_and_padding(cinc_sample_dir, sample_index):
    cfg = one_epoch_config(root=str(cinc_sample_dir), batch_size=16)
    batches = list(datasets.make_eval_dataset(cfg, process_index=0, process_count=1))
    assert len(batches) == 4 and batches[-1]["valid"].tolist() == [True] * 2 + [False] * 14
    vocab = sample_index.label_names
    for batch in batches:
        assert batch["patches"].shape == (16, 3, 12, 30, 75)
        assert batch["labels"].shape == (16, len(vocab)) and batch["labels"].dtype == np.float32
    rows = [(batch, b) for batch in batches for b in range(16) if batch["valid"][b]]
    assert [int(batch["index"][b]) for batch, b in rows] == list(range(50))  # Source order.
    for batch, b in rows[::7]:
        info = sample_index.records[int(batch["index"][b])]
        signal, _ = _reference(info.path)
        for c, start in enumerate((0, 125, 250)):
            np.testing.assert_array_equal(batch["patches"][b, c].reshape(12, 2250),
                                          signal[:, start:start + 2250])
        expected = np.asarray([name in info.labels for name in vocab], np.float32)
        np.testing.assert_array_equal(batch["labels"][b], expected)
    padded = batches[-1]
    assert not padded["patches"][2:].any() and not padded["patch_valid"][2:].any()


def _arrays(n=20, length=2500, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 12, length)).astype(np.float32)


@pytest.mark.parametrize("leads", [("I",), LIMB, ("V6", "I")])
def test_lead_subsets(leads):
    signals = _arrays(8)
    cfg = one_epoch_config(leads=leads, num_views=1)
    batch = next(iter(datasets.make_pretrain_dataset(cfg, source=ArraySource(signals),
                                                     process_index=0, process_count=1)))
    rows = [LEADS.index(name) for name in leads]
    assert batch["patches"].shape == (8, 1, len(leads), 30, 75)
    assert batch["visible_idx"].shape == (8, 1, len(leads) * 7)
    np.testing.assert_array_equal(batch["lead_indices"], np.tile(rows, (8, 1)))
    for b in range(8):
        full = signals[batch["index"][b]][rows]
        assert _find_crop(full, batch["patches"][b, 0].reshape(len(leads), 2250))


def test_short_records_are_padded_and_marked_invalid():
    signals = _arrays(4, length=2000)
    present = np.ones((4, 12), bool)
    present[:, 9] = False
    cfg = one_epoch_config(batch_size=4, num_views=1)
    batch = next(iter(datasets.make_pretrain_dataset(
        cfg, source=ArraySource(signals, lead_present=present), process_index=0,
        process_count=1)))
    for b in range(4):
        crop = batch["patches"][b, 0].reshape(12, 2250)
        np.testing.assert_array_equal(crop[:, :2000], signals[batch["index"][b]])
        assert not crop[:, 2000:].any()
    expected = np.zeros((12, 30), bool)
    expected[:, :2000 // 75] = True  # Patch 26 (1950..2025) holds padding: invalid.
    expected[9] = False
    assert (batch["patch_valid"] == expected).all()
    ev = next(iter(datasets.make_eval_dataset(cfg, source=ArraySource(signals),
                                              process_index=0, process_count=1)))
    np.testing.assert_array_equal(ev["patches"][:, 0], ev["patches"][:, 2])  # Offsets clipped.


def test_independent_view_crops_and_augmentations_per_view():
    cfg = one_epoch_config(num_views=2, independent_view_crops=True, batch_size=8)
    cfg.augment.names = ("amplitude_scale",)
    cfg.augment.amplitude_scale = dict(prob=1.0, low=0.5, high=2.0)
    signals = _arrays(8, length=5000)
    batch = next(iter(datasets.make_pretrain_dataset(cfg, source=ArraySource(signals),
                                                     process_index=0, process_count=1)))
    for b in range(8):
        full = signals[batch["index"][b]]
        starts = []
        for v in range(2):
            crop = batch["patches"][b, v].reshape(12, 2250)
            # Each view has its own scale: find offsets where crop / window is one constant.
            windows = np.lib.stride_tricks.sliding_window_view(full[0], 8)[:5000 - 2250 + 1]
            ratios = crop[0, :8] / windows
            for s in np.flatnonzero(np.ptp(ratios, axis=1) < 1e-4 * np.abs(ratios[:, 0])):
                factor = crop[0, 0] / full[0, s]
                if np.allclose(full[:, s:s + 2250] * factor, crop, rtol=1e-5, atol=1e-6):
                    starts.append(s)
                    assert 0.5 <= factor <= 2.0
        assert len(starts) == 2 and starts[0] != starts[1]


def _take(iterator, k):
    return [next(iterator) for _ in range(k)]


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def test_determinism_and_state_restore_mid_epoch():
    source = ArraySource(_arrays(40))
    cfg = one_epoch_config(num_epochs=None, batch_size=6, seed=3)
    make = lambda: iter(datasets.make_pretrain_dataset(cfg, source=source, process_index=0,
                                                       process_count=1))
    first, second = make(), make()
    reference = _take(first, 9)
    _assert_same(reference, _take(second, 9))  # Crosses an epoch boundary (40 / 6).
    it = make()
    _take(it, 4)
    state = it.get_state()
    later = _take(it, 5)
    restored = make()
    restored.set_state(state)
    _assert_same(_take(restored, 5), later)
    cfg.seed = 4
    other = iter(datasets.make_pretrain_dataset(cfg, source=source, process_index=0,
                                                process_count=1))
    assert not np.array_equal(next(other)["index"], reference[0]["index"])


def test_epochs_reshuffle_and_cover_everything():
    source = ArraySource(_arrays(24))
    cfg = one_epoch_config(num_epochs=2, batch_size=6)
    ids = [i for batch in datasets.make_pretrain_dataset(cfg, source=source, process_index=0,
                                                         process_count=1)
           for i in batch["index"].tolist()]
    assert sorted(ids[:24]) == sorted(ids[24:]) == list(range(24)) and ids[:24] != ids[24:]


def test_two_processes_see_disjoint_records_covering_all():
    source = ArraySource(_arrays(40))
    cfg = one_epoch_config(batch_size=5)
    seen = [[i for batch in datasets.make_pretrain_dataset(cfg, source=source, process_index=p,
                                                           process_count=2)
             for i in batch["index"].tolist()] for p in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 20
    assert not set(seen[0]) & set(seen[1]) and set(seen[0]) | set(seen[1]) == set(range(40))


def _mixed_source(tmp_path, cinc_sample_dir):
    broken = broken_records.make_broken_records(tmp_path / "broken")
    good = wfdb_folder.wfdb_folder(cinc_sample_dir).records[:6]
    infos = list(good) + [dataset_index.RecordInfo(name, path, ("426783006",), "train", "test")
                          for name, path in sorted(broken.items())]
    reading = sources.Reading(target_fs=250.0, preprocess=presets.preprocessing("crema").to_dict())
    return WfdbSource(infos, ["426783006"], reading=reading), broken


def test_broken_records_are_skipped_and_counted(tmp_path, cinc_sample_dir):
    source, broken = _mixed_source(tmp_path, cinc_sample_dir)
    stats = SkipStats(str(tmp_path / "skips"))
    cfg = one_epoch_config(batch_size=4)
    cfg.skip_log_dir = str(tmp_path / "skips")
    batches = list(datasets.make_pretrain_dataset(cfg, source=source, process_index=0,
                                                  process_count=1, stats=stats))
    expected = collections.Counter(r for r in broken_records.EXPECTED_REASONS.values() if r)
    assert stats.counts == expected
    assert SkipStats.from_log_dir(str(tmp_path / "skips")).counts == expected
    good = 6 + sum(r is None for r in broken_records.EXPECTED_REASONS.values())
    assert len(batches) == good // 4
    ids = {i for batch in batches for i in batch["index"].tolist()}
    evals = list(datasets.make_eval_dataset(cfg, source=source, process_index=0, process_count=1))
    ids = {int(i) for batch in evals for i, ok in zip(batch["index"], batch["valid"]) if ok}
    repaired = {source.paths.index(str(broken[name])) for name, reason in
                broken_records.EXPECTED_REASONS.items() if reason is None}
    assert len(ids) == good and repaired <= ids
    for batch in evals:  # Repaired records still produce finite, fixed-shape batches.
        assert np.isfinite(batch["patches"]).all()


def test_an_endless_stream_of_records_none_of_which_reads_is_refused(tmp_path):
    """Every chunk of the endless pretraining stream was dropped as empty: the iterator looped
    for ever, logging skips, and no batch ever came. Now refused up front, the reasons counted;
    one readable record (the last tried) is enough."""
    broken = broken_records.make_broken_records(tmp_path)
    failing = sorted(name for name, reason in broken_records.EXPECTED_REASONS.items() if reason)
    infos = [dataset_index.RecordInfo(name, str(broken[name]), (), "", "") for name in failing]
    cfg = one_epoch_config(batch_size=2, num_epochs=None)
    with pytest.raises(ValueError) as err:
        datasets.make_pretrain_dataset(cfg, source=sources.make_source(cfg, records=infos),
                                       process_index=0, process_count=1)
    counts = collections.Counter(broken_records.EXPECTED_REASONS[name] for name in failing)
    assert str(err.value).startswith(
        f"no record of the data could be read ({len(failing)} tried: "
        + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + "); the first: ")
    good = dataset_index.RecordInfo("good", str(broken["nan_lead"]), (), "", "")
    ds = datasets.make_pretrain_dataset(cfg, source=sources.make_source(cfg, records=infos
                                                                        + [good]),
                                        process_index=0, process_count=1)
    assert next(iter(ds))["patches"].shape[0] == 2


def test_strict_names_file_and_problem(tmp_path, cinc_sample_dir):
    source, broken = _mixed_source(tmp_path, cinc_sample_dir)
    cfg = one_epoch_config(batch_size=1, strict=True)
    for name, reason in broken_records.EXPECTED_REASONS.items():
        if reason is None:
            continue
        info = dataset_index.RecordInfo(name, str(broken[name]), (), "train", "test")
        one = WfdbSource([info], [], reading=sources.Reading(target_fs=250.0))
        with pytest.raises(ecg_lib.RecordError) as err:
            list(datasets.make_eval_dataset(cfg, source=one, process_index=0, process_count=1))
        assert err.value.reason == reason and name in str(err.value)
        # Worker processes send the error back pickled: it must survive the trip intact.
        again = pickle.loads(pickle.dumps(err.value))
        assert (type(again), again.reason, again.path, str(again)) == (
            ecg_lib.RecordError, reason, err.value.path, str(err.value))


def test_worker_processes_deterministic_restorable_and_log_skips(tmp_path, cinc_sample_dir):
    """num_workers=2 (mp_prefetch): the same batches after a restore; worker skips reach
    skip_log_dir. (Two iterators only: each starts two worker processes, seconds apiece.)"""
    source, broken = _mixed_source(tmp_path, cinc_sample_dir)
    cfg = one_epoch_config(num_epochs=None, batch_size=3, num_workers=2)
    cfg.skip_log_dir = str(tmp_path / "skips")
    make = lambda: iter(datasets.make_pretrain_dataset(cfg, source=source, process_index=0,
                                                       process_count=1))
    it = make()
    head = _take(it, 3)
    state = it.get_state()
    later = _take(it, 4)
    restored = make()
    restored.set_state(state)
    _assert_same(_take(restored, 4), later)
    assert all(len(batch["index"]) == 3 for batch in head + later)
    for iterator in (it, restored):
        iterator.close()
    logged = SkipStats.from_log_dir(cfg.skip_log_dir)
    reasons = {r for r in broken_records.EXPECTED_REASONS.values() if r}
    assert set(logged.counts) == reasons  # Every kind of bad record was reported by a worker.
    logged_names = {os.path.splitext(os.path.basename(p))[0]
                    for paths in logged.paths.values() for p in paths}
    assert logged_names == {name for name, r in broken_records.EXPECTED_REASONS.items() if r}


def test_preview_png_shows_the_pipeline_mask(tmp_path):
    from crema_jax.data import preview

    element = {"signal": _arrays(1)[0], "lead_present": np.ones(12, bool), "index": 0,
               "labels": None}
    out = tmp_path / "p.png"
    views = preview.render(element, "t", str(out), mask_name="random_per_lead", ratio=0.75,
                           seed=0)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert ((~views["mask"][0, 0]).sum(axis=1) == 7).all()
    assert _find_crop(element["signal"], views["patches"][0, 0].reshape(12, 2250))


def test_pretrain_views_called_directly_give_every_view():
    """Other modules (e.g. reconstruction plots) call the transform directly: full V axis."""
    element = {"signal": _arrays(1)[0], "lead_present": np.ones(12, bool), "index": 0,
               "labels": None}
    views = transforms.PretrainViews(one_epoch_config(num_views=2)).random_map([element],
                                                                   np.random.default_rng(0))
    assert views["patches"].shape == (1, 2, 12, 30, 75) and views["mask"].shape == (1, 2, 12, 30)
    np.testing.assert_array_equal(views["patches"][0, 0], views["patches"][0, 1])


def test_keep_in_memory_reads_each_record_once(tmp_path):
    import shutil

    src = dataset_index.sample_data_dir()
    header = sorted(src.glob("*.hea"))[0]
    for f in src.glob(header.stem + ".*"):
        shutil.copy(f, tmp_path / f.name)
    infos = [dataset_index.RecordInfo(record_id=header.stem, path=str(tmp_path / header.stem),
                                      labels=(), split="", source="")]
    kept = sources.WfdbSource(infos, [], keep_in_memory=True)
    fresh = sources.WfdbSource(infos, [])
    first = kept.load(kept[0])
    expected = fresh.load(fresh[0])
    np.testing.assert_array_equal(first["signal"], expected["signal"])
    first["signal"][:] = 0.0                       # a caller's edit never reaches the copy kept
    for f in tmp_path.glob(header.stem + ".*"):    # the test's own copy: gone from disk
        f.unlink()
    again = kept.load(kept[0])
    np.testing.assert_array_equal(again["signal"], expected["signal"])
    np.testing.assert_array_equal(again["lead_present"], expected["lead_present"])


class _Failing:
    """A source whose every load raises `error`."""

    def __init__(self, error):
        self.error = error

    def __getitem__(self, i):
        return {"path": f"/data/r{i}", "index": i, "labels": ()}

    def load(self, ref):
        raise self.error


def test_a_failed_read_is_classified_once_for_every_reader():
    """The pipeline, the nothing-readable check and prepare's shard writer count a failed
    read the same way (each had written the rule)."""
    from crema_jax.data.cache.source import DamagedCacheError

    record_error = ecg_lib.RecordError("/data/r0", "bad_header", "/data/r0.hea: no fs")
    assert transforms.read_record(_Failing(record_error), {"path": "/data/r0"},
                                  strict=False) == (None, ("bad_header", "/data/r0",
                                                           "/data/r0.hea: no fs [bad_header]"))
    other = ZeroDivisionError("division by zero")
    assert transforms.read_record(_Failing(other), {"path": "/data/r1"}, strict=False) == (
        None, ("unexpected_error", "/data/r1",
               "/data/r1: unexpected ZeroDivisionError while reading: division by zero"))
    with pytest.raises(ecg_lib.RecordError, match=r"no fs \[bad_header\]$"):
        transforms.read_record(_Failing(record_error), {"path": "/data/r0"}, strict=True)
    with pytest.raises(RuntimeError, match="^/data/r1: unexpected ZeroDivisionError"):
        transforms.read_record(_Failing(other), {"path": "/data/r1"}, strict=True)
    with pytest.raises(DamagedCacheError):
        transforms.read_record(_Failing(DamagedCacheError("x")), {"path": "p"}, strict=False)
    stats = SkipStats()
    assert transforms.ReadChunk(_Failing(other), stats, strict=False).map(np.arange(3)) == []
    assert stats.counts == {"unexpected_error": 3} and stats.paths["unexpected_error"] == [
        "/data/r0", "/data/r1", "/data/r2"]
