"""The code15 layout on CODE-15%'s own file layout, written here from its documentation:
exams.csv + exams_part{i}.hdf5 (`tracings` float32 (N, 4096, 12) in mV, 400 Hz, the 10 s or 7 s
signal zero-padded to 4096 samples and centred; `exam_id` (N,), a last 0 entry of padding);
channels DI, DII, DIII, AVR, AVL, AVF, V1-V6. Expected values are the stored samples with the
padding cut off by hand, never the reader's own output."""
import csv
import hashlib
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from crema_jax.data import config as config_lib
from crema_jax.data import presets
from crema_jax.data.cache import record_format
from crema_jax.data.cache import source as cache_source
from crema_jax.data.index import registry
from crema_jax.data.pipeline import datasets
from crema_jax.data.pipeline import sources
from crema_jax.data.pipeline.skips import SkipStats
from crema_jax.data.reading import ecg as ecg_lib
from crema_jax.data.reading import read as read_lib

FS, STORED = 400, 4096
LABELS = ["1dAVb", "RBBB", "LBBB", "SB", "AF", "ST"]       # the README's order
COLUMNS = ["exam_id", "age", "is_male", "nn_predicted_age", "1dAVb", "RBBB", "LBBB", "SB", "ST",
           "AF", "patient_id", "death", "timey", "normal_ecg", "trace_file"]
# exam_id -> (part, seconds, patient, labels); exam 104 is in part 0 but not in exams.csv.
EXAMS = {101: (0, 10, 9001, ("1dAVb", "AF")), 102: (0, 7, 9001, ()), 103: (0, 10, 9002,
                                                                           ("RBBB", "ST")),
         201: (1, 10, 9003, ("LBBB", "SB")), 202: (1, 10, 9004, ("AF",)),
         203: (1, 7, 9005, ()), 301: (2, 10, 9006, ("ST",)), 302: (2, 10, 9007, ()),
         401: (3, 10, 9008, ("RBBB",))}
NOT_IN_CSV = 104
NAN_EXAM, NAN_SAMPLES_EXAM = 202, 203


def _sha1_split(key, val=0.1, test=0.1):
    u = int(hashlib.sha1(key.encode()).hexdigest()[:16], 16) / 2**64
    return "train" if u < 1 - val - test else ("val" if u < 1 - test else "test")


def _signal(exam_id, seconds):
    """(samples, 12) float32 in mV: per-lead sines plus noise, never 0 in every lead at once."""
    rng = np.random.default_rng(exam_id)
    t = np.arange(seconds * FS)[:, None] / FS
    return (np.sin(2 * np.pi * (1 + np.arange(12)) * t) * rng.uniform(0.2, 1.5, 12)
            + rng.normal(0, 0.05, (len(t), 12)) + 0.01).astype(np.float32)


def _padded(signal):
    """Zero padding to 4096 samples, centred (the dataset's description)."""
    out = np.zeros((STORED, 12), np.float32)
    start = (STORED - len(signal)) // 2
    out[start:start + len(signal)] = signal
    return out


@pytest.fixture(scope="module")
def code15_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("code15")
    truth = {}
    for exam_id, (_, seconds, _, _) in EXAMS.items():
        truth[exam_id] = _signal(exam_id, seconds)
    truth[NOT_IN_CSV] = _signal(NOT_IN_CSV, 10)
    truth[NAN_EXAM][:] = np.nan
    truth[NAN_SAMPLES_EXAM][100:105, 3] = np.nan
    parts = {0: [101, 102, 103, NOT_IN_CSV], 1: [201, 202, 203], 2: [301, 302], 3: [401]}
    for part, exam_ids in parts.items():
        tracings = np.stack([_padded(truth[e]) for e in exam_ids] + [np.zeros((STORED, 12))])
        if part == 3:
            tracings = tracings[..., :8]                  # a part with 8 leads: wrong shape
        with h5py.File(root / f"exams_part{part}.hdf5", "w") as f:
            f.create_dataset("tracings", data=tracings.astype(np.float32))
            f.create_dataset("exam_id", data=np.asarray(exam_ids + [0], np.int64))
    whole = (root / "exams_part2.hdf5").read_bytes()
    (root / "exams_part2.hdf5").write_bytes(whole[:len(whole) // 2])   # truncated download
    with open(root / "exams.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for exam_id, (part, _, patient, labels) in EXAMS.items():
            flags = {name: name in labels for name in LABELS}
            writer.writerow([exam_id, 60 + exam_id % 7, exam_id % 2 == 0, 61.5, flags["1dAVb"],
                             flags["RBBB"], flags["LBBB"], flags["SB"], flags["ST"], flags["AF"],
                             patient, "", "", not labels, f"exams_part{part}.hdf5"])
    return root, truth


def _unpadded_mv(truth, exam_id):
    """Expected canonical signal: the stored exam without padding, (12, samples), in mV (the
    README's unit), leads in file order (DI..V6 is already the canonical order I..V6); the NaN
    run of exam 203 (lead 3, samples 100-104) on the line from sample 99 to sample 105."""
    signal = truth[exam_id].T.copy()
    if exam_id == NAN_SAMPLES_EXAM:
        a, b = float(signal[3, 99]), float(signal[3, 105])
        signal[3, 100:105] = [a + (b - a) * k / 6 for k in range(1, 6)]
    return signal


def test_index_labels_splits_and_known_bad_exams(code15_root):
    root, _ = code15_root
    index = registry.build_index("code15", root)
    assert [r.record_id for r in index] == ["101", "102", "103", "104", "201", "202", "203",
                                            "301", "302", "401"]   # exam id 0 is padding
    assert index.label_names == LABELS
    by_id = {int(r.record_id): r for r in index}
    for exam_id, (part, _, patient, labels) in EXAMS.items():
        info = by_id[exam_id]
        assert info.labels == tuple(n for n in LABELS if n in labels)
        assert info.split == _sha1_split(str(patient))
        assert info.meta["patient_id"] == str(patient) and info.source == "code15"
        assert info.meta["sex"] == ("Male" if exam_id % 2 == 0 else "Female")
    assert by_id[101].split == by_id[102].split                 # one patient, one split
    assert by_id[101].path == f"{root / 'exams_part0.hdf5'}#0"
    assert by_id[NOT_IN_CSV].reader.reason == "not_in_exams_csv"
    assert {by_id[e].reader.reason for e in (301, 302)} == {"truncated_signal"}
    assert by_id[401].reader.reason == "bad_shape"


def test_reader_cuts_padding_keeps_mv_and_lead_order(code15_root):
    root, truth = code15_root
    by_id = {int(r.record_id): r for r in registry.build_index("code15", root)}
    for exam_id, samples in ((101, 4000), (102, 2800)):
        info = by_id[exam_id]
        ecg = read_lib.read(info.path, info.reader, target_fs=None, derive_limb_leads=False)
        assert ecg.fs == FS and ecg.signal.shape == (12, samples) and ecg.lead_present.all()
        np.testing.assert_array_equal(ecg.signal, _unpadded_mv(truth, exam_id))
        resampled = read_lib.read(info.path, info.reader, target_fs=250.0)
        assert resampled.signal.shape == (12, samples * 250 // FS)
    info = by_id[NAN_SAMPLES_EXAM]
    ecg = read_lib.read(info.path, info.reader, target_fs=None)
    assert ecg.repairs["nan_replaced"] == 5
    np.testing.assert_allclose(ecg.signal, _unpadded_mv(truth, NAN_SAMPLES_EXAM), atol=1e-6)
    expected = {NOT_IN_CSV: ("not_in_exams_csv", "exams.csv"), NAN_EXAM: ("no_signal", "part1"),
                301: ("truncated_signal", "exams_part2.hdf5"), 401: ("bad_shape", "part3")}
    for exam_id, (reason, named) in expected.items():
        with pytest.raises(ecg_lib.RecordError) as err:
            read_lib.read(by_id[exam_id].path, by_id[exam_id].reader)
        assert err.value.reason == reason and named in str(err.value)


def _cfg(root, **overrides):
    cfg = config_lib.default_data_config()
    cfg.layout, cfg.root, cfg.split, cfg.num_epochs, cfg.batch_size = "code15", str(root), "", 1, 4
    cfg.target_fs, cfg.preprocess = float(FS), presets.preprocessing("none")
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def test_eval_pipeline_crops_labels_and_skip_counts(code15_root):
    root, truth = code15_root
    stats = SkipStats()
    cfg = _cfg(root)
    source = sources.make_source(cfg)
    batches = list(datasets.make_eval_dataset(cfg, source=source, process_index=0,
                                              process_count=1, stats=stats))
    seen = {}
    for batch in batches:
        for b in np.flatnonzero(batch["valid"]):
            exam_id = int(source.record_ids[int(batch["index"][b])])
            seen[exam_id] = batch["labels"][b]
            signal = _unpadded_mv(truth, exam_id)
            spare = signal.shape[1] - 2250    # 3 crops of 2250: first, middle, last
            for c, start in enumerate((0, spare // 2, 2 * (spare // 2))):
                crop = signal[:, start:start + 2250].reshape(12, 30, 75)
                np.testing.assert_allclose(batch["patches"][b, c], crop, rtol=0, atol=1e-6)
    assert sorted(seen) == [101, 102, 103, 201, 203]
    for exam_id, labels in seen.items():
        assert [n for n, y in zip(LABELS, labels) if y] == [n for n in LABELS
                                                            if n in EXAMS[exam_id][3]]
    assert dict(stats.counts) == {"not_in_exams_csv": 1, "no_signal": 1, "truncated_signal": 2,
                                  "bad_shape": 1}
    with pytest.raises(ecg_lib.RecordError, match="exams_part0.hdf5.*not listed"):
        list(datasets.make_eval_dataset(_cfg(root, strict=True), process_index=0,
                                        process_count=1))


def test_pretrain_pipeline_reads_every_usable_exam(code15_root):
    root, _ = code15_root
    stats = SkipStats()
    cfg = _cfg(root, batch_size=5)
    batches = list(datasets.make_pretrain_dataset(cfg, process_index=0, process_count=1,
                                                  stats=stats))
    assert len(batches) == 1 and batches[0]["patches"].shape[:3] == (5, 2, 12)
    assert stats.total == 5


CLI = [os.path.join(os.path.dirname(sys.executable), "crema-jax"), "prepare"]


@pytest.mark.slow
@pytest.mark.parametrize("strict", [False, True])
def test_prepare_caches_exams_in_mv_and_counts_skips(code15_root, tmp_path, strict):
    root, truth = code15_root
    out = tmp_path / "cache"
    done = subprocess.run(CLI + ["--layout=code15", f"--root={root}", f"--out={out}",
                                 "--workers=1", "--preprocess=none", f"--target_fs={FS}",
                                 "--records_per_shard=4", *(["--strict"] if strict else [])],
                          capture_output=True, text=True, timeout=300)
    if strict:
        assert done.returncode != 0 and "exams_part0.hdf5" in done.stderr
        assert "not listed in" in done.stderr
        return
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "prepared 5 records, skipped 5"
    lines = [line.split() for line in done.stdout.splitlines()]
    for reason, count in (("not_in_exams_csv", "1"), ("no_signal", "1"),
                          ("truncated_signal", "2"), ("bad_shape", "1")):
        assert [reason, count] in lines
    source = cache_source.CacheSource(str(out))
    assert list(source.record_ids) == ["101", "102", "103", "201", "203"]
    assert source.label_names == LABELS
    for i, record_id in enumerate(source.record_ids):
        stored = record_format.decode_record(source.record_bytes(i))["signal"]
        exam_id = int(record_id)
        expected = _unpadded_mv(truth, exam_id)
        step = np.abs(expected).max(axis=1, keepdims=True) / 32767   # int16 quantisation
        assert stored.shape == expected.shape
        assert (np.abs(stored - expected) <= step / 2 + 1e-6).all()
        assert [LABELS[j] for j in np.flatnonzero(source[i]["labels"])] == \
            [n for n in LABELS if n in EXAMS[exam_id][3]]


def test_stmem_windows_drop_the_7_second_exams(code15_root):
    """ST-MEM's 10 s windows at the record's rate: 4000 samples of a 10 s exam make one window;
    a 7 s exam (2800 samples once its padding is cut) makes none, although its stored length,
    4096, would fit one."""
    root, _ = code15_root
    cfg = presets.apply(_cfg(root), "stmem")
    cfg.preprocess = presets.preprocessing("none")
    stats, source = SkipStats(), sources.make_source(cfg)
    kept = [int(source.record_ids[int(i)])
            for batch in datasets.make_eval_dataset(cfg, source=source, process_index=0,
                                                    process_count=1, stats=stats)
            for i, valid in zip(batch["index"], batch["valid"]) if valid]
    assert kept == [101, 103, 201]
    assert stats.counts["too_short"] == 2 and sorted(stats.paths["too_short"]) == sorted(
        [f"{root / 'exams_part0.hdf5'}#1", f"{root / 'exams_part1.hdf5'}#2"])


def test_exam_listed_twice_in_exams_csv_keeps_its_first_row_and_skips_the_repeat(tmp_path):
    """exams.csv listing exam 7 again (line 4, other labels, age and patient) had silently
    given the exam the last row's; as MIMIC-IV-ECG's repeated study ids, the first row is used
    and the repeat is a duplicate_exam_id skip of its own, naming both lines."""
    from crema_jax.data.index import code15
    with h5py.File(tmp_path / "exams_part0.hdf5", "w") as f:
        f.create_dataset("tracings", data=np.ones((3, STORED, 12), np.float32))
        f.create_dataset("exam_id", data=np.asarray([7, 8, 0], np.int64))
    rows = [COLUMNS]
    for exam, age, patient, labels in ((7, 61, 501, ("AF",)), (8, 40, 502, ()),
                                       (7, 33, 503, ("RBBB", "ST"))):
        cells = {"exam_id": exam, "age": age, "is_male": "True", "patient_id": patient,
                 "trace_file": "exams_part0.hdf5",
                 **{label: label in labels for label in LABELS}}
        rows.append([str(cells.get(c, "")) for c in COLUMNS])
    csv_path = tmp_path / "exams.csv"
    with open(csv_path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    index = code15.code15(tmp_path)
    sevens = [r for r in index.records if r.record_id == "7"]
    assert len(sevens) == 2 and len(index.records) == 3
    first, repeat = sevens
    assert first.labels == ("AF",) and first.meta["age"] == 61
    assert first.meta["patient_id"] == "501" and not isinstance(first.reader, read_lib.BadRecord)
    assert repeat.reader == read_lib.BadRecord(
        "duplicate_exam_id", f"{csv_path}:4: exam_id 7 appears again (line 2 is used)")
    with pytest.raises(ecg_lib.RecordError) as err:
        read_lib.read(repeat.path, repeat.reader)
    assert err.value.reason == "duplicate_exam_id"
