"""What a training run reports as it goes: the progress line, metrics.jsonl and TensorBoard events
(process 0 only)."""
from __future__ import annotations

import json
import math
import os
import sys

import jax
import numpy as np
from etils import epath

from crema_jax.runtime import durations


def progress_line(step: int, total_steps: int, metrics: dict, eta_seconds: float) -> str:
    loss_terms = " ".join(f"{k.split('/', 1)[1]}={v:.4f}" for k, v in metrics.items()
                          if k.startswith("loss/"))
    return (f"step {step}/{total_steps} loss={metrics['loss']:.5f} {loss_terms} "
            f"lr={metrics.get('learning/lr', float('nan')):.3e} "
            f"gnorm={metrics.get('learning/grad_norm', float('nan')):.3f} "
            f"{metrics.get('perf/step_time_seconds', float('nan')) * 1e3:.0f}ms/step "
            f"{metrics.get('perf/ecgs_per_sec', float('nan')):.1f}ecg/s "
            f"mfu={metrics.get('perf/mfu', float('nan')):.2%} "
            f"eta={durations.format_duration(eta_seconds)}").replace("  ", " ")


class MetricWriter:
    """WORKDIR/metrics.jsonl (one object per logged step) + TensorBoard events, on process 0.

    The JSONL file is appended to, so a resumed run continues it; each line carries its step.
    A run resumed from step `resume_step` redoes the steps after it, so their rows of the run
    before (and a line a crash cut short) move to WORKDIR/metrics.superseded.jsonl first: every
    step has one row in metrics.jsonl, and nothing is lost.
    """

    def __init__(self, workdir, *, enabled: bool | None = None, tensorboard: bool = True,
                 resume_step: int | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self._jsonl = None
        self._tb = None
        if not self.enabled:
            return
        workdir = epath.Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            supersede_rows_after(workdir / "metrics.jsonl", resume_step)
        self._jsonl_path = workdir / "metrics.jsonl"
        self._jsonl = self._jsonl_path.open("a")
        if tensorboard:
            from tensorboardX import SummaryWriter  # only when asked for: it loads protobuf
            self._tb = SummaryWriter(logdir=str(workdir / "tensorboard"))

    def write(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        row = {"step": int(step)}
        row.update({k: _plain(v) for k, v in metrics.items()})
        try:
            self._jsonl.write(json.dumps(row) + "\n")
            self._jsonl.flush()
        except OSError as err:  # a full disk: the one-line report names the file
            raise OSError(err.errno, f"cannot write {self._jsonl_path}: "
                                     f"{err.strerror or err}") from None
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(k, v, global_step=step)

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


SUPERSEDED_NAME = "metrics.superseded.jsonl"


def supersede_rows_after(path: epath.Path, step: int) -> int:
    """Move the rows of `path` (metrics.jsonl) logged after `step`, and any line that is not a
    row, to metrics.superseded.jsonl beside it (appended); returns how many moved."""
    if not path.exists():
        return 0
    keep, later = [], []
    for line in path.read_text().splitlines():
        try:
            row_step = json.loads(line)["step"]
        except (ValueError, KeyError, TypeError):
            row_step = None
        (keep if isinstance(row_step, int) and row_step <= step else later).append(line)
    if not later:
        return 0
    with (path.parent / SUPERSEDED_NAME).open("a") as f:
        f.write("".join(line + "\n" for line in later))
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    tmp.write_text("".join(line + "\n" for line in keep))
    tmp.replace(path)   # one step: a crash leaves the old rows or the new ones
    return len(later)


def _plain(v):
    v = np.asarray(v)
    return v.item() if v.size == 1 else v.tolist()


def print_line(text: str) -> None:
    if jax.process_index() == 0:
        print(text, flush=True, file=sys.stdout)
