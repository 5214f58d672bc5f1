"""Worker processes that start deaf to Ctrl-C (a terminal's SIGINT goes to the whole process
group): `spawn_context()` is multiprocessing's "spawn" context whose processes are started with
SIGINT ignored, so a Ctrl-C that arrives while a worker is still starting (importing numba, JAX)
cannot end it in a KeyboardInterrupt traceback on the user's terminal. A spawned child keeps an
ignored signal ignored, and Python installs its KeyboardInterrupt handler only where SIGINT is
left at its default; each pool's initializer then says what a Ctrl-C does in its workers.

spawn, never fork: worker processes must not inherit a parent's threads (JAX, Grain, pytest).
"""
from __future__ import annotations

import multiprocessing.context
import signal
import threading


class _SpawnProcess(multiprocessing.context.SpawnProcess):
    def start(self):
        if threading.current_thread() is not threading.main_thread():
            return super().start()  # only the main thread may change a handler
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            super().start()
        finally:
            signal.signal(signal.SIGINT, previous)


class _SpawnContext(multiprocessing.context.SpawnContext):
    Process = _SpawnProcess


def spawn_context() -> multiprocessing.context.SpawnContext:
    """The context for a ProcessPoolExecutor (`mp_context=`) or a Process of our commands."""
    return _SpawnContext()


def interrupt_raises() -> None:
    """A worker initializer: from now on Ctrl-C raises KeyboardInterrupt in this worker, as in
    any Python process (its result then carries the interruption back to the parent)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
