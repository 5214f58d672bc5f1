"""Worker processes that start deaf to Ctrl-C (a terminal's SIGINT goes to the whole process
group): `spawn_context()` is multiprocessing's "spawn" context whose processes are started with
SIGINT ignored, so a Ctrl-C that arrives while a worker is still starting (importing numba, JAX)
cannot end it in a KeyboardInterrupt traceback on the user's terminal. A spawned child keeps an
ignored signal ignored, and Python installs its KeyboardInterrupt handler only where SIGINT is
left at its default; each pool's initializer then says what a Ctrl-C does in its workers.
A worker whose parent was killed outright (SIGKILL, the OOM killer) exits by itself
(`exit_with_parent`): `worker_pool` is the one way our commands start a pool, and gives every
worker both.

spawn, never fork: worker processes must not inherit a parent's threads (JAX, Grain, pytest).
"""
from __future__ import annotations

import concurrent.futures
import multiprocessing.context
import os
import signal
import threading
import time


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


# How often a worker looks whether its parent is still there (exit_with_parent).
PARENT_POLL_SECONDS = 0.5


def exit_with_parent(parent_pid: int, *, poll_seconds: float = PARENT_POLL_SECONDS) -> None:
    """A worker initializer's part: the worker ends (os._exit, at once, mid-task) once the
    process `parent_pid` that started it is gone. A parent killed outright runs no clean-up:
    its workers had kept running the tasks already queued to them, then waited for more for
    ever, with multiprocessing's resource tracker. An orphan is adopted by another process
    (init, a subreaper), so its os.getppid() changes: a daemon thread checks it every
    `poll_seconds`. (Linux's prctl(PR_SET_PDEATHSIG) is not used: it fires when the thread that
    started the worker ends, not its process, and exists on Linux only.)"""
    def watch():
        while os.getppid() == parent_pid:
            time.sleep(poll_seconds)
        os._exit(1)

    threading.Thread(target=watch, name="exit_with_parent", daemon=True).start()


def _start_worker(parent_pid: int, initializer, initargs: tuple) -> None:
    exit_with_parent(parent_pid)
    if initializer is not None:
        initializer(*initargs)


def worker_pool(workers: int, initializer=None,
                initargs: tuple = ()) -> concurrent.futures.ProcessPoolExecutor:
    """A ProcessPoolExecutor of `workers` spawned processes (spawn_context: Ctrl-C ignored while
    they start) that end once this process is gone (exit_with_parent); then `initializer`
    (initargs) says what Ctrl-C does in them."""
    return concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=spawn_context(), initializer=_start_worker,
        initargs=(os.getpid(), initializer, tuple(initargs)))


def interrupt_raises() -> None:
    """A worker initializer: from now on Ctrl-C raises KeyboardInterrupt in this worker, as in
    any Python process (its result then carries the interruption back to the parent)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)


def interrupt_and_join(workers, *, grace: float = 30.0) -> None:
    """What a terminal's Ctrl-C does to a whole process group, for a SIGINT that reached only
    this process (`timeout -s INT`, `kill -INT PID`, a job scheduler): SIGINT to each worker
    (its pool's initializer says what that does), then each still alive after `grace` seconds
    is terminated. Left alone, the workers had kept this process waiting for ever. A second
    Ctrl-C meanwhile is ignored (it had ended in an atexit traceback and orphaned workers)."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        for worker in workers:
            if worker.is_alive():
                try:
                    os.kill(worker.pid, signal.SIGINT)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
            if worker.is_alive():
                worker.terminate()
                worker.join(5)
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
