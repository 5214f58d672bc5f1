"""staging.mirror: a remote folder copied to local disk several files at a time, each file
whole or not at all (a cache on gs:// is read from such a copy: data/cache/source.py)."""
import hashlib
import os
import pathlib
import tempfile
import threading
import time
import uuid

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from crema_jax.runtime import staging
from tests.runtime.pids import dead_pid


@pytest.fixture
def remote():
    fs = fsspec.filesystem("memory")
    base = f"memory://mirror-{uuid.uuid4().hex}"
    blobs = {f"shard-{i:03d}.arrayrecord": os.urandom(1000 + 37 * i) for i in range(24)}
    for name, data in blobs.items():
        fs.pipe(f"{base}/{name}", data)
    yield base, blobs
    fs.rm(base, recursive=True)


def _slow_copies(monkeypatch, fail_on=None):
    """Makes get_file take 20 ms and records how many ran at once (and fail on one name)."""
    state = {"now": 0, "most": 0, "calls": []}
    lock, real = threading.Lock(), MemoryFileSystem.get_file

    def get_file(self, rpath, lpath, **kwargs):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
            state["calls"].append(rpath)
        try:
            time.sleep(0.02)
            if fail_on and rpath.endswith(fail_on):
                with open(lpath, "wb") as f:   # a copy cut off half-way
                    f.write(b"partial")
                raise ConnectionResetError(104, "Connection reset by peer")
            return real(self, rpath, lpath, **kwargs)
        finally:
            with lock:
                state["now"] -= 1

    monkeypatch.setattr(MemoryFileSystem, "get_file", get_file)
    return state


def test_every_file_is_copied_byte_for_byte_several_at_a_time(remote, tmp_path, monkeypatch):
    base, blobs = remote
    state = _slow_copies(monkeypatch)
    assert staging.mirror(base, str(tmp_path / "copy"), threads=4) == str(tmp_path / "copy")
    assert sorted(n for n in os.listdir(tmp_path / "copy") if not n.endswith(".copied")) == \
        sorted(blobs)
    for name, data in blobs.items():
        assert (tmp_path / "copy" / name).read_bytes() == data
    assert len(state["calls"]) == len(blobs)
    assert 2 <= state["most"] <= 4


def test_a_later_copy_keeps_only_the_files_it_fetched_unchanged_and_as_expected(
        remote, tmp_path, monkeypatch):
    """A file is reused only as mirror left it (its copy record): one cut short, one edited in
    place at the same size, one put there by hand, and one whose digest is not the expected
    SHA-256 are fetched again; an untouched one, and one of the expected SHA-256, are kept."""
    base, blobs = remote
    names = sorted(blobs)[:6]
    local = tmp_path / "copy"
    staging.mirror(base, str(local), names=names)
    with open(local / names[1], "r+b") as f:                      # cut short
        f.truncate(10)
    with open(local / names[2], "r+b") as f:                      # a byte flipped, same size
        f.seek(500)
        byte = f.read(1)[0]
        f.seek(500)
        f.write(bytes([byte ^ 0xFF]))
    os.remove(local / names[3])                                   # put back by hand
    (local / names[3]).write_bytes(blobs[names[3]])
    digests = {names[4]: "0" * 64,                                # not what was fetched
               names[5]: hashlib.sha256(blobs[names[5]]).hexdigest()}
    state = _slow_copies(monkeypatch)
    staging.mirror(base, str(local), names=names, sha256=digests)
    assert sorted(os.path.basename(c) for c in state["calls"]) == names[1:5]
    assert all((local / n).read_bytes() == blobs[n] for n in names)
    assert sorted(os.listdir(local)) == sorted(names + [f".{n}.copied" for n in names])
    assert staging.copied_sha256(str(local / names[2])) == hashlib.sha256(
        blobs[names[2]]).hexdigest()


def test_a_resumed_copy_of_a_changed_index_fetches_every_file_again(remote, tmp_path,
                                                                    monkeypatch):
    base, blobs = remote
    names = sorted(blobs)[:3]
    staging.mirror(base, str(tmp_path / "copy"), names=names)
    state = _slow_copies(monkeypatch)
    staging.mirror(base, str(tmp_path / "copy"), names=names, resume=False)
    assert sorted(os.path.basename(c) for c in state["calls"]) == names


def test_a_failed_copy_names_the_file_s_url_and_local_path_and_leaves_no_partial_file(
        remote, tmp_path, monkeypatch):
    """The error had named the remote folder alone, not which file failed or where it went."""
    base, blobs = remote
    bad = sorted(blobs)[5]
    _slow_copies(monkeypatch, fail_on=bad)
    with pytest.raises(OSError) as err:
        staging.mirror(base, str(tmp_path / "copy"), threads=3)
    assert str(err.value) == (f"{base}/{bad} (copying to {tmp_path / 'copy' / bad}): "
                              "ConnectionResetError: [Errno 104] Connection reset by peer")
    left = [n for n in os.listdir(tmp_path / "copy") if not n.endswith(".copied")]
    assert bad not in left
    assert set(left) <= set(blobs)             # no temporary file left behind
    assert all((tmp_path / "copy" / n).read_bytes() == blobs[n] for n in left)


def test_a_store_whose_client_shares_one_connection_copies_one_file_at_a_time(
        remote, tmp_path, monkeypatch):
    """ftp:// and sftp:// clients hold one connection: eight copies at once on it would mix
    their transfers. Only the stores named concurrent copy in parallel (here memory:// is taken
    out of that set)."""
    base, blobs = remote
    monkeypatch.setattr(staging, "_CONCURRENT_PROTOCOLS", {"gs", "s3"})
    state = _slow_copies(monkeypatch)
    staging.mirror(base, str(tmp_path / "copy"), threads=4)
    assert state["most"] == 1 and len(state["calls"]) == len(blobs)
    assert all((tmp_path / "copy" / n).read_bytes() == d for n, d in blobs.items())


def _half_written(local, names):
    """(a killed copy's temporary file, a running one's) in `local`, as write_atomic names them."""
    killed = local / f".{names[0]}.k3j2x9.{dead_pid()}.tmp"
    running = local / f".{names[1]}.a8b7c6.{os.getpid()}.tmp"   # a live process's
    for path in (killed, running):
        path.write_bytes(b"half a shard")
    return killed, running


def test_a_killed_mirror_s_temporary_files_are_removed_and_a_running_one_s_kept(
        remote, tmp_path, monkeypatch):
    """In the per-user default folder (host-local): a dead pid is a killed copy."""
    monkeypatch.delenv("CREMA_JAX_STAGING", raising=False)
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    base, blobs = remote
    names = sorted(blobs)[:2]
    local = pathlib.Path(staging.staging_dir(base, "cache"))
    killed, running = _half_written(local, names)
    staging.mirror(base, str(local), names=names)
    assert not killed.exists() and running.read_bytes() == b"half a shard"
    assert all((local / n).read_bytes() == blobs[n] for n in names)


def test_in_a_folder_hosts_may_share_only_a_day_old_temporary_of_a_dead_pid_is_removed(
        remote, tmp_path, monkeypatch):
    """CREMA_JAX_STAGING may be one folder for several hosts: a pid dead here may be another
    host's copy in progress, which had been deleted under it."""
    monkeypatch.setenv("CREMA_JAX_STAGING", str(tmp_path / "shared"))
    base, blobs = remote
    names = sorted(blobs)[:2]
    local = pathlib.Path(staging.staging_dir(base, "cache"))
    killed, running = _half_written(local, names)
    staging.mirror(base, str(local), names=names)
    assert killed.read_bytes() == running.read_bytes() == b"half a shard"   # fresh: kept
    two_days_ago = time.time() - 2 * 24 * 3600
    for path in (killed, running):
        os.utime(path, (two_days_ago, two_days_ago))
    staging.mirror(base, str(local), names=names)
    assert not killed.exists() and running.read_bytes() == b"half a shard"
    assert all((local / n).read_bytes() == blobs[n] for n in names)
