"""prepare: an --out holding someone else's files, a settings.json that is a FIFO, a second run on
one --out, links planted at the temporary names; a dataset holding FIFOs, a header linked to
/dev/zero and one claiming 10^9 samples (a `crema-jax` child process under a timeout and an
address-space limit finishes, each counted with its reason); an empty dataset and one whose
every record is skipped; Ctrl-C in a worker and in the whole command, and reruns that redo what
was cut short or skipped for an unexpected error. The dataset's files are never modified."""
import json
import os
import signal
import subprocess
import time

import pytest

from crema_jax.cli import prepare
from crema_jax.data.cache import prepare as prepare_lib
from crema_jax.data.cache import record_format, shard_writer
from crema_jax.data.reading import read as read_lib
from tests.cli.conftest import _fails, assert_one_error_line
from tests.cli.hostile.helpers import CLI, _cli, _copy_record, _crema_jax, _hashes, _one_line
from tests.runtime.pids import children, end_within


def test_prepare_refuses_a_folder_of_someone_elses_files(cinc_sample_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "index.json").write_text('{"mine": true}')
    (out / "summary.json").write_text("user notes")
    before = _hashes(tmp_path)
    _fails(prepare, [f"--root={cinc_sample_dir}", f"--out={out}", "--workers=1"], capsys,
           f"--out={out}", "did not write")
    assert _hashes(tmp_path) == before


def test_prepare_refuses_a_cache_whose_settings_are_a_fifo(tmp_path, cinc_sample_dir):
    out = tmp_path / "cache"
    out.mkdir()
    os.mkfifo(out / "settings.json")
    before = _hashes(tmp_path)
    done = _cli("prepare", f"--root={cinc_sample_dir}", f"--out={out}", "--workers=1")
    _one_line(done, "prepare", f"--out={out}: settings.json is a FIFO, not a regular file")
    assert _hashes(tmp_path) == before


def test_a_second_prepare_on_one_out_stops_naming_the_first(tmp_path, cinc_sample_dir):
    """The first writer is this test process (alive, on this host): its lock in --out."""
    out = tmp_path / "cache"
    out.mkdir()
    lock = out / prepare_lib.lock_name(0)
    lock.write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename,
                                "started": "now"}))
    before = _hashes(tmp_path)
    done = _cli("prepare", f"--root={cinc_sample_dir}", f"--out={out}", "--workers=1")
    _one_line(done, "prepare", f"{out} is in use: a run by pid {os.getpid()}", str(lock))
    assert _hashes(tmp_path) == before


def test_prepare_never_follows_a_planted_link(cinc_sample_dir, tmp_path, capsys):
    """Links planted in an interrupted cache at the old fixed temporary names (NAME.tmp), aimed
    at a file outside --out: the resumed run writes through unique, exclusively created
    temporaries, and the outside file stays as it was."""
    outside = tmp_path / "precious.txt"
    outside.write_text("do not touch")
    out = tmp_path / "cache"
    common = [f"--root={cinc_sample_dir}", f"--out={out}", "--workers=1",
              "--records_per_shard=16"]
    assert prepare.COMMAND.run([*common, "--stop_after_shards=1"]) == 3
    names = ["index.json.tmp", "summary.json.tmp"] + [
        f"shard-{i:05d}-of-00004.{ext}.tmp" for i in range(4) for ext in ("arrayrecord", "json")]
    for name in names:
        if not (out / name).exists():
            (out / name).symlink_to(outside)
    before = _hashes(outside)
    assert prepare.COMMAND.run(common) == 0
    assert _hashes(outside) == before
    assert (out / "index.json").is_file() and not (out / "index.json").is_symlink()
    assert json.loads((out / "summary.json").read_text())["records_written"] == 50


def test_prepare_skips_special_files_and_oversized_claims_with_reasons(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for i, source in enumerate(("E07500", "E07501", "E07502")):
        _copy_record(data, f"good{i}", source)
    os.mkfifo(data / "fifo.hea")                       # blocked prepare for ever
    (data / "zero.hea").symlink_to("/dev/zero")        # read without bound
    lines = _copy_record(data, "huge").splitlines()    # asked for 24 GB
    record = lines[0].split()
    record[3] = "1000000000"
    (data / "huge.hea").write_text("\n".join([" ".join(record), *lines[1:]]) + "\n")
    before = _hashes(data)
    out = tmp_path / "cache"
    result = _crema_jax("prepare", f"--root={data}", f"--out={out}", "--workers=1",
                        timeout_s=240, memory_gib=3.0)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    table = [line.split() for line in result.stdout.splitlines()]
    assert ["not_a_regular_file", "2"] in table and ["truncated_signal", "1"] in table, \
        result.stdout
    summary = json.loads((out / record_format.SUMMARY_FILE).read_text())
    assert summary["records_written"] == 3
    assert summary["skipped"]["not_a_regular_file"]["paths"] == [str(data / "fifo"),
                                                                 str(data / "zero")]
    assert _hashes(data) == before


def test_prepare_refuses_an_empty_dataset_and_an_all_skipped_one(tmp_path):
    (tmp_path / "empty").mkdir()
    done = _cli("prepare", f"--root={tmp_path / 'empty'}", f"--out={tmp_path / 'c1'}")
    assert done.returncode == 1
    assert_one_error_line("prepare", "", done.stderr, f"--root={tmp_path / 'empty'}: the "
                          "wfdb_folder layout finds no record there; nothing to prepare")
    assert not (tmp_path / "c1").exists()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.hea").write_text("garbage\n")
    (tmp_path / "junk" / "b.hea").write_text("x")
    done = _cli("prepare", f"--root={tmp_path / 'junk'}", f"--out={tmp_path / 'c2'}")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"crema-jax prepare: error: --out={tmp_path / 'c2'}: no record could be prepared (2 "
        f"header_syntax); {tmp_path / 'c2'}/summary.json lists each skipped file")
    assert (tmp_path / "c2" / "summary.json").is_file()


def test_an_interrupted_shard_finishes_its_record_and_writes_nothing(tmp_path, monkeypatch,
                                                                    cinc_sample_dir):
    """In a worker, Ctrl-C arriving mid-read lets that read finish (a KeyboardInterrupt inside
    it could cut an import or a file read short, and the next records were then committed as
    broken); the shard stops before its next record and writes no file."""
    records = [{"record_id": n, "path": str(cinc_sample_dir / n), "labels": [], "split": "train",
                "source": "x", "reader": None} for n in ("E07500", "E07501", "E07502")]
    task = {"out_dir": str(tmp_path), "shard": 0, "num_shards": 1, "records": records,
            "target_fs": 500.0, "preprocess": None, "derive_limb_leads": True,
            "dtype": "float16", "strict": False}
    reads, real_read = [], read_lib.read

    def read_then_interrupted(path, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # arrives while this record is being read
        ecg = real_read(path, *args, **kwargs)
        reads.append(path)
        return ecg

    monkeypatch.setattr(shard_writer.read_lib, "read", read_then_interrupted)
    previous = signal.getsignal(signal.SIGINT)
    try:
        shard_writer.finish_record_on_interrupt()
        with pytest.raises(KeyboardInterrupt):
            shard_writer.build_shard(task)
    finally:
        signal.signal(signal.SIGINT, previous)
        shard_writer._INTERRUPTED.clear()
    assert reads == [records[0]["path"]]      # the read finished, the next never started
    assert list(tmp_path.iterdir()) == []     # no shard, no sidecar, no temporary


def test_ctrl_c_during_prepare_is_one_line_and_the_rerun_has_every_record(tmp_path,
                                                                          cinc_sample_dir):
    out = tmp_path / "cache"
    args = CLI + ["prepare", f"--root={cinc_sample_dir}", f"--out={out}", "--workers=2",
                  "--records_per_shard=2"]
    run = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True)
    deadline = time.monotonic() + 120
    while not list(out.glob("shard-*.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGINT)  # as a terminal's Ctrl-C: every process of the group
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stderr
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1].endswith(
        "crema-jax prepare: interrupted")
    written = sorted(out.glob("shard-*.json"))
    assert written and len(written) < 25  # it stopped part-way
    for sidecar in written:               # every record of the sample is readable
        assert json.loads(sidecar.read_text())["skipped"] == [], sidecar
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "prepared 50 records, skipped 0"


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="finds the workers through /proc")
def test_workers_end_when_prepare_alone_is_killed(tmp_path, cinc_sample_dir):
    """SIGKILL of the prepare process only (the OOM killer, `kill -9 PID`): its workers and
    multiprocessing's resource tracker had gone on with the queued shards, then waited for ever."""
    out = tmp_path / "cache"
    run = subprocess.Popen(CLI + ["prepare", f"--root={cinc_sample_dir}", f"--out={out}",
                                  "--workers=2", "--records_per_shard=1"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(out.glob("shard-*.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = children(run.pid)
    run.kill()
    run.wait()
    try:
        assert len(workers) >= 2, workers    # the two workers (and the resource tracker)
        sidecars = len(list(out.glob("shard-*.json")))
        assert 0 < sidecars < 50
    finally:
        left = end_within(workers)   # each ends within 10 s
    assert left == []


def test_a_rerun_retries_the_records_an_unexpected_error_skipped(tmp_path, cinc_sample_dir,
                                                                 monkeypatch, capsys):
    """A record skipped for an unexpected error (here a MemoryError on its first read: not
    damage of the record's own) is read again by the rerun, which rebuilds its shard."""
    from crema_jax.data.cache import prepare
    root = tmp_path / "records"
    root.mkdir()
    for name in ("E07500", "E07501", "E07502"):
        for ext in (".hea", ".mat"):
            (root / f"{name}{ext}").write_bytes((cinc_sample_dir / f"{name}{ext}").read_bytes())
    real_read = shard_writer.read_lib.read

    def out_of_memory_once(path, *args, **kwargs):
        if path.endswith("E07501"):
            raise MemoryError("cannot allocate")
        return real_read(path, *args, **kwargs)

    kwargs = dict(layout="wfdb_folder", root=str(root), out=str(tmp_path / "cache"), workers=1,
                  records_per_shard=2)
    monkeypatch.setattr(shard_writer.read_lib, "read", out_of_memory_once)
    first = prepare.prepare(**kwargs)
    assert first["records"] == 2 and first["skipped"]["unexpected_error"]["count"] == 1
    monkeypatch.setattr(shard_writer.read_lib, "read", real_read)
    second = prepare.prepare(**kwargs)
    assert second["records"] == 3 and second["skipped"] == {}
    assert "rebuilding 1 shard(s) that skipped records for unexpected errors" in \
        capsys.readouterr().out


@pytest.mark.parametrize("workers", [1, 2])
def test_a_full_disk_under_a_shard_is_one_line_naming_the_shard(tmp_path, cinc_sample_dir,
                                                                workers):
    """array_record's RuntimeError ("write() failed: No space left on device ... Failed to close
    chunk_writer") had ended in a traceback. Disk full at 100 KB (a file-size limit: EFBIG as
    ENOSPC): one line naming the shard and the OS's reason, the status line ended before it,
    and no temporary shard left."""
    out = tmp_path / "cache"
    done = _cli("prepare", f"--root={cinc_sample_dir}", f"--out={out}", f"--workers={workers}",
                "--records_per_shard=10", file_size_limit=100 << 10)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr + done.stdout, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("crema-jax prepare: error: [Errno 27] cannot write "
                           f"{out}/shard-0000"), last
    assert last.endswith("-of-00005.arrayrecord: File too large"), last
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], list(out.iterdir())
