"""Process ids for the lock tests."""
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
