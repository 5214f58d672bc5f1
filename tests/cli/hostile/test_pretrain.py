"""pretrain's --workdir and its lock: a file, a read-only folder, a path under a file, a folder
holding a user's files, the dataset or the cache itself or a folder inside them; a lock file that
is empty or damaged, one another run took over meanwhile, one a full disk cannot create. Each is
one line naming the folder or the lock, with nothing written."""
import errno
import json
import os
import pathlib
import shutil
import time

import pytest

from crema_jax.cli import pretrain
from crema_jax.runtime import storage
from crema_jax.runtime import workdir as workdir_lib
from tests.cli.conftest import _fails
from tests.cli.hostile.helpers import REPO, TINY, _cli, _hashes, _one_line


# The demo's mesh (data 1) on the test process's 8 devices: data -1 takes them all.
DEMO = f"--config={REPO / 'configs' / 'demo.py'}"
MESH = "--config.mesh.data=-1"


def test_a_file_as_workdir(tmp_path, capsys):
    as_file = tmp_path / "file"
    as_file.write_text("not a folder")
    _fails(pretrain, [f"--config={TINY}", f"--workdir={as_file}",
                      "--config.data.synthetic_records=16"], capsys, str(as_file))
    assert as_file.read_text() == "not a folder"


def test_a_read_only_workdir(tmp_path, capsys):
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        # root writes through permission bits; /proc refuses new folders to every user.
        workdir = locked / "run" if not os.access(locked, os.W_OK) else pathlib.Path(
            "/proc/crema_jax_run")
        _fails(pretrain, [f"--config={TINY}", f"--workdir={workdir}",
                          "--config.data.synthetic_records=16"], capsys, str(workdir))
        assert not list(locked.iterdir()) and not workdir.exists()
    finally:
        locked.chmod(0o700)


def test_a_workdir_that_cannot_be_made_is_one_line_naming_it(tmp_path):
    """Any OSError of a command (here: a folder asked for under a regular file) is one line
    naming the path (read-only folders cannot be tested as root, which ignores permissions)."""
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    before = _hashes(tmp_path)
    done = _cli("pretrain", f"--config={TINY}", f"--workdir={blocker / 'run'}",
                "--config.train.num_steps=1")
    _one_line(done, "pretrain", f"{blocker / 'run'}: {blocker} is a file, not a folder")
    assert _hashes(tmp_path) == before


def test_a_workdir_holding_a_users_files_is_refused(tmp_path, capsys):
    """A run had replaced a user's reconstruction.png and moved their metrics.jsonl into
    metrics.superseded.jsonl, exit 0."""
    workdir = tmp_path / "notes"
    workdir.mkdir()
    (workdir / "metrics.jsonl").write_text("my precious notes\n")
    (workdir / "reconstruction.png").write_text("my image")
    before = _hashes(workdir)
    _fails(pretrain, [DEMO, MESH, f"--workdir={workdir}", "--config.train.num_steps=2"], capsys,
           f"--workdir={workdir}: the folder holds files this command did not write "
           "(metrics.jsonl, reconstruction.png); choose a new or empty folder")
    assert _hashes(workdir) == before and sorted(p.name for p in workdir.iterdir()) == [
        "metrics.jsonl", "reconstruction.png"]


@pytest.mark.parametrize("field", ["root", "cache_dir"])
def test_a_workdir_that_is_or_lies_in_an_input_folder_is_refused(tmp_path, capsys, field,
                                                                 cinc_sample_dir):
    """The dataset root or the cache as --workdir had gained checkpoints/, metrics.jsonl,
    tensorboard/ and reconstruction.png, exit 0."""
    data = tmp_path / "data"
    shutil.copytree(cinc_sample_dir, data)
    before = _hashes(data)
    source = ([f"--config.data.root={data}"] if field == "root" else
              ["--config.data.root=", "--config.data.layout=", f"--config.data.cache_dir={data}"])
    _fails(pretrain, [DEMO, MESH, f"--workdir={data}", *source], capsys,
           f"--workdir={data}: that is an input of this command")
    _fails(pretrain, [DEMO, MESH, f"--workdir={data / 'run'}", *source], capsys,
           f"--workdir={data / 'run'}: inside the input {data}")
    assert _hashes(data) == before and not (data / "run").exists()


def test_an_unreadable_lock_is_named_as_such_and_taken_over_once_old(tmp_path, capsys):
    """An empty crema_jax.lock (a full disk or a crash while a run created it) had made every
    run say "in use: a run by pid ? on ? since ?" for an hour. A fresh one is named as an
    unreadable lock; one older than a few seconds is taken over with a note."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    lock = workdir / workdir_lib.WorkdirLock.NAME
    lock.write_bytes(b"")
    _fails(pretrain, [DEMO, MESH, f"--workdir={workdir}", "--config.train.num_steps=1"], capsys,
           f"{lock}: an unreadable lock (empty or damaged) that names no run")
    assert lock.read_bytes() == b"" and sorted(os.listdir(workdir)) == [lock.name]
    for text in (b"", b"{", b"[" * 5000 + b"]" * 5000, b"{}"):  # nested: a RecursionError
        lock.write_bytes(text)
        old = time.time() - 60
        os.utime(lock, (old, old))
        held = workdir_lib.WorkdirLock(workdir)
        note = held.acquire()
        assert note.startswith(f"took over the unreadable lock {lock}"), note
        held.release()
        assert not lock.exists()


def test_a_damaged_lock_another_run_took_over_meanwhile_is_not_removed(tmp_path, monkeypatch):
    """Two runs that both saw the same old unreadable lock had both taken it: the second
    removed the first one's new, valid lock and wrote its own."""
    lock = tmp_path / workdir_lib.WorkdirLock.NAME
    lock.write_bytes(b"")
    old = time.time() - 60
    os.utime(lock, (old, old))
    first, second = workdir_lib.WorkdirLock(tmp_path), workdir_lib.WorkdirLock(tmp_path)
    modified = storage.modified
    calls = []

    def first_runs_between(path):   # after second's age check, first takes the lock over
        calls.append(path)
        if len(calls) == 2:
            assert first.acquire().startswith("took over the unreadable lock")
        return modified(path)
    monkeypatch.setattr(storage, "modified", first_runs_between)
    with pytest.raises(workdir_lib.WorkdirLockedError, match="another run took the lock first"):
        second.acquire()
    monkeypatch.setattr(storage, "modified", modified)
    assert first.held and not second.held
    assert json.loads(lock.read_text())["id"] == first.info["id"]   # first's lock is intact
    first.release()


def test_a_full_disk_while_creating_the_lock_names_it(tmp_path, monkeypatch):
    """"[Errno 28] No space left on device" had named no file."""
    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(storage, "create_exclusive", full)
    lock = workdir_lib.WorkdirLock(tmp_path)
    with pytest.raises(OSError, match="^.Errno 28. cannot create the lock "
                       f"{tmp_path / lock.NAME}: No space left on device$"):
        lock.acquire()


def test_a_run_refused_by_its_data_leaves_no_folder_it_made(tmp_path, capsys):
    """data.root=/nonexistent (found once the model was built) had left behind the --workdir
    the run made, empty. A workdir that existed before stays, and so does its parent's file."""
    missing = tmp_path / "nonexistent"
    said = f"wfdb_folder layout: {missing} is not a directory of WFDB records"
    new = tmp_path / "runs" / "a" / "run"   # runs/ and runs/a made for it too
    _fails(pretrain, [DEMO, MESH, f"--workdir={new}", f"--config.data.root={missing}"], capsys,
           said)
    assert os.listdir(tmp_path) == []
    mine = tmp_path / "mine"
    (mine / "run").mkdir(parents=True)
    (mine / "notes.txt").write_text("kept")
    _fails(pretrain, [DEMO, MESH, f"--workdir={mine / 'run'}", f"--config.data.root={missing}"],
           capsys, said)
    assert sorted(os.listdir(mine)) == ["notes.txt", "run"] and os.listdir(mine / "run") == []


def test_a_run_that_fails_after_its_checkpoint_manager_leaves_only_what_it_wrote(
        tmp_path, monkeypatch):
    """A failure after checkpoints/ was made (here: the compile) leaves no empty tree; one
    after the run wrote a file leaves the workdir whole."""
    import jax

    from crema_jax.train import trainer
    from tests.configs import tiny_config

    seen = []

    def fails(setup, config, target):
        seen.append(sorted(os.listdir(workdir)))
        if write:
            (workdir / "metrics.jsonl").write_text("{}\n")
        raise RuntimeError("compile failed")

    monkeypatch.setattr(trainer, "compile_step", fails)
    for write in (False, True):
        workdir = tmp_path / f"run_{write}"
        with pytest.raises(RuntimeError, match="compile failed"):
            trainer.train(tiny_config(), workdir, devices=jax.devices()[:1])
    assert seen == [["checkpoints", workdir_lib.WorkdirLock.NAME]] * 2  # what it had made
    assert os.listdir(tmp_path) == ["run_True"]
    assert sorted(os.listdir(tmp_path / "run_True")) == ["checkpoints", "metrics.jsonl"]
