"""What hooks into the train loop besides the step: a profiler trace of chosen steps, SIGTERM
(preemption), and the fault drills the tests run (never part of a user's config).
"""
from __future__ import annotations

import dataclasses
import os
import resource
import signal

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from crema_jax import config_checks
from crema_jax.train import progress


class Profile:
    """config.train.profile_steps "A:B": a jax.profiler trace of steps A+1..B in
    WORKDIR/profile (process 0; TensorBoard's profile plugin reads it)."""

    def __init__(self, spec: str, workdir):
        self.range = config_checks.profile_range(spec) if spec else None
        self.dir = str(epath.Path(workdir) / "profile")
        self.active = False

    def before(self, step: int) -> None:
        """Called before dispatching step+1."""
        if self.range and step == self.range[0] and jax.process_index() == 0:
            jax.profiler.start_trace(self.dir)
            self.active = True

    def after(self, step: int, state) -> None:
        if self.active and step == self.range[1]:
            jax.block_until_ready(state)
            self.stop()

    def stop(self) -> None:
        if self.active:
            self.active = False
            jax.profiler.stop_trace()
            progress.print_line(f"profile of steps {self.range[0] + 1}-{self.range[1]} "
                                f"written to {self.dir}")


class DataWaitInterrupted(Exception):
    """SIGTERM arrived while the train loop waited for a batch."""


class PreemptionWatch:
    """SIGTERM -> save and exit at a step every process agrees on.

    One process: a signal handler sets a flag. Several: JAX's preemption sync point (the
    coordination service sees the signal and picks one step for all processes).
    """

    def __init__(self):
        self._flag = False
        self._multi = jax.process_count() > 1
        self._previous = None
        # True while the loop waits for its next batch: a SIGTERM then interrupts the wait
        # (DataWaitInterrupted), which could otherwise last for ever (a stalled input).
        self.waiting_for_data = False
        if not self._multi:
            try:
                self._previous = signal.signal(signal.SIGTERM, self._handle)
            except ValueError:  # Not the main thread (e.g. some notebook runners): no handler.
                self._previous = None

    def _handle(self, signum, frame):
        self._flag = True
        if self.waiting_for_data:
            self.waiting_for_data = False
            raise DataWaitInterrupted()

    def requested(self, step: int) -> bool:
        if self._multi:
            return bool(multihost_utils.reached_preemption_sync_point(step))
        return self._flag

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


@dataclasses.dataclass(frozen=True)
class FaultDrill:
    """Faults the tests inject into a real run (kill -9 and preemption drills, the NaN guard).
    A user never sets these; a `crema-jax pretrain` process reads them from the environment
    (`from_env`), a test calling `trainer.train` passes them.

    nan_batch_at_step: the batch of this (1-based) step is all NaN, so its loss is, as a diverged
      step's would be (-1: off).
    step_delay_seconds: sleep after every step, so that a drill can kill the run mid-way.
    full_disk_at_step: before the checkpoint of this step is written (earlier saves finished),
      no file of the process may grow past `full_disk_bytes` any more (RLIMIT_FSIZE, with
      SIGXFSZ ignored: the kernel fails such writes with EFBIG, as a full disk fails them with
      ENOSPC), so that save fails in Orbax's background threads (-1: off).
    """
    nan_batch_at_step: int = -1
    step_delay_seconds: float = 0.0
    full_disk_at_step: int = -1
    full_disk_bytes: int = 0

    ENV_NAN = "CREMA_JAX_DRILL_NAN_BATCH_AT_STEP"
    ENV_DELAY = "CREMA_JAX_DRILL_STEP_DELAY_SECONDS"
    ENV_FULL_DISK = "CREMA_JAX_DRILL_FULL_DISK_AT_STEP"
    ENV_FULL_DISK_BYTES = "CREMA_JAX_DRILL_FULL_DISK_BYTES"

    @classmethod
    def from_env(cls, environ=None) -> "FaultDrill":
        environ = os.environ if environ is None else environ
        return cls(nan_batch_at_step=int(environ.get(cls.ENV_NAN, "-1")),
                   step_delay_seconds=float(environ.get(cls.ENV_DELAY, "0")),
                   full_disk_at_step=int(environ.get(cls.ENV_FULL_DISK, "-1")),
                   full_disk_bytes=int(environ.get(cls.ENV_FULL_DISK_BYTES, "0")))

    def before_save(self, step: int, manager) -> None:
        """Called before the checkpoint of `step` is started."""
        if step != self.full_disk_at_step:
            return
        manager.wait_until_finished()
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.full_disk_bytes, hard))

    def batch(self, step: int, batch: dict) -> dict:
        """`batch` as step `step` (1-based) trains on it."""
        if step != self.nan_batch_at_step:
            return batch
        return {k: np.full_like(v, np.nan) if np.issubdtype(np.asarray(v).dtype, np.floating)
                else v for k, v in batch.items()}
