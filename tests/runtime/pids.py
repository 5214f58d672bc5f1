"""Process ids: a pid no process holds (the lock tests), and a process's children and whether a
process still runs (the tests of workers that must end with their parent; Linux's /proc)."""
import os


def dead_pid() -> int:
    """A pid no process holds now (counting down from 4,000,000), for a lock left by a dead run."""
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid -= 1


def children(pid: int) -> list[int]:
    """The live (not zombie) processes whose parent is `pid`."""
    found = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            state, parent = open(f"/proc/{name}/stat").read().rsplit(")", 1)[1].split()[:2]
        except OSError:  # ended meanwhile
            continue
        if int(parent) == pid and state != "Z":
            found.append(int(name))
    return found


def alive(pid: int) -> bool:
    """Whether process `pid` exists and is no zombie."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def end_within(pids, seconds: float = 10.0) -> list[int]:
    """Wait up to `seconds` for the processes `pids` to end; return those still running, after
    killing them (SIGKILL), so that a failing test leaves none behind."""
    import signal
    import time
    deadline = time.monotonic() + seconds
    while any(map(alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [pid for pid in pids if alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    return left
