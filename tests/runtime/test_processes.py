"""Worker processes start deaf to Ctrl-C: a SIGINT to the process group while a worker was
still importing numba printed a KeyboardInterrupt traceback under `prepare: interrupted`. The
reference is Python's documented behaviour: a child keeps an ignored signal ignored, and Python
installs its KeyboardInterrupt handler only over the default one."""
import concurrent.futures
import functools
import multiprocessing
import signal

import pytest

from crema_jax.runtime import processes

DISPOSITION = functools.partial(signal.getsignal, signal.SIGINT)


def _child_disposition(initializer=None):
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=processes.spawn_context(),
                                                initializer=initializer) as pool:
        return pool.submit(DISPOSITION).result(timeout=120)


def test_workers_start_with_ctrl_c_ignored_and_the_parent_keeps_its_handler():
    def parent_handler(signum, frame):
        raise AssertionError("never called")

    # The parent handles SIGINT here whatever it inherited (a suite started in the background
    # inherits it ignored, and so would every child), so the contrast below holds.
    previous = signal.signal(signal.SIGINT, parent_handler)
    try:
        assert _child_disposition() == signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) is parent_handler
        # A plain spawned worker, for contrast: Python's own KeyboardInterrupt handler.
        with concurrent.futures.ProcessPoolExecutor(
                1, mp_context=multiprocessing.get_context("spawn")) as pool:
            assert pool.submit(DISPOSITION).result(timeout=120) == signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)


def test_an_initializer_gives_the_workers_their_ctrl_c():
    assert _child_disposition(processes.interrupt_raises) == signal.default_int_handler


def test_a_ctrl_c_while_the_pool_starts_leaves_no_worker(monkeypatch):
    """A SIGINT to prepare alone (`timeout -s INT`) landing after its first worker started and
    before the pool's manager thread did: the pool's shutdown had nothing to stop, and the
    worker kept the process waiting for ever at exit."""
    import concurrent.futures.process

    from crema_jax.data.cache import prepare

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(concurrent.futures.process.ProcessPoolExecutor,
                        "_start_executor_manager_thread", interrupted)
    monkeypatch.setattr(prepare, "STOP_GRACE_SECONDS", 2.0)
    try:
        with pytest.raises(KeyboardInterrupt):
            list(prepare._run_tasks([{}, {}], workers=2))
        left = [p for p in multiprocessing.active_children() if p.is_alive()]
        assert left == []
    finally:
        for p in multiprocessing.active_children():
            p.kill()
