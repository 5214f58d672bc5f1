"""WorkdirLock's two takeovers (a stale lock of a dead process, an unreadable lock) remove the lock
only while it is still the one they judged: neither a lock another run wrote meanwhile nor one
its holder renewed meanwhile is removed."""
import json
import os
import socket
import time

import pytest

from crema_jax.runtime import storage
from crema_jax.runtime import workdir as workdir_lib
from tests.runtime.pids import dead_pid

OLD = int(time.time()) - 60   # past DAMAGED_GRACE_SECONDS
LOCKS = {"stale": (json.dumps({"pid": dead_pid(), "host": socket.gethostname(),
                               "started": "earlier"}).encode(), "took over the stale lock of pid"),
         "unreadable": (b"", "took over the unreadable lock")}


def _lock(tmp_path, kind):
    lock = tmp_path / workdir_lib.WorkdirLock.NAME
    lock.write_bytes(LOCKS[kind][0])
    os.utime(lock, (OLD, OLD))
    return lock


def _change_at(call: int, change, monkeypatch):
    """storage.modified that runs `change` at its `call`-th call: the 1st is where acquire
    judges the lock, the 2nd where it checks, before removing it, that it is still that lock."""
    modified, calls = storage.modified, []

    def patched(path):
        calls.append(path)
        if len(calls) == call:
            change()
        return modified(path)
    monkeypatch.setattr(storage, "modified", patched)


@pytest.mark.parametrize("kind", sorted(LOCKS))
def test_a_lock_unchanged_since_it_was_judged_is_taken_over(tmp_path, kind):
    lock = _lock(tmp_path, kind)
    mine = workdir_lib.WorkdirLock(tmp_path)
    assert mine.acquire().startswith(LOCKS[kind][1]) and mine.held
    assert json.loads(lock.read_text())["id"] == mine.info["id"]


OTHER = json.dumps({"pid": os.getpid(), "host": "other-host", "started": "now",
                    "id": "f" * 32}).encode()


def _renewed(lock):
    os.utime(lock, (OLD + 30, OLD + 30))    # its holder's heartbeat: the text is unchanged


def _replaced(lock):
    lock.write_bytes(OTHER)                 # another run's lock, as old as the judged one
    os.utime(lock, (OLD, OLD))


@pytest.mark.parametrize("kind", sorted(LOCKS))
@pytest.mark.parametrize("change, call", [(_renewed, 2), (_replaced, 1)])
def test_a_lock_changed_since_it_was_judged_is_not_removed(tmp_path, monkeypatch, kind, change,
                                                           call):
    lock = _lock(tmp_path, kind)
    _change_at(call, lambda: change(lock), monkeypatch)
    mine = workdir_lib.WorkdirLock(tmp_path)
    with pytest.raises(workdir_lib.WorkdirLockedError, match="another run took the lock first"):
        mine.acquire()
    renewed = change is _renewed
    assert not mine.held
    assert lock.read_bytes() == (LOCKS[kind][0] if renewed else OTHER)
    assert os.stat(lock).st_mtime == (OLD + 30 if renewed else OLD)
