"""The train loop of `trainer.train`: step after step, one step behind on metrics, evaluations
and checkpoints at their steps, the NaN guard, SIGTERM (preemption) and the drills' faults."""
from __future__ import annotations

import time

import jax
import numpy as np

from crema_jax.data.pipeline import batch as batch_lib
from crema_jax.runtime import checkpoint as ckpt_lib
from crema_jax.runtime import mesh as mesh_lib
from crema_jax.runtime import trees
from crema_jax.runtime import workdir as workdir_lib
from crema_jax.train import hooks, perf, progress


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/Inf; the message names the step and the last good checkpoint."""


class Loop:
    """The train loop. The host never waits for the step it just dispatched: step N's metrics
    are fetched after step N+1 is on its way (MaxText's one-step-behind logging), except where
    an evaluation, a checkpoint or the end needs them first (a state is saved only after its
    loss is known to be finite)."""

    def __init__(self, config, workdir, setup, compiled, start, evals, *, lock, drill,
                 grain_iter, flops, peak):
        self.config, self.workdir, self.setup, self.compiled = config, workdir, setup, compiled
        self.state, self.rng, self.manager = start.state, start.rng, start.manager
        self.step, self.start = start.step, start.step
        self.saves = ckpt_lib.SaveWatch(self.manager, start.step if start.step else None)
        self.evals, self.lock, self.drill, self.grain_iter = evals, lock, drill, grain_iter
        self.flops, self.peak = flops, peak
        self.losses, self.eval_rows, self.pending = {}, {}, None
        self.clock = {"done": time.perf_counter(), "ema": None}
        self.writer = progress.MetricWriter(workdir, tensorboard=bool(config.train.tensorboard),
                                            resume_step=start.step)
        self.profile = hooks.Profile(config.train.profile_steps, workdir)
        self.preemption = hooks.PreemptionWatch()
        self.preempted = False  # SIGTERM ended the loop before num_steps (the step was saved)

    def run(self, data_iter) -> None:
        num_steps, cfg = int(self.config.train.num_steps), self.config
        stop_after, every_eval = int(cfg.train.stop_after_steps), int(cfg.evals.every_steps)
        while self.step < num_steps:
            self.saves.poll()
            t0 = time.perf_counter()
            try:
                self.preemption.waiting_for_data = True
                local = self.drill.batch(self.step + 1, next(data_iter))
            except hooks.DataWaitInterrupted:  # SIGTERM during a wait that may never end
                self.finish_pending()
                if self.step > self.start:
                    self.save()
                progress.print_line(f"SIGTERM while waiting for data: "
                                    f"{'saved' if self.step > self.start else 'at'} step "
                                    f"{self.step}, exiting")
                self.preempted = True
                break
            finally:
                self.preemption.waiting_for_data = False
            data_wait = time.perf_counter() - t0
            batch = mesh_lib.global_batch(batch_lib.device_part(local), self.setup.mesh)
            self.profile.before(self.step)
            self.state, metrics = self.compiled(self.state, batch, self.rng)
            self.step += 1
            self.finish_pending()
            self.pending = (self.step, metrics, data_wait)
            self.profile.after(self.step, self.state)
            preempted = self.preemption.requested(self.step)
            early = stop_after and self.step - self.start >= stop_after
            if self.evals and (self.step % every_eval == 0 or self.step == num_steps):
                self.finish_pending()
                self.evaluate()
            if (self.step % int(cfg.checkpoint.every_steps) == 0 or self.step == num_steps
                    or preempted or early):
                self.finish_pending()
                self.save()
            if preempted:
                progress.print_line(f"SIGTERM: saved step {self.step}, exiting")
                self.preempted = self.step < num_steps  # the last step: the run is finished
                break
            if early:
                break
            if self.lock is not None:
                self.lock.refresh()
            if self.drill.step_delay_seconds:
                time.sleep(self.drill.step_delay_seconds)

    def finish_pending(self) -> None:
        """Fetch the dispatched step's metrics (blocks until it ran), check the loss, log."""
        if self.pending is None:
            return
        done_step, device_metrics, data_wait = self.pending
        self.pending = None
        host = jax.device_get(device_metrics)
        now = time.perf_counter()
        dt, self.clock["done"] = now - self.clock["done"], now
        ema = self.clock["ema"]
        self.clock["ema"] = dt if ema is None else 0.9 * ema + 0.1 * dt
        loss = float(host["loss"])
        # The loss is of the parameters before the step's update; their norm after it says
        # whether the update itself overflowed (a learning rate of 1e300 had saved a checkpoint
        # of NaN weights as the "last good" one).
        norm = float(host.get("learning/param_norm", 0.0))
        if not np.isfinite(loss) or not np.isfinite(norm):
            self.saves.wait()  # the message names the last checkpoint known to be written
            what = (f"loss became {loss}" if not np.isfinite(loss) else
                    f"the parameters' norm became {norm} (the update overflowed float32)")
            raise NonFiniteLossError(
                f"{what} at step {done_step}; stopped without saving this state "
                f"(last good checkpoint: step {self.saves.last_complete} in "
                f"{workdir_lib.checkpoints_dir(self.workdir)})")
        self.losses[done_step] = loss
        row = {k: float(v) for k, v in host.items()}
        row.update(perf.perf_metrics(
            step_seconds=dt, flops_per_device=self.flops, peak_tflops=self.peak,
            global_batch=self.setup.global_batch, data_wait_seconds=data_wait))
        num_steps = int(self.config.train.num_steps)
        if done_step % int(self.config.train.log_every_steps) == 0 or done_step == num_steps:
            self.writer.write(done_step, row)
            eta = self.clock["ema"] * (num_steps - done_step)
            progress.print_line(progress.progress_line(done_step, num_steps, row, eta_seconds=eta))

    def evaluate(self) -> None:
        row = {}
        for evaluator in self.evals:
            t0 = time.perf_counter()
            row.update(evaluator.run(self.state))
            row[f"eval/{evaluator.name}_seconds"] = time.perf_counter() - t0
        self.eval_rows[self.step] = row
        self.writer.write(self.step, row)
        for evaluator in self.evals:
            progress.print_line(f"step {self.step} eval: {evaluator.summary(row)}")

    def save(self) -> None:
        self.drill.before_save(self.step, self.manager)
        self.saves.save(
            self.step, params=trees.merge(self.state["params"], self.state["fixed"]),
            opt_state=self.state["opt_state"], rng=self.rng, config=self.config,
            data_iter=self.grain_iter)

    def close(self) -> None:
        self.profile.stop()
        try:
            self.saves.wait()
        finally:
            self.manager.close()
        self.writer.close()
        self.preemption.restore()
