"""One run at a time writes an output: the partial folder's lock (inference/partial.py), an
fcntl.flock the OS releases when its process ends, however it ends.

Two runs started with the same --out (a cron job firing twice) had both written the folder."""
import os
import signal
import subprocess
import sys
import time

import pytest

from crema_jax.cli import predict as predict_cli
from crema_jax.inference import partial
from tests.cli.conftest import _fails
from tests.cli.test_resume import _records, net1d  # noqa: F401 - net1d: a fixture
from tests.train.helpers import cli_env


def test_a_second_keeper_of_the_same_output_is_refused_until_the_first_lets_go(tmp_path):
    out = str(tmp_path / "new" / "p.csv")
    first, second = partial.Keeper(out, "logits"), partial.Keeper(out, "logits")
    first.lock()
    lock = os.path.join(first.folder, "lock")
    assert open(lock).read() == f"{os.getpid()}\n"
    with pytest.raises(partial.BusyError) as err:
        second.lock()
    assert str(err.value) == (f"{out}: another run (pid {os.getpid()}) is writing it (its lock: "
                              f"{lock}); wait for it to end, or choose another --out")
    first.close()   # it kept nothing: the folder goes with its lock, and the one made for it
    assert os.listdir(tmp_path) == []
    second.lock()
    assert os.listdir(second.folder) == ["lock"]
    second.close()


@pytest.mark.parametrize("code", ["ENOSYS", "ENOLCK", "EOPNOTSUPP"])
def test_a_file_system_without_locks_runs_unlocked_and_says_so(tmp_path, monkeypatch, code):
    """flock fails there (Lustre without -o flock): embed and predict had stopped working."""
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(getattr(errno, code), os.strerror(getattr(errno, code)))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    out, lines = str(tmp_path / "p.csv"), []
    keeper = partial.Keeper(out, "logits", say=lines.append)
    keeper.lock()
    assert lines == [f"warning: {keeper.folder}: its file system takes no locks "
                     f"({os.strerror(getattr(errno, code))}); nothing stops another run writing "
                     f"{out} at the same time"]
    assert partial._unlocked(keeper.folder)
    keeper.close()
    assert os.listdir(tmp_path) == []


def test_removing_a_done_folder_leaves_a_new_run_s_lock_alone(tmp_path):
    """remove() released its lock through close(), whose clean-up could delete the folder a
    new run had made meanwhile, with that run's held lock in it."""
    out = str(tmp_path / "p.csv")
    done, newer = partial.Keeper(out, "logits"), partial.Keeper(out, "logits")
    done.lock()
    delete = done._delete

    def then_a_new_run_starts():      # remove()'s delete, then a new run takes the folder
        delete()
        newer.lock()

    done._delete = then_a_new_run_starts
    done.remove()
    assert os.listdir(newer.folder) == ["lock"]
    assert open(os.path.join(newer.folder, "lock")).read() == f"{os.getpid()}\n"
    with pytest.raises(partial.BusyError):
        partial.Keeper(out, "logits").lock()
    newer.close()


def test_a_run_that_fails_after_taking_the_lock_leaves_no_folder(cinc_sample_dir, tmp_path,
                                                                 capsys):
    """The lock is taken before the checkpoint is read: a run refused for its checkpoint
    leaves neither the partial folder nor the --out folder it made for it."""
    out = tmp_path / "new" / "sub" / "p.csv"
    _fails(predict_cli, [f"--checkpoint={tmp_path / 'none'}", str(cinc_sample_dir / "E07500"),
                         f"--out={out}"], capsys, str(tmp_path / "none"))
    assert os.listdir(tmp_path) == []


def test_a_locked_folder_is_not_removed_as_stale(tmp_path):
    """A run between writing its output and removing its folder (its files all older than the
    output) holds the lock: another run leaves the folder to it."""
    out = tmp_path / "p.csv"
    keeper = partial.Keeper(str(out), "logits")
    keeper.lock()
    (tmp_path / ".p.csv.partial" / "manifest.json").write_text("{}")
    (tmp_path / ".p.csv.partial" / "chunk-000001.npz").write_bytes(b"")   # what it kept
    out.write_text("record,path\n")
    newer = max(os.stat(os.path.join(keeper.folder, n)).st_mtime_ns
                for n in os.listdir(keeper.folder)) + 1
    os.utime(out, ns=(newer, newer))
    assert partial.clear_stale(str(out)) is None
    assert sorted(os.listdir(keeper.folder)) == ["chunk-000001.npz", "lock", "manifest.json"]
    keeper.close()   # the lock released, the chunk kept: now it is stale
    assert partial.clear_stale(str(out)).startswith(f"removed {keeper.folder}: ")
    assert not os.path.lexists(keeper.folder)


def _start(args, cwd, log):
    """A crema-jax process writing stdout and stderr to `log` (a pipe could fill while it is
    stopped), stopped by itself right after its first chunk."""
    env = cli_env(1)
    env["CREMA_JAX_FLUSH_SECONDS"] = "0"   # a chunk after every batch
    env["CREMA_JAX_TEST_STOP_AFTER_CHUNK"] = "1"
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "-m", "crema_jax.main", *args], env=env,
                                stdout=f, stderr=subprocess.STDOUT, cwd=cwd)


def _wait_stopped(process, log, timeout=300.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid, status = os.waitpid(process.pid, os.WNOHANG | os.WUNTRACED)
        if pid:
            assert os.WIFSTOPPED(status), open(log).read()[-2000:]
            return
        time.sleep(0.2)
    process.kill()
    raise AssertionError(f"not stopped after {timeout} s: {open(log).read()[-2000:]}")


def _run(args, cwd):
    env = cli_env(1)
    env["CREMA_JAX_FLUSH_SECONDS"] = "0"
    return subprocess.run([sys.executable, "-m", "crema_jax.main", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_second_predict_with_the_same_out_is_refused_and_a_killed_one_leaves_no_lock(
        net1d, cinc_sample_dir, tmp_path):  # noqa: F811 - net1d: the fixture
    """The first run, stopped after its first chunk (alive, holding the lock): a second with
    the same --out is refused in one line naming the output and the first's pid, touching
    nothing; the first SIGKILLed, a third resumes from its chunk and finishes."""
    folder, paths = _records(tmp_path / "recs", cinc_sample_dir, 2)
    out = tmp_path / "p.csv"
    hidden = tmp_path / ".p.csv.partial"
    args = ["predict", f"--checkpoint={net1d}", str(folder), f"--out={out}", "--top=0",
            "--batch_size=8"]
    log = tmp_path / "first.log"
    first = _start(args, tmp_path, log)
    try:
        _wait_stopped(first, log)
        assert sorted(os.listdir(hidden)) == ["chunk-000001.npz", "lock", "manifest.json"]
        before = {n: os.stat(hidden / n).st_mtime_ns for n in os.listdir(hidden)}
        second = _run(args, tmp_path)
        assert second.returncode == 1
        assert second.stderr.splitlines() == [
            f"crema-jax predict: error: {out}: another run (pid {first.pid}) is writing it (its "
            f"lock: {hidden / 'lock'}); wait for it to end, or choose another --out"]
        assert {n: os.stat(hidden / n).st_mtime_ns for n in os.listdir(hidden)} == before
    finally:
        first.kill()   # SIGKILL: no handler, no cleanup; the OS releases the lock
        first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL
    third = _run(args, tmp_path)
    assert third.returncode == 0, third.stderr[-2000:]
    lines = third.stdout.splitlines()
    assert lines[0] == (f"resuming: 9 of 25 records kept in {hidden} from an earlier run, "
                        "16 to compute")
    assert "skipped 1 unreadable records (truncated_signal 1; 1 kept from an earlier run)" in lines
    assert lines[-1] == (f"wrote {out} (24 records x 150 labels); every skipped record in "
                         f"{tmp_path / 'p.skipped.csv'}")
    assert not hidden.exists() and len(out.read_text().splitlines()) == 25


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, MemoryError])
def test_a_run_that_stops_before_its_first_batch_leaves_nothing(
        net1d, cinc_sample_dir, tmp_path, monkeypatch, interruption):  # noqa: F811 - net1d
    """Stopped once its manifest is written but before its pipeline gave a batch (Ctrl-C
    while the pipeline starts, an error making it): it kept nothing, so it leaves nothing, no
    `.Y.npy.partial/manifest.json` nor lock (the next run would have said it resumes)."""
    from crema_jax.cli import embed as embed_cli
    from crema_jax.inference import embed

    def stop(*args, **kwargs):
        assert os.path.isfile(tmp_path / "new" / ".Y.npy.partial" / "manifest.json")
        raise interruption("stopped")

    monkeypatch.setattr(embed.pipeline, "make_eval_dataset", stop)
    with pytest.raises(BaseException) as stopped:
        embed_cli.COMMAND.run([f"--checkpoint={net1d}", f"--input={cinc_sample_dir / 'E07500'}",
                               f"--out={tmp_path / 'new' / 'Y.npy'}"])
    assert not isinstance(stopped.value, AssertionError), stopped.value
    assert os.listdir(tmp_path) == []


def test_a_link_named_lock_is_not_ours_and_its_target_is_never_written(tmp_path):
    """The folder's `lock` had been opened through a planted link, its target truncated and
    overwritten with the pid, the link then removed."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious data")
    out = str(tmp_path / "p.csv")
    keeper = partial.Keeper(out, "logits", say=lambda line: None)
    os.makedirs(keeper.folder)
    os.symlink(victim, os.path.join(keeper.folder, "lock"))
    keeper.lock()
    assert keeper._lock_fd is None            # not taken: the folder is not ours
    with pytest.raises(ValueError, match=r"exists but is not the partial outputs of a run"):
        keeper._manifest(os.path.join(keeper.folder, "manifest.json"))   # what start() says
    keeper.close()
    assert victim.read_text() == "precious data"
    assert os.path.islink(os.path.join(keeper.folder, "lock"))


def test_the_lock_file_is_made_with_the_umask_s_rights_as_the_run_s_other_files(tmp_path):
    """0o644 whatever the umask had kept a group member from resuming a shared folder's run."""
    old = os.umask(0o002)
    try:
        keeper = partial.Keeper(str(tmp_path / "p.csv"), "logits")
        keeper.lock()
        mode = os.stat(os.path.join(keeper.folder, "lock")).st_mode & 0o777
        keeper.close()
    finally:
        os.umask(old)
    assert mode == 0o664


def test_a_lock_file_this_user_cannot_write_is_refused_in_one_line(tmp_path, monkeypatch):
    """Another user's lock (umask 022): refused, naming the file, not a PermissionError."""
    out = str(tmp_path / "p.csv")
    keeper = partial.Keeper(out, "logits")
    lock = os.path.join(keeper.folder, "lock")
    opened = os.open

    def not_writable(path, flags, *mode):
        if path == lock and flags & os.O_RDWR:
            raise PermissionError(13, "Permission denied", path)
        return opened(path, flags, *mode)

    monkeypatch.setattr(os, "open", not_writable)
    with pytest.raises(partial.BusyError) as err:
        keeper.lock()
    assert str(err.value) == (f"{out}: its lock file {lock} is not writable by this user "
                              "(another user's run made it); ask its owner to remove the "
                              "folder, or choose another --out")
