"""The mimic_iv_ecg layout on MIMIC-IV-ECG's own folder tree, written here from its documentation:
record_list.csv (subject_id, study_id, file_name, ecg_time, path = files/pNNNN/pSUBJECT/sSTUDY/
STUDY), WFDB records at 500 Hz with 5000 samples in the lead order I, II, III, aVR, aVF, aVL,
V1-V6, and machine_measurements.csv with the statements in report_0..report_17. Expected values
are the written digital samples / gain, re-ordered by hand into I, II, III, aVR, aVL, aVF."""
import csv
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import wfdb

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

FS, SAMPLES, GAIN = 500, 5000, 200.0
MIMIC_LEADS = ["I", "II", "III", "aVR", "aVF", "aVL", "V1", "V2", "V3", "V4", "V5", "V6"]
# canonical row -> column of the MIMIC file (aVL and aVF swap places)
CANONICAL_FROM_FILE = [0, 1, 2, 3, 5, 4, 6, 7, 8, 9, 10, 11]
# (subject, study, report lines, labels under the default keyword map)
STUDIES = [
    (10000032, 40689238, ["Sinus rhythm", "Possible left atrial enlargement", "Borderline ECG"],
     ()),
    (10000032, 44458630, ["Atrial fibrillation with rapid ventricular response",
                          "Incomplete right bundle branch block", "Abnormal ECG"], ("AF",)),
    (10000117, 41000001, ["Sinus  bradycardia", "1st degree A-V block",
                          "Left bundle branch block"], ("1dAVb", "LBBB", "SB")),
    (10000560, 42000002, ["Sinus rhythm", "Normal ECG"], ("NORMAL",)),
    (10000560, 43000003, ["Sinus rhythm", "Atrial fibrillation no longer present", "RBBB"],
     ("RBBB",)),
]
ABSENT = (10000999, 45000004)   # listed in record_list.csv, its files not downloaded


def _sha1_split(key, val=0.1, test=0.1):
    u = int(hashlib.sha1(key.encode()).hexdigest()[:16], 16) / 2**64
    return "train" if u < 1 - val - test else ("val" if u < 1 - test else "test")


def _relative(subject, study):
    return f"files/p{str(subject)[:4]}/p{subject}/s{study}/{study}"


@pytest.fixture(scope="module")
def mimic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mimic-iv-ecg")
    digital = {}
    for subject, study, _, _ in STUDIES:
        rng = np.random.default_rng(study)
        d = rng.integers(-400, 400, (SAMPLES, 12)).astype(np.int32)   # +-2 mV at 200/mV
        folder = root / os.path.dirname(_relative(subject, study))
        folder.mkdir(parents=True)
        wfdb.wrsamp(str(study), fs=FS, units=["mV"] * 12, sig_name=MIMIC_LEADS, d_signal=d,
                    fmt=["16"] * 12, adc_gain=[GAIN] * 12, baseline=[0] * 12,
                    write_dir=str(folder))
        digital[study] = d
    with open(root / "record_list.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["subject_id", "study_id", "file_name", "ecg_time", "path"])
        for subject, study in [(s[0], s[1]) for s in STUDIES] + [ABSENT]:
            writer.writerow([subject, study, study, "2180-07-23 08:44:00",
                             _relative(subject, study)])
    with open(root / "machine_measurements.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["subject_id", "study_id", "cart_id", "ecg_time"]
                        + [f"report_{k}" for k in range(18)] + ["bandwidth", "filtering",
                                                                "rr_interval"])
        for subject, study, lines, _ in STUDIES:
            writer.writerow([subject, study, 6848296, "2180-07-23 08:44:00"]
                            + lines + [""] * (18 - len(lines)) + ["0.005-150 Hz", "60 Hz", 659])
    return root, digital


def _expected_mv(digital, study):
    """(12, 5000) in mV: digital / gain, columns re-ordered to I, II, III, aVR, aVL, aVF, V1-V6."""
    return (digital[study][:, CANONICAL_FROM_FILE] / GAIN).T


def test_index_reports_labels_and_subject_splits(mimic_root, tmp_path):
    root, _ = mimic_root
    index = registry.build_index("mimic_iv_ecg", root, label_map="default")
    assert [r.record_id for r in index] == [str(s[1]) for s in STUDIES] + [str(ABSENT[1])]
    assert index.label_names == ["1dAVb", "AF", "AFL", "LBBB", "LVH", "NORMAL", "PACED",
                                 "RBBB", "SB", "ST"]
    for info, (subject, study, lines, labels) in zip(index, STUDIES):
        assert info.path == str(root / _relative(subject, study))
        assert info.meta["report"] == tuple(lines) and info.labels == labels
        assert info.meta["patient_id"] == str(subject) and info.reader is None
        assert info.split == _sha1_split(str(subject))
    assert index[0].split == index[1].split          # one subject, one split
    assert index[5].labels == () and index[5].meta["report"] == ()
    plain = registry.build_index("mimic_iv_ecg", root)
    assert plain.label_names == [] and all(r.labels == () for r in plain)
    present = registry.build_index("mimic_iv_ecg", root, present_only=True)
    assert len(present) == 5
    custom = tmp_path / "map.json"
    custom.write_text(json.dumps({"AF": ["atrial fibrillation"],
                                  "IRBBB": {"include": ["incomplete right bundle branch block"]}}))
    mapped = registry.build_index("mimic_iv_ecg", root, label_map=str(custom))
    assert [r.labels for r in mapped][:5] == [(), ("AF", "IRBBB"), (), (), ()]


def test_record_path_outside_root_is_refused(tmp_path):
    with open(tmp_path / "record_list.csv", "w", newline="") as f:
        csv.writer(f).writerows([["subject_id", "study_id", "path"], [1, 2, "../elsewhere/2"]])
    with pytest.raises(ValueError, match=r"record_list.csv:2: path '../elsewhere/2'"):
        registry.build_index("mimic_iv_ecg", tmp_path)


def test_reader_maps_mimic_lead_order_to_canonical(mimic_root):
    root, digital = mimic_root
    info = registry.build_index("mimic_iv_ecg", root)[1]
    ecg = read_lib.read(info.path, info.reader, target_fs=None, derive_limb_leads=False)
    assert ecg.fs == FS and ecg.signal.shape == (12, SAMPLES)
    np.testing.assert_allclose(ecg.signal, _expected_mv(digital, STUDIES[1][1]), atol=1e-6)


@pytest.mark.slow
def test_eval_pipeline_and_prepare(mimic_root, tmp_path):
    root, digital = mimic_root
    cfg = config_lib.default_data_config()
    cfg.layout, cfg.root, cfg.split, cfg.num_epochs, cfg.batch_size = "mimic_iv_ecg", str(root), \
        "", 1, 4
    cfg.layout_options = {"label_map": "default"}
    cfg.target_fs, cfg.preprocess = float(FS), presets.preprocessing("none")
    stats, source = SkipStats(), sources.make_source(cfg)
    names = source.label_names
    seen = []
    for batch in datasets.make_eval_dataset(cfg, source=source, process_index=0,
                                            process_count=1, stats=stats):
        for b in np.flatnonzero(batch["valid"]):
            k = int(batch["index"][b])
            study = int(source.record_ids[k])
            signal = _expected_mv(digital, study)
            for c, start in enumerate((0, 1375, 2750)):   # (5000 - 2250) // 2 = 1375
                crop = signal[:, start:start + 2250].reshape(12, 30, 75)
                np.testing.assert_allclose(batch["patches"][b, c], crop, atol=1e-6)
            labels = [n for n, y in zip(names, batch["labels"][b]) if y]
            assert tuple(labels) == next(s[3] for s in STUDIES if s[1] == study)
            seen.append(study)
    assert seen == [s[1] for s in STUDIES]
    assert dict(stats.counts) == {"missing_header": 1}
    cfg.strict = True
    with pytest.raises(ecg_lib.RecordError, match=rf"s{ABSENT[1]}/{ABSENT[1]}.hea"):
        list(datasets.make_eval_dataset(cfg, process_index=0, process_count=1))

    out = tmp_path / "cache"
    done = subprocess.run([os.path.join(os.path.dirname(sys.executable), "crema-jax"),
                           "prepare", "--layout=mimic_iv_ecg", f"--root={root}", f"--out={out}",
                           "--layout_option=label_map=default", "--workers=1",
                           "--preprocess=none", f"--target_fs={FS}"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "prepared 5 records, skipped 1"
    assert ["missing_header", "1"] in [line.split() for line in done.stdout.splitlines()]
    cached = cache_source.CacheSource(str(out))
    for i, record_id in enumerate(cached.record_ids):
        expected = _expected_mv(digital, int(record_id))
        stored = record_format.decode_record(cached.record_bytes(i))["signal"]
        step = np.abs(expected).max(axis=1, keepdims=True) / 32767
        assert (np.abs(stored - expected) <= step / 2 + 1e-6).all()
        assert tuple(cached.record_labels.names(i)) == STUDIES[i][3]
