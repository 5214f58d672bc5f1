"""`crema-jax prepare` as a user runs it: workers, interruption + resume, skips, --strict."""
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from tests.data import broken_records

CLI = [os.path.join(os.path.dirname(sys.executable), "crema-jax"), "prepare"]


def _prepare(*args):
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=300)


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(pathlib.Path(folder).iterdir())}


@pytest.mark.slow
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, cinc_sample_dir):
    common = [f"--root={cinc_sample_dir}", "--records_per_shard=8"]
    full = _prepare(*common, f"--out={tmp_path / 'a'}", "--workers=2")
    assert full.returncode == 0, full.stderr
    assert full.stdout.strip().splitlines()[-1] == "prepared 50 records, skipped 0"
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary == {"records_written": 50, "skipped": {}}
    shards = sorted(p.name for p in (tmp_path / "a").glob("shard-*.arrayrecord"))
    assert shards == [f"shard-{i:05d}-of-00007.arrayrecord" for i in range(7)]

    out_b = tmp_path / "b"
    stopped = _prepare(*common, f"--out={out_b}", "--workers=1", "--stop_after_shards=2")
    assert stopped.returncode == 3, stopped.stderr
    assert len(list(out_b.glob("shard-*.json"))) == 2 and not (out_b / "index.json").exists()
    # A crash mid-shard leaves its writer's temporary file behind (the name carries the dead
    # writer's pid); the restart removes it and writes the shard anew.
    (out_b / ".shard-00004-of-00007.arrayrecord.x1y2z3.4194303.tmp").write_bytes(b"half a shard")
    resumed = _prepare(*common, f"--out={out_b}", "--workers=1")  # Worker count is irrelevant.
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.strip().splitlines()[-1] == "prepared 50 records, skipped 0"
    assert _files(tmp_path / "a") == _files(out_b)  # Byte-identical, names included (no .tmp).

    changed = _prepare(*common, f"--out={out_b}", "--target_fs=100")
    assert changed.returncode != 0 and "target_fs" in changed.stderr


def _strict_folder(tmp_path, cinc_sample_dir):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for name in ("E07500", "E07501"):
        for ext in (".hea", ".mat"):
            shutil.copy(cinc_sample_dir / (name + ext), folder / (name + ext))
    broken = broken_records.make_broken_records(tmp_path / "broken")
    bad = pathlib.Path(broken["truncated_mat"])
    for ext in (".hea", ".mat"):
        shutil.copy(bad.with_suffix(ext), folder / (bad.name + ext))
    return folder, folder / bad.name


@pytest.mark.slow
@pytest.mark.parametrize("strict", [False, True])
def test_bad_record_skipped_or_fatal_with_strict(tmp_path, cinc_sample_dir, strict):
    folder, bad = _strict_folder(tmp_path, cinc_sample_dir)
    flags = [f"--root={folder}", f"--out={tmp_path / 'out'}", "--workers=1"]
    result = _prepare(*flags, *(["--strict"] if strict else []))
    if strict:
        assert result.returncode != 0
        assert str(bad) in result.stderr and "truncated" in result.stderr
        return
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "prepared 2 records, skipped 1"
    assert any(line.split() == ["truncated_signal", "1"] for line in lines)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["records_written"] == 2
    assert summary["skipped"]["truncated_signal"]["count"] == 1
    assert [os.path.splitext(p)[0] for p in summary["skipped"]["truncated_signal"]["paths"]] == [
        str(bad)]


def test_a_rerun_after_records_changed_is_refused_not_resumed(tmp_path, cinc_sample_dir):
    """A relabelled header or a rewritten signal file under unchanged paths: the rerun counted
    every shard done and kept the old labels and signals (exit 0)."""
    from crema_jax.data.cache import prepare, settings_file

    root, out = tmp_path / "data", str(tmp_path / "cache")
    root.mkdir()
    for name in ("E07500", "E07501", "E07502"):
        for suffix in (".hea", ".mat"):
            shutil.copy(cinc_sample_dir / (name + suffix), root)

    def check():
        plan = prepare.make_plan(layout="wfdb_folder", root=str(root), out=out)
        settings_file.check_or_write(out, plan.settings, write=True)

    check()
    check()   # the same records: a resume
    header = root / "E07501.hea"
    written = os.stat(header).st_mtime_ns
    header.write_text(header.read_text().replace("# Dx: ", "# Dx: 164873001,", 1))
    with pytest.raises(prepare.PrepareError, match=r"one or more was relabelled, rewritten"):
        check()
    shutil.copy(cinc_sample_dir / "E07501.hea", header)   # the header as it was ...
    os.utime(header, ns=(written, written))
    check()
    signal = root / "E07502.mat"
    stat = os.stat(signal)
    signal.write_bytes(signal.read_bytes()[::-1])   # ... a signal rewritten, same size
    os.utime(signal, ns=(stat.st_mtime_ns + 10**9,) * 2)
    with pytest.raises(prepare.PrepareError, match=r"\(records_sha1\); use a new --out folder"):
        check()


def test_patient_ids_that_come_with_other_changes_are_named_by_those(tmp_path):
    """A patient_salt_check that appears along with changed records or settings: the error
    names those (ids came with the records), not the salt; on its own, the salt check."""
    from crema_jax.data.cache import prepare, record_format, settings_file

    out = str(tmp_path / "cache")
    os.makedirs(out)
    before = {"format": record_format.FORMAT, "dtype": "float16", "records_sha1": "a",
              "patient_salt_check": None}
    settings_file.check_or_write(out, before, write=True)
    with_ids = {**before, "patient_salt_check": "p0123"}
    for now, error in [
            ({**with_ids, "records_sha1": "b"}, "one or more was relabelled, rewritten, added or "
             "removed since (records_sha1); use a new --out folder"),
            ({**with_ids, "dtype": "float32"}, "built with other settings (changed: dtype); use"),
            (with_ids, "records no patient ids (patient_salt_check null) but these records")]:
        with pytest.raises(prepare.PrepareError, match=re.escape(error)):
            settings_file.check_or_write(out, now, write=True)


def test_a_cache_finds_its_duplicates_without_its_source_files(tmp_path, cinc_sample_dir,
                                                               monkeypatch):
    """Duplicates of a cache's records were found by hashing the source files at the paths it
    stored: relative to the folder prepare ran in, or gone once the source moved. Two
    byte-identical records then sat in two folds. Each cached row now carries its content key,
    the SHA-256 computed here from the signal file's bytes."""
    import hashlib

    from crema_jax.data.cache import prepare
    from crema_jax.evaluate import datasets

    root = tmp_path / "data"
    root.mkdir()
    for name in ("E07500", "E07501", "E07502", "E07503"):
        for suffix in (".hea", ".mat"):
            shutil.copy(cinc_sample_dir / (name + suffix), root)
    shutil.copy(root / "E07500.mat", root / "COPY.mat")   # the same ECG under another id
    (root / "COPY.hea").write_text((root / "E07500.hea").read_text().replace("E07500", "COPY"))
    monkeypatch.chdir(tmp_path)
    prepare.prepare(layout="wfdb_folder", root="data", out=str(tmp_path / "cache"), workers=1,
                    records_per_shard=2)
    rows = json.loads((tmp_path / "cache" / "index.json").read_text())["records"]
    signal = (root / "E07500.mat").read_bytes()
    expected = "sha256:" + hashlib.sha256(f"{len(signal)}:".encode() + signal).hexdigest()
    by_id = {r["record_id"]: r for r in rows}
    assert by_id["E07500"]["content_key"] == by_id["COPY"]["content_key"] == expected
    assert by_id["E07500"]["path"] == str(root / "E07500")   # absolute, wherever it is read
    shutil.move(root, tmp_path / "moved")
    monkeypatch.chdir(tmp_path / "moved")
    settings = {"root": "", "cache_dir": str(tmp_path / "cache"), "seed": 0, "min_positives": 1,
                "split_fractions": [], "label_type": "multilabel", "folds": 3}
    data = datasets.load_dataset(settings)
    assert data.counts["duplicates_merged"] == 1 and len(data.infos) == 4
    assert data.counts["duplicate_groups"] == [["COPY", "E07500"]] or \
        data.counts["duplicate_groups"] == [["E07500", "COPY"]]


def test_the_status_line_gives_the_eta_as_training_does(monkeypatch, capsys):
    """1,000 of 10,000 records in 100 s: 10 ECG/s, 9,000 left, 900 s."""
    from crema_jax.data.cache import prepare

    clock = iter([0.0, 0.0, 100.0])   # start; the first line (nothing seen); after a shard
    monkeypatch.setattr(prepare.time, "monotonic", lambda: next(clock))
    progress = prepare._Progress(" (host 0)", 4, [], 10_000)
    progress.add({"num_records": 990, "skipped": [{"reason": "x", "path": "p"}] * 10})
    line = capsys.readouterr().err.rsplit("\r", 1)[-1]
    assert line == ("prepare (host 0): 1/4 shards, 990 records, 10 skipped, 10 ECG/s, "
                    "ETA 15m00s")
