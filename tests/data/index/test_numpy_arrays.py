"""The numpy layout on arrays written here: a .npy and a .npz of records (8 stated leads in a
non-canonical order, microvolts) with a CSV of labels and splits, and a folder of per-record .npy
files (12 leads, mV) holding a wrong shape, a truncated file and an object array. Expected
values are computed by hand: columns moved to their canonical rows, uV / 1000, and the absent
limb leads from the Einthoven/Goldberger identities (III = II - I, aVR = -(I + II) / 2,
aVL = I - II / 2, aVF = II - I / 2)."""
import csv
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

from crema_jax.data import config as config_lib
from crema_jax.data import presets
from crema_jax.data.cache import record_format
from crema_jax.data.cache import source as cache_source
from crema_jax.data.index import registry
from crema_jax.data.pipeline import datasets
from crema_jax.data.pipeline.skips import SkipStats
from crema_jax.data.reading import ecg as ecg_lib
from crema_jax.data.reading import read as read_lib

FS, SAMPLES, N = 250, 2500, 6
STATED = ["V1", "V2", "V3", "V4", "V5", "V6", "I", "II"]
NAN_ROW = 4
# row -> (labels cell, split cell, patient)
TABLE = {0: ("AF;SB", "", "p1"), 1: ("", "test", "p2"), 2: ("SB", "", "p1"),
         3: ("AF", "train", ""), 4: ("", "", "p3"), 5: ("LBBB|AF", "val", "p4")}


def _sha1_split(key, val=0.1, test=0.1):
    u = int(hashlib.sha1(key.encode()).hexdigest()[:16], 16) / 2**64
    return "train" if u < 1 - val - test else ("val" if u < 1 - test else "test")


def _canonical_mv(row_uv):
    """(8 stated leads, T) uV -> (12, T) mV in I, II, III, aVR, aVL, aVF, V1-V6, by hand."""
    mv = row_uv.astype(np.float64) / 1000.0
    lead_i, lead_ii = mv[6], mv[7]
    return np.stack([lead_i, lead_ii, lead_ii - lead_i, -(lead_i + lead_ii) / 2,
                     lead_i - lead_ii / 2, lead_ii - lead_i / 2, *mv[:6]])


@pytest.fixture(scope="module")
def arrays(tmp_path_factory):
    root = tmp_path_factory.mktemp("numpy")
    rng = np.random.default_rng(0)
    x = (rng.normal(0, 300, (N, len(STATED), SAMPLES)) + 50).astype(np.float32)  # uV
    x[NAN_ROW] = np.nan
    np.save(root / "ecgs.npy", x)
    np.savez(root / "packed.npz", signals=x)
    np.save(root / "ecgs_t.npy", np.ascontiguousarray(x.transpose(0, 2, 1)))
    for stem in ("ecgs", "packed", "ecgs_t"):
        with open(root / f"{stem}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["labels", "split", "patient_id"])
            writer.writerows(TABLE[r] for r in range(N))
    folder = root / "records"
    (folder / "sub").mkdir(parents=True)
    per = {name: rng.normal(0, 0.4, (12, SAMPLES)).astype(np.float32)
           for name in ("a", "b", "sub/c")}
    for name, value in per.items():
        np.save(folder / f"{name}.npy", value)
    np.save(folder / "wrong_shape.npy", np.zeros((2, 12, SAMPLES), np.float32))
    np.save(folder / "truncated.npy", per["a"])
    whole = (folder / "truncated.npy").read_bytes()
    (folder / "truncated.npy").write_bytes(whole[:len(whole) // 2])
    np.save(folder / "objects.npy", np.array([{"evil": 1}], dtype=object), allow_pickle=True)
    return root, x, per


def _index(path, **opts):
    return registry.build_index("numpy", path, fs=FS, leads=",".join(STATED), units="uV", **opts)


def test_array_index_labels_splits_and_lead_mapping(arrays):
    root, x, _ = arrays
    for name, extra in (("ecgs.npy", {}), ("packed.npz", {}),
                        ("ecgs_t.npy", {"order": "samples_leads"})):
        index = _index(root / name, **extra)
        stem = name.split(".")[0]
        assert [r.record_id for r in index] == [f"{stem}_{r}" for r in range(N)]
        assert [r.labels for r in index] == [("AF", "SB"), (), ("SB",), ("AF",), (),
                                             ("AF", "LBBB")]
        assert index.label_names == ["AF", "LBBB", "SB"]
        expected_splits = [_sha1_split("p1"), "test", _sha1_split("p1"), "train",
                           _sha1_split("p3"), "val"]
        assert [r.split for r in index] == expected_splits
        ecg = read_lib.read(index[1].path, index[1].reader, target_fs=None)
        assert ecg.fs == FS and ecg.lead_present.all() and ecg.repairs["leads_derived"] == 4
        np.testing.assert_allclose(ecg.signal, _canonical_mv(x[1]), rtol=1e-6, atol=1e-6)
        with pytest.raises(ecg_lib.RecordError, match="no_signal"):
            read_lib.read(index[NAN_ROW].path, index[NAN_ROW].reader)


def test_bad_options_and_shapes_are_errors_naming_the_problem(arrays, tmp_path):
    root, _, _ = arrays
    with pytest.raises(ValueError, match="fs=500"):
        registry.build_index("numpy", root / "ecgs.npy")
    with pytest.raises(ValueError, match=r"shape \(6, 8, 2500\), expected \(records, 12 leads"):
        registry.build_index("numpy", root / "ecgs.npy", fs=FS)
    with pytest.raises(ValueError, match="unknown: X1"):
        registry.build_index("numpy", root / "ecgs.npy", fs=FS, leads="I,X1")
    np.save(tmp_path / "short.npy", np.zeros((3, 8, 100), np.float32))
    (tmp_path / "short.csv").write_text("labels\nAF\n")
    with pytest.raises(ValueError, match="1 lines for an array of 3 records"):
        _index(tmp_path / "short.npy")


def test_folder_of_records_skips_bad_files_without_unpickling(arrays):
    root, _, per = arrays
    index = registry.build_index("numpy", root / "records", fs=FS)
    ids = [r.record_id for r in index]
    assert ids == ["a", "b", "objects", "c", "truncated", "wrong_shape"]
    by_id = {r.record_id: r for r in index}
    ecg = read_lib.read(by_id["c"].path, by_id["c"].reader, target_fs=None)
    np.testing.assert_array_equal(ecg.signal, per["sub/c"])      # canonical order, mV
    for name, reason, says in (("objects", "unreadable", "Python objects"),
                               ("truncated", "truncated_signal", "truncated"),
                               ("wrong_shape", "bad_shape", "(2, 12, 2500)")):
        with pytest.raises(ecg_lib.RecordError) as err:
            read_lib.read(by_id[name].path, by_id[name].reader)
        assert err.value.reason == reason and says in str(err.value) and name in str(err.value)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ecgs.npy", "packed.npz"])
def test_pipeline_and_prepare_read_the_array(arrays, tmp_path, name):
    root, x, _ = arrays
    cfg = config_lib.default_data_config()
    cfg.layout, cfg.root, cfg.split, cfg.num_epochs, cfg.batch_size = "numpy", \
        str(root / name), "", 1, 4
    cfg.layout_options = {"fs": FS, "leads": ",".join(STATED), "units": "uV"}
    cfg.target_fs, cfg.preprocess = float(FS), presets.preprocessing("none")
    stats = SkipStats()
    rows = []
    for batch in datasets.make_eval_dataset(cfg, process_index=0, process_count=1,
                                            stats=stats):
        for b in np.flatnonzero(batch["valid"]):
            row = int(batch["index"][b])
            rows.append(row)
            for c, start in enumerate((0, 125, 250)):   # (2500 - 2250) // 2 = 125
                crop = _canonical_mv(x[row])[:, start:start + 2250].reshape(12, 30, 75)
                np.testing.assert_allclose(batch["patches"][b, c], crop, rtol=1e-5, atol=1e-6)
    assert rows == [0, 1, 2, 3, 5] and dict(stats.counts) == {"no_signal": 1}
    cfg.strict = True
    with pytest.raises(ecg_lib.RecordError, match=rf"{name}#4 has none of the 12 standard"):
        list(datasets.make_eval_dataset(cfg, process_index=0, process_count=1))

    out = tmp_path / "cache"
    done = subprocess.run([os.path.join(os.path.dirname(sys.executable), "crema-jax"),
                           "prepare", "--layout=numpy", f"--root={root / name}",
                           f"--out={out}", f"--layout_option=fs={FS}",
                           f"--layout_option=leads={','.join(STATED)}",
                           "--layout_option=units=uV", "--workers=1", "--preprocess=none",
                           f"--target_fs={FS}"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "prepared 5 records, skipped 1"
    cached = cache_source.CacheSource(str(out))
    for i, row in enumerate([0, 1, 2, 3, 5]):
        expected = _canonical_mv(x[row])
        stored = record_format.decode_record(cached.record_bytes(i))["signal"]
        step = np.abs(expected).max(axis=1, keepdims=True) / 32767
        assert (np.abs(stored - expected) <= step / 2 + 1e-6).all()


def test_per_record_npy_too_large_to_read_is_refused_from_its_header(tmp_path):
    """A per-record .npy whose header declares (12, 2**28) int8, its 3 GiB all there but
    sparse: read_array's float64 copy had asked for 24 GiB. The header's shape is checked
    against limits.MAX_SAMPLES (and MAX_RECORD_BYTES) first: a too_large skip, nothing read."""
    from crema_jax.data.reading import arrays
    path = tmp_path / "huge.npy"
    shape = (12, 2**28)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|i1", "fortran_order": False,
                                                 "shape": shape})
        f.truncate(f.tell() + 12 * 2**28)
    assert os.stat(path).st_blocks * 512 < 1 << 20  # sparse: nothing but the header stored
    fmt = arrays.ArrayFormat(fs=500.0, leads=tuple(ecg_lib.leads_lib.LEADS))
    with pytest.raises(ecg_lib.RecordError) as err:
        read_lib.read(str(path), fmt)
    assert err.value.reason == "too_large" and str(path) in str(err.value)
    assert f"shape {shape} int8 is {12 * 2**28} bytes, {12 * 2**28} samples" in str(err.value)
