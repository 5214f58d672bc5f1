"""Careless and hostile use, third round: Ctrl-C during a multi-worker `prepare`, ...
Each case ends in one line on stderr (no traceback) and loses nothing a rerun would not redo."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from crema_jax.data.cache import shard_writer
from crema_jax.data.reading import read as read_lib

CLI = [os.path.join(os.path.dirname(sys.executable), "crema-jax")]


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
