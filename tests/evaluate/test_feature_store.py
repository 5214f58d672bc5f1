"""The benchmark's feature cache maps each cached example back to the record it was read from:
two records sharing a name in two folders keep their own features, a record whose files
changed is read again, and a record listed on two rows gives its features to both. The
extraction is replaced by one whose features are a number written in each record's file."""
import os
import types

import numpy as np
import pytest

from crema_jax.data.index.dataset_index import RecordInfo
from crema_jax.evaluate import feature_store, frozen_features

SETTINGS = {"layout": "wfdb_folder", "root": "/data", "layout_options": {}, "cache_dir": "",
            "seed": 0}


def _record(folder, name, value: float):
    """A record whose 'signal file' holds `value`; returns its RecordInfo."""
    os.makedirs(folder, exist_ok=True)
    base = os.path.join(folder, name)
    with open(base + ".dat", "w") as f:
        f.write(repr(value))
    with open(base + ".hea", "w") as f:
        f.write(f"{name} 12 500 5000\n")
    return RecordInfo(name, base, (), "train", "s")


@pytest.fixture()
def store(tmp_path, monkeypatch):
    """A FeatureStore whose extraction reads each record's number as its one feature."""
    read = []

    def extract(backbone, data, leads, settings, mesh):
        values = [float(open(info.path + ".dat").read()) for info in data.infos]
        read.append(len(values))
        return frozen_features.Features(np.asarray(values, np.float32)[:, None, None],
                                        np.arange(len(values)),
                                        [info.record_id for info in data.infos], None)

    monkeypatch.setattr(frozen_features, "extract_features", extract)
    monkeypatch.setattr(feature_store.FeatureStore, "_backbone", lambda self, m, seed: None)
    counts = {"features_reused": 0, "feature_extractions": 0}
    made = feature_store.FeatureStore(tmp_path / "features", counts, log=lambda _: None)
    return made, counts, read


MODEL = types.SimpleNamespace(name="m", filed_as="m", weights="w1", checkpoint="/ckpt",
                              config=None, params=None)


def _features(store, infos):
    got = store.features(MODEL, types.SimpleNamespace(infos=infos), "12", SETTINGS, None)
    by_row = np.full(len(infos), np.nan)
    by_row[got.rows] = got.values[:, 0, 0]
    return by_row


def test_records_of_one_name_in_two_folders_keep_their_own_features(store, tmp_path):
    store, counts, _ = store
    infos = [_record(tmp_path / "a", "r1", 1.0), _record(tmp_path / "b", "r1", 2.0),
             _record(tmp_path / "a", "r2", 3.0)]
    np.testing.assert_array_equal(_features(store, infos), [1.0, 2.0, 3.0])
    # Read back from the cache file (a new store, as a rerun would): still each its own.
    fresh = feature_store.FeatureStore(store.folder, counts, log=lambda _: None)
    np.testing.assert_array_equal(_features(fresh, infos[::-1]), [3.0, 2.0, 1.0])
    assert counts == {"features_reused": 1, "feature_extractions": 1}


def test_a_record_whose_file_changed_is_read_again(store, tmp_path):
    store, counts, read = store
    infos = [_record(tmp_path, "r1", 1.0), _record(tmp_path, "r2", 2.0)]
    np.testing.assert_array_equal(_features(store, infos), [1.0, 2.0])
    before = os.stat(infos[0].path + ".dat").st_mtime_ns
    with open(infos[0].path + ".dat", "w") as f:   # another signal, same size, same name
        f.write("7.5")
    os.utime(infos[0].path + ".dat", ns=(before + 10**9, before + 10**9))   # a later write
    store.keys.clear()   # a rerun: a new process
    np.testing.assert_array_equal(_features(store, infos), [7.5, 2.0])
    assert counts["feature_extractions"] == 2 and read == [2, 2]


def test_a_record_listed_twice_gives_its_features_to_both_rows(store, tmp_path):
    store, _, _ = store
    one, two = _record(tmp_path, "r1", 4.0), _record(tmp_path, "r2", 5.0)
    np.testing.assert_array_equal(_features(store, [one, two]), [4.0, 5.0])
    np.testing.assert_array_equal(_features(store, [one, two, one]), [4.0, 5.0, 4.0])
