"""The clinical_exports layout through `crema-jax prepare`: the same recordings as WFDB and as
each export format give the same cache rows; a folder of mixed, corrupt and truncated files is
prepared with a skip table; no patient name or identifier reaches the cache, index or logs."""
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest
import wfdb

from crema_jax.data.cache import prepare
from crema_jax.data.cache.source import CacheSource
from crema_jax.data.index import registry
from crema_jax.data.index.dataset_index import hash_split
from crema_jax.data.reading import clinical
from tests.data import clinical_files as cf
from tests.runtime.pids import children, end_within

CLI = [os.path.join(os.path.dirname(sys.executable), "crema-jax"), "prepare"]
RECORDS = ("E07500", "E07501")
UV_PER_COUNT = {"dcm": cf.DICOM_UV_PER_BIT, "xml_aecg": cf.AECG_UV_PER_DIGIT,
                "xml_muse": cf.MUSE_UV_PER_BIT, "edf": cf.DICOM_UV_PER_BIT,
                "xml_philips": cf.PHILIPS_UV_PER_BIT, "scp": cf.SCP_NV_PER_COUNT / 1000}


def _prepare(*args):
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=300)


def _signal(cinc_sample_dir, name):
    return wfdb.rdrecord(str(cinc_sample_dir / name)).p_signal.T.copy()


def _write_twins(tmp_path, cinc_sample_dir):
    """Each record in each format under exports/, and its stored counts as WFDB under wfdb/."""
    exports, twins = tmp_path / "exports", tmp_path / "wfdb"
    exports.mkdir()
    twins.mkdir()
    for name in RECORDS:
        signal = _signal(cinc_sample_dir, name)
        for fmt, writer in cf.WRITERS.items():
            writer(exports / f"{fmt}_{name}{cf.SUFFIX[fmt]}", signal, 500.0)
            leads = cf.MUSE_LEADS if fmt == "xml_muse" else cf.LEADS
            rows = [cf.LEADS.index(lead) for lead in leads]
            counts = cf.quantised(signal[rows], UV_PER_COUNT[fmt])
            wfdb.wrsamp(f"{fmt}_{name}", fs=500, units=["mV"] * len(leads), sig_name=list(leads),
                        d_signal=counts.T.astype(np.int64), fmt=["16"] * len(leads),
                        adc_gain=[1000.0 / UV_PER_COUNT[fmt]] * len(leads),
                        baseline=[0] * len(leads), write_dir=str(twins))
    return exports, twins


def _rows(cache_dir) -> dict:
    source = CacheSource(str(cache_dir))
    out = {}
    for i in range(len(source)):
        element = source[i]
        decoded = source.load(element)
        value = decoded["signal"].astype(np.float64) * decoded["scale"][:, None]
        out[pathlib.PurePath(element["path"]).name.split(".")[0]] = (value,
                                                                     decoded["lead_present"])
    return out


def test_wfdb_and_each_export_format_give_the_same_cache_rows(tmp_path, cinc_sample_dir):
    exports, twins = _write_twins(tmp_path, cinc_sample_dir)
    for root, layout, out in ((exports, "clinical_exports", "a"), (twins, "wfdb_folder", "b")):
        done = _prepare(f"--layout={layout}", f"--root={root}", f"--out={tmp_path / out}",
                        "--workers=1")
        assert done.returncode == 0, done.stderr
        want = len(RECORDS) * len(cf.WRITERS)
        assert done.stdout.strip().splitlines()[-1] == f"prepared {want} records, skipped 0"
    from_exports, from_wfdb = _rows(tmp_path / "a"), _rows(tmp_path / "b")
    assert sorted(from_exports) == sorted(from_wfdb) and len(from_wfdb) == want
    for name, (value, present) in from_wfdb.items():
        assert present.all()
        np.testing.assert_allclose(from_exports[name][0], value, rtol=0, atol=1e-6)


def _damaged_folder(tmp_path, cinc_sample_dir):
    folder = tmp_path / "mixed"
    (folder / "ward").mkdir(parents=True)
    signal = _signal(cinc_sample_dir, "E07500")
    for fmt, writer in cf.WRITERS.items():
        writer(folder / f"good_{fmt}{cf.SUFFIX[fmt]}", signal, 500.0)
        path = folder / "ward" / f"cut_{fmt}{cf.SUFFIX[fmt]}"
        writer(path, signal, 500.0)
        path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    (folder / "ward" / "noise.dcm").write_bytes(bytes(range(256)) * 8)
    (folder / "ward" / "scan.pdf").write_bytes(b"%PDF-1.4 not an ECG")
    (folder / "labels.csv").write_text("file,labels\ngood_dcm.dcm,AF\n")
    return folder


# Cut in half: DICOM, EDF and SCP-ECG are short of samples, the XML files (aECG, MUSE, Philips)
# malformed.
EXPECTED_SKIPS = {"truncated_signal": 3, "unreadable": 3, "unknown_format": 2}


def test_mixed_folder_is_prepared_with_a_skip_table_and_no_patient_identity(tmp_path,
                                                                           cinc_sample_dir):
    folder = _damaged_folder(tmp_path, cinc_sample_dir)
    out = tmp_path / "cache"
    done = _prepare("--layout=clinical_exports", f"--root={folder}", f"--out={out}",
                    "--workers=1", "--layout_option=labels=labels.csv")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == f"prepared {len(cf.WRITERS)} records, skipped {len(cf.WRITERS) + 2}"
    for reason, count in EXPECTED_SKIPS.items():
        assert any(line.split() == [reason, str(count)] for line in lines), (reason, lines)
    summary = json.loads((out / "summary.json").read_text())
    assert {r: s["count"] for r, s in summary["skipped"].items()} == EXPECTED_SKIPS
    index = json.loads((out / "index.json").read_text())
    assert {r["record_id"]: tuple(r["labels"]) for r in index["records"]}["good_dcm.dcm"] == (
        "AF",)
    # Every byte written (shards, index, summary, settings) and every line printed or logged.
    texts = [p.read_bytes() for p in out.rglob("*") if p.is_file()]
    texts.append((done.stdout + done.stderr).encode())
    for secret in ("Quixote", "Dulcinea", cf.PATIENT_ID):
        assert not any(secret.encode() in t for t in texts), secret
    inputs = b"".join(p.read_bytes() for p in folder.rglob("*.xml"))
    assert b"Quixote" in inputs and cf.PATIENT_ID.encode() in inputs  # the scan could fail
    assert b"good_dcm.dcm" in b"".join(texts)                           # it reads the index
    key = clinical.patient_hash(cf.PATIENT_ID)
    assert {r["split"] for r in index["records"]} == {hash_split(key)}  # grouped by patient


def test_strict_names_the_file(tmp_path, cinc_sample_dir):
    folder = _damaged_folder(tmp_path, cinc_sample_dir)
    done = _prepare("--layout=clinical_exports", f"--root={folder}", f"--out={tmp_path / 'c'}",
                    "--workers=1", "--strict")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert str(folder / "ward") in done.stderr


def test_labels_from_the_statements_by_the_mimic_keyword_map(tmp_path, cinc_sample_dir):
    folder = tmp_path / "x"
    folder.mkdir()
    cf.write_aecg(folder / "a.xml", _signal(cinc_sample_dir, "E07500")[:, :1000], 500.0)
    cf.write_muse(folder / "b.xml", _signal(cinc_sample_dir, "E07501")[:, :1000], 500.0,
                  statements=("Sinus rhythm", "Incomplete right bundle branch block"),
                  patient_id="other")
    index = registry.build_index("clinical_exports", folder, label_map="default")
    got = {r.record_id: r.labels for r in index.records}
    assert got == {"a.xml": ("AF",), "b.xml": ()}  # "incomplete RBBB" is excluded from RBBB
    patients = {r.record_id: r.meta["patient_id"] for r in index.records}
    assert patients["a.xml"] == clinical.patient_hash(cf.PATIENT_ID) != patients["b.xml"]


def test_labels_and_label_map_together_is_an_error(tmp_path):
    (tmp_path / "x.csv").write_text("file,labels\n")
    with pytest.raises(ValueError, match="not both"):
        registry.build_index("clinical_exports", tmp_path, labels="x.csv", label_map="default")


def test_command_line_record_paths_take_export_files(tmp_path, cinc_sample_dir):
    """What embed/predict do with `exports/*.xml`: the files keep their names and are read as
    exports (a WFDB record named beside them stays a WFDB record)."""
    from crema_jax.data.config import default_data_config
    from crema_jax.data.index.dataset_index import expand_records
    from crema_jax.inference.embed import record_source
    signal = _signal(cinc_sample_dir, "E07500")
    cf.write_muse(tmp_path / "a.xml", signal, 500.0)
    cf.write_dicom(tmp_path / "b.dcm", signal, 500.0)
    paths = expand_records(f"{tmp_path}/*.xml,{tmp_path}/b.dcm,{cinc_sample_dir}/E07500.hea")
    assert paths == [str(tmp_path / "a.xml"), str(tmp_path / "b.dcm"),
                     str(cinc_sample_dir / "E07500")]
    cfg = default_data_config()
    source = record_source(paths, cfg)
    assert [type(r).__name__ for r in source.readers] == ["ClinicalFile", "ClinicalFile",
                                                          "NoneType"]
    first = source.load(source[0])
    third = source.load(source[2])
    assert first["signal"].shape == third["signal"].shape


def test_index_workers_give_the_same_index_and_cache_settings(tmp_path, cinc_sample_dir):
    """Parsing the exports in 2 spawned processes gives the index one process gives (records,
    labels, meta, splits, skip reasons), and the same cache settings (index_workers is how the
    index is built, not what it holds)."""
    folder = _damaged_folder(tmp_path, cinc_sample_dir)
    one, two = (registry.build_index("clinical_exports", str(folder), labels="labels.csv",
                                     index_workers=n) for n in (1, 2))
    as_rows = [[(r.record_id, r.labels, r.split, r.source, r.meta, r.reader) for r in i.records]
               for i in (one, two)]
    assert as_rows[0] == as_rows[1] and len(as_rows[0]) == 2 * len(cf.WRITERS) + 2
    assert sum(type(r.reader).__name__ == "BadRecord" for r in one.records) == sum(
        EXPECTED_SKIPS.values())
    plans = [prepare.make_plan(layout="clinical_exports", root=str(folder), out=str(tmp_path / o),
                               layout_options={"labels": "labels.csv", "index_workers": n})
             for o, n in (("a", 1), ("b", 2))]
    assert plans[0].settings == plans[1].settings


# Parses one export file again and again in 2 index workers (long enough to be killed meanwhile).
_INDEXING = """
import sys
from crema_jax.data.index import clinical_exports
clinical_exports._metas([sys.argv[1]] * 200_000, 2)
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="finds the workers through /proc")
def test_index_workers_end_when_their_parent_is_killed(tmp_path, cinc_sample_dir):
    """SIGKILL of an indexing process (the OOM killer, `kill -9 PID`): its index workers had
    gone on with their queued files, then waited for more for ever."""
    path = tmp_path / "one.dcm"
    cf.write_dicom(path, _signal(cinc_sample_dir, "E07500"), 500.0)
    run = subprocess.Popen([sys.executable, "-c", _INDEXING, str(path)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers, deadline = [], time.monotonic() + 120
    while len(workers) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
        workers = [p for p in children(run.pid) if _is_pool_worker(p)]
    time.sleep(2)  # the workers parse
    run.kill()
    run.wait()
    try:
        assert len(workers) == 2, workers
    finally:
        left = end_within(workers)   # each ends within 10 s
    assert left == []


def _is_pool_worker(pid: int) -> bool:
    """A spawned worker (multiprocessing's spawn_main), not the resource tracker."""
    try:
        return b"spawn_main" in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
