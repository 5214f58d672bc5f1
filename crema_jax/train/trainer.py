"""Pretraining, top to bottom: mesh -> input pipeline -> model and optimizer -> sharded state ->
update step -> checkpoint restore -> train loop (metrics, NaN guard, checkpoints, preemption).

The same code runs on one CPU, on 8 fake CPU devices, on several processes on localhost and on a
TPU pod slice; only config.mesh and the process count change.
"""
from __future__ import annotations

import math
import signal
import time

import jax
import numpy as np
from absl import logging
from etils import epath
from flax import nnx

from crema_jax import checkpoint as ckpt_lib
from crema_jax import config as config_lib
from crema_jax.data.pipeline import batch as batch_lib
from crema_jax.train import mesh as mesh_lib
from crema_jax.train import metrics as metrics_lib
from crema_jax.train import optimizer as optim_lib
from crema_jax.train import step as step_lib
from crema_jax.train import warm_start


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/Inf; the message names the step and the last good checkpoint."""


def batch_sizes(config, mesh) -> tuple[int, int]:
    """(global batch, per-process batch) from config.train.global_batch_size: every process reads
    an equal share, and the global batch splits evenly over the mesh's batch shards."""
    if config.data.batch_size is not None:
        raise ValueError(f"config.data.batch_size={config.data.batch_size}: pretraining derives "
                         "the per-process batch from config.train.global_batch_size; set that "
                         "instead")
    global_batch, processes = int(config.train.global_batch_size), mesh_lib.process_count(mesh)
    if global_batch <= 0 or global_batch % processes:
        raise ValueError(f"config.train.global_batch_size={global_batch} must be a positive "
                         f"multiple of the {processes} processes (each reads an equal share)")
    if global_batch % mesh_lib.batch_divisor(mesh):
        raise ValueError(f"config.train.global_batch_size={global_batch} must divide by the "
                         f"{mesh_lib.BATCH_AXES} mesh axes ({mesh_lib.batch_divisor(mesh)} shards)")
    return global_batch, global_batch // processes


def for_target(model_cfg, mesh):
    """config.model with residual_boundary="auto" resolved for the devices the step is compiled
    for (the mesh's), not this process's default backend: a TPU dry run compiled on a CPU host
    must carry the plain identity."""
    if model_cfg.residual_boundary != "auto":
        return model_cfg
    resolved = model_cfg.copy_and_resolve_references()
    on_cpu = mesh.devices.flat[0].platform == "cpu"
    with resolved.unlocked():
        resolved.residual_boundary = "on" if on_cpu else "off"
    return resolved


def build(config, *, devices=None):
    """Everything the loop and the dry run share: mesh, rules, optimizer, shardings, jitted step."""
    from crema_jax.losses import get_loss

    # ============================================================================ set up the mesh
    mesh = mesh_lib.make_mesh(config.mesh, devices)
    rules = mesh_lib.logical_rules(mesh, config.mesh)
    global_batch, per_process = batch_sizes(config, mesh)
    model_cfg = for_target(config.model, mesh)
    # ============================================================ create model and optimizer
    tx, schedule = optim_lib.make_optimizer(config.optim, global_batch=global_batch,
                                            total_steps=int(config.train.num_steps))
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
        graphdef, abstract_params, abstract_fixed = step_lib.abstract_model_state(model_cfg, mesh)
    # Outside the mesh context: optax builds the optimizer's scalar leaves eagerly, on the
    # default device, which the mesh's devices need not be (abstract TPU devices in a dry run).
    shardings = step_lib.state_shardings(tx, abstract_params, abstract_fixed, mesh)
    # ================================================================ the update step (jit once)
    replicated = mesh_lib.replicated(mesh)
    jitted = step_lib.make_jitted_step(
        shardings, mesh_lib.batch_sharding(mesh), replicated, graphdef=graphdef, tx=tx,
        schedule=schedule, loss_fn=get_loss(config.loss),
        grad_accum_steps=int(config.optim.grad_accum_steps),
        inject_nan_at_step=int(config.train.inject_nan_at_step))
    init = jax.jit(lambda key: step_lib.init_state(key, model_cfg=model_cfg, tx=tx),
                   out_shardings=shardings)
    return dict(mesh=mesh, rules=rules, tx=tx, schedule=schedule, graphdef=graphdef,
                shardings=shardings, jitted=jitted, init=init, global_batch=global_batch,
                per_process_batch=per_process, replicated=replicated, model_cfg=model_cfg,
                # for evaluators (which never import train/): a host value (identical on every
                # process) as a replicated global array, and what a batch must divide by
                replicate=lambda value: mesh_lib.replicate(value, replicated),
                batch_divisor=mesh_lib.batch_divisor(mesh))


def input_iterator(config, per_process_batch: int):
    """This process's Grain iterator of pretraining batches: config.data with its batch size."""
    from crema_jax.data.pipeline import datasets as pipeline

    data_cfg = config.data.copy_and_resolve_references()
    with data_cfg.unlocked():
        data_cfg.batch_size = int(per_process_batch)
    return iter(pipeline.make_pretrain_dataset(data_cfg))


def compile_step(parts, config, abstract_state):
    """AOT-compile the step against abstract arrays (no data, no parameters allocated)."""
    batch = mesh_lib.abstract_batch(
        batch_lib.pretrain_spec(config.data, parts["per_process_batch"]), parts["mesh"])
    rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=parts["replicated"])
    with jax.set_mesh(parts["mesh"]), nnx.logical_axis_rules(parts["rules"]):
        lowered = parts["jitted"].lower(abstract_state, batch, rng)
    if config.train.fast_compile:
        return _compile_fast(lowered)
    return lowered.compile()


def _compile_fast(lowered):
    """XLA backend optimisation level 0: about half the compile time on CPU, slower steps."""
    try:
        return lowered.compile(compiler_options={"xla_backend_optimization_level": 0})
    except Exception:  # noqa: BLE001 - a backend without the option compiles normally.
        return lowered.compile()


def init_state(parts, rng):
    """A fresh sharded state. The init program runs once, so XLA's backend optimisations only
    cost compile time (seconds on CPU): compile it at level 0."""
    return _compile_fast(parts["init"].lower(rng))(rng)


def abstract_state(parts, config):
    key = jax.eval_shape(lambda: jax.random.key(0))  # abstract: nothing runs on any device
    with jax.set_mesh(parts["mesh"]), nnx.logical_axis_rules(parts["rules"]):
        shapes = jax.eval_shape(parts["init"], key)
    return step_lib.with_shardings(shapes, parts["shardings"])


def _warm_start(parts, config, source: str, rng, target, *, own: bool):
    """Train state whose params (and fixed tables) come from the params-only checkpoint at
    `source`, with a fresh optimizer. `own`: `source` is the workdir itself, whose step the run
    continues from; otherwise (config.train.init_from) the run starts at step 0."""
    loaded, ckpt_config, ckpt_step = ckpt_lib.load_model_checkpoint(source)
    warm_start.check_architecture(config.model, ckpt_config.model, source=source)
    template = step_lib.merge_trees(target["params"], target["fixed"])
    if "encoder" in template and "encoder" not in loaded:  # a bare encoder checkpoint
        loaded = {"encoder": loaded}
    fitted, missing = warm_start.fit_params(loaded, template, source=source)
    if missing:  # their fresh values: the init the run would use without a checkpoint
        fresh = init_state(parts, rng)
        fitted = warm_start.fill_missing(
            fitted, step_lib.merge_trees(fresh["params"], fresh["fixed"]))
    shardings = parts["shardings"]
    placed = jax.tree.map(_place, fitted, step_lib.merge_trees(shardings["params"],
                                                               shardings["fixed"]))
    start = ckpt_step if own else 0
    state = jax.jit(lambda p, f, s: {"params": p, "fixed": f, "opt_state": parts["tx"].init(p),
                                     "step": s}, out_shardings=shardings)(
        step_lib.select_like(placed, target["params"]),
        step_lib.select_like(placed, target["fixed"]),
        mesh_lib.replicate(np.int32(start), parts["replicated"]))
    metrics_lib.print_line(
        f"initialised params from {source} (step {ckpt_step}, params only): fresh optimizer, "
        f"starting at step {start}" + (f"; {len(missing)} freshly initialised" if missing else ""))
    return state, start


def _place(value, sharding):
    """A host array onto `sharding` (every process holds the same copy); device arrays stay."""
    if isinstance(value, jax.Array):
        return value
    host = np.asarray(value)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# Fields whose change makes a checkpoint's state unusable (other parameter or optimizer trees).
_STATE_FIELDS = ("model.scan_layers", "optim.name", "optim.decay_mask")


def resume_changes(config, saved, *, source: str) -> list[str]:
    """Lines naming what differs between the run's config and the checkpoint's. A change that
    the saved state cannot follow (the architecture, the optimizer's structure) is a ValueError
    naming the fields; anything else (steps, learning rate, logging) is reported and allowed."""
    run, old = (_flat(ckpt_lib.config_to_json_dict(c)) for c in (config, saved))
    changed = sorted(k for k in set(run) | set(old) if run.get(k) != old.get(k))
    if not changed:
        return []
    arch_run, arch_old = (warm_start.architecture(c.model) for c in (config, saved))
    fatal = []
    if arch_run != arch_old:  # name the fields as the user set them (model.size) and resolved
        fatal = [f"config.{k}: checkpoint {old.get(k)!r}, run {run.get(k)!r}"
                 for k in changed if k.startswith("model.")]
        fatal += [f"(model {k}: {arch_old.get(k)!r} vs {arch_run.get(k)!r})"
                  for k in sorted(set(arch_run) | set(arch_old))
                  if arch_run.get(k) != arch_old.get(k) and f"model.{k}" not in changed]
    fatal += [f"config.{k}: checkpoint {old.get(k)!r}, run {run.get(k)!r}"
              for k in _STATE_FIELDS if k in changed]
    if (float(old.get("optim.grad_clip_norm", 0)) > 0) != (float(run.get("optim.grad_clip_norm",
                                                                              0)) > 0):
        fatal.append("config.optim.grad_clip_norm: clipping turned on or off changes the "
                     "optimizer state")
    if fatal:
        raise ValueError(f"{source}: this run cannot resume the workdir's checkpoint: "
                         + "; ".join(fatal) + ". Use the checkpoint's values, or a new --workdir")
    shown = ", ".join(f"{k} {old.get(k)!r} -> {run.get(k)!r}" for k in changed[:8])
    more = f" (+{len(changed) - 8} more)" if len(changed) > 8 else ""
    return [f"resuming with changed config fields: {shown}{more}"]


def dry_run(config, *, devices=None) -> dict:
    """Lower and compile the step for the configured mesh; FLOPs and memory per device.

    `devices` may be abstract (mesh_lib.tpu_topology_devices): a pod slice's step is then
    compiled by the TPU compiler on this machine, and its per-device memory is the TPU's plan.
    """
    config_lib.validate(config)
    parts = build(config, devices=devices)
    compiled = compile_step(parts, config, abstract_state(parts, config))
    flops = metrics_lib.compiled_flops_per_device(compiled)
    device = parts["mesh"].devices.flat[0]
    report = {"mesh": dict(parts["mesh"].shape), "global_batch": parts["global_batch"],
              "devices": int(parts["mesh"].size), "device_kind": device.device_kind,
              "processes": mesh_lib.process_count(parts["mesh"]),
              "flops_per_step_per_device": flops,
              "flops_per_step": flops * parts["mesh"].size,
              "memory_per_device": metrics_lib.memory_summary(compiled)}
    if device.platform != "cpu":  # A table peak: the fastest a step could possibly be.
        peak, _ = metrics_lib.peak_tflops_per_device(config.model.dtype, device)
        if math.isfinite(peak):
            report["step_seconds_at_peak"] = flops / (peak * 1e12)
    return report


def train(config, workdir, *, devices=None, batch_iter=None, evaluators=None) -> dict:
    """Pretrains per `config` in `workdir`; returns {"losses": {step: loss}, "last_step",
    "evals": {step: row}, ...}.

    `batch_iter` replaces the configured Grain pipeline (tests, benchmarks): any iterator of
    per-process batches; it is checkpointed only if it has get_state/set_state.
    `evaluators(config, parts) -> [evaluator, ...]` builds what config.evals.names lists
    (crema_jax.evaluate.evaluators.build; the pretrain command passes it); each evaluator's
    `run(state)` metrics are logged at every multiple of config.evals.every_steps and at the
    last step, before that step's checkpoint is written.

    The workdir is locked for the run (checkpoint.WorkdirLock, process 0); incomplete steps a
    crash left are set aside; resume=False on a workdir with checkpoints is refused unless
    checkpoint.overwrite (checkpoint.prepare_workdir).
    """
    config_lib.validate(config)
    if config.evals.names and evaluators is None:
        raise ValueError(f"config.evals.names={tuple(config.evals.names)} needs "
                         "evaluators=crema_jax.evaluate.evaluators.build (the pretrain command "
                         "passes it)")
    workdir = epath.Path(workdir)
    lock = None
    if jax.process_index() == 0:
        lock = ckpt_lib.WorkdirLock(workdir,
                                    stale_seconds=float(config.checkpoint.lock_stale_seconds))
        note = lock.acquire()
        if note:
            metrics_lib.print_line(note)
    try:
        if jax.process_index() == 0:
            for note in ckpt_lib.prepare_workdir(workdir, resume=bool(config.checkpoint.resume),
                                                 overwrite=bool(config.checkpoint.overwrite)):
                metrics_lib.print_line(note)
        return _train(config, workdir, devices=devices, batch_iter=batch_iter, lock=lock,
                      evaluators=evaluators)
    finally:
        if lock is not None:
            lock.release()


def _restore(parts, config, workdir, manager, target, grain_iter):
    """(state, rng, step, manager) of the newest training checkpoint that restores. A step that
    fails is set aside as `<step>.damaged-TIME` (kept) with one line naming it, and the one
    before it is tried; None when no step restores (then the run starts afresh only if there
    was none: a workdir whose every step is damaged is an error)."""
    root = ckpt_lib.checkpoints_dir(workdir)
    steps = sorted(ckpt_lib.complete_steps(root), reverse=True)
    for step in steps:
        try:
            restored = ckpt_lib.restore_train_state(
                manager, step,
                abstract_params=step_lib.merge_trees(target["params"], target["fixed"]),
                abstract_opt_state=target["opt_state"], data_iter=grain_iter)
        except Exception as err:  # noqa: BLE001 - any damage: truncated, corrupt, mismatched
            if jax.process_count() > 1:
                raise
            manager.close()
            moved = ckpt_lib.set_aside(root / str(step), "damaged")
            reason = " ".join(str(err).split())[:200]
            metrics_lib.print_line(f"checkpoint step {step} could not be restored "
                                   f"({type(err).__name__}: {reason}); kept as {moved.name}, "
                                   "trying the step before it")
            manager = ckpt_lib.make_manager(workdir,
                                            max_to_keep=int(config.checkpoint.max_to_keep),
                                            async_save=bool(config.checkpoint.async_save))
            continue
        state = {"params": step_lib.select_like(restored["params"], target["params"]),
                 "fixed": step_lib.select_like(restored["params"], target["fixed"]),
                 "opt_state": restored["opt_state"],
                 "step": mesh_lib.replicate(np.int32(step), parts["replicated"])}
        return state, restored["rng"], step, manager
    if steps:
        raise ValueError(f"{root}: no checkpoint step restores (all set aside as damaged); "
                         "start a new run with a new --workdir")
    return None, None, None, manager


def _train(config, workdir, *, devices, batch_iter, lock, evaluators) -> dict:
    parts = build(config, devices=devices)
    mesh, num_steps = parts["mesh"], int(config.train.num_steps)
    logging.info("mesh %s, global batch %d", dict(mesh.shape), parts["global_batch"])

    # ============================================================================ input pipeline
    data_iter = (input_iterator(config, parts["per_process_batch"]) if batch_iter is None
                 else batch_iter)
    grain_iter = data_iter if hasattr(data_iter, "get_state") else None

    # ================================================================== shard and transfer
    manager = ckpt_lib.make_manager(workdir, max_to_keep=int(config.checkpoint.max_to_keep),
                                    async_save=bool(config.checkpoint.async_save))
    base_rng = jax.random.wrap_key_data(mesh_lib.replicate(
        jax.random.key_data(jax.random.key(int(config.train.seed))), parts["replicated"]))
    target = abstract_state(parts, config)

    # ============================================================================ load checkpoint
    start = (ckpt_lib.latest_step(ckpt_lib.checkpoints_dir(workdir))
             if config.checkpoint.resume else None)
    init_from = str(config.train.init_from or "")
    if start is not None and not ckpt_lib.has_train_state(workdir, start):
        init_from = str(workdir)  # e.g. `import-torch --out=W` then `pretrain --workdir=W`
    elif start is not None:
        init_from = ""  # the workdir's own training state wins over init_from
    if start is not None and not init_from:
        for line in resume_changes(config, ckpt_lib.load_config(workdir), source=str(workdir)):
            metrics_lib.print_line(line)
    with jax.set_mesh(mesh), nnx.logical_axis_rules(parts["rules"]):
        if init_from:
            state, start = _warm_start(parts, config, init_from, base_rng, target,
                                       own=start is not None)
        elif start is not None:
            state, rng, start, manager = _restore(parts, config, workdir, manager, target,
                                                  grain_iter)
            if state is None:
                start, state = 0, init_state(parts, base_rng)
            else:
                base_rng = rng
                metrics_lib.print_line(f"resumed from step {start} of {workdir}")
        else:
            start = 0
            state = init_state(parts, base_rng)
        compiled = compile_step(parts, config, target)

    flops = metrics_lib.compiled_flops_per_device(compiled)
    peak, peak_source = metrics_lib.peak_tflops_per_device(config.model.dtype)
    metrics_lib.print_line(
        f"compiled train step: {flops * mesh.size / 1e9:.2f} GFLOP/step, peak "
        f"{peak:.2f} TFLOP/s/device ({peak_source}), mesh {dict(mesh.shape)}")

    evals = evaluators(config, parts) if config.evals.names else []
    eval_rows, every_eval = {}, int(config.evals.every_steps)
    profile = _Profile(config.train.profile_steps, workdir)

    def evaluate(step: int) -> None:
        row = {}
        for evaluator in evals:
            t0 = time.perf_counter()
            row.update(evaluator.run(state))
            row[f"eval/{evaluator.name}_seconds"] = time.perf_counter() - t0
        eval_rows[step] = row
        writer.write(step, row)
        for evaluator in evals:
            metrics_lib.print_line(f"step {step} eval: {evaluator.summary(row)}")

    def save(step: int) -> None:
        ckpt_lib.save_train_state(
            manager, step, params=step_lib.merge_trees(state["params"], state["fixed"]),
            opt_state=state["opt_state"], rng=base_rng, config=config, data_iter=grain_iter)

    # ============================================================================ train loop
    # The host never waits for the step it just dispatched: step N's metrics are fetched after
    # step N+1 is on its way (MaxText's one-step-behind logging), except where a checkpoint or
    # the end needs them first (a state is saved only after its loss is known to be finite).
    writer = metrics_lib.MetricWriter(workdir, tensorboard=bool(config.train.tensorboard))
    stop = _PreemptionWatch()
    losses, step, last_saved = {}, start, start if start else None
    stop_after = int(config.train.stop_after_steps)
    delay = float(config.train.debug_step_delay_seconds)
    clock = {"done": time.perf_counter(), "ema": None}
    pending = None

    def finish(entry) -> None:
        """Fetch a dispatched step's metrics (blocks until it ran), check, log."""
        done_step, device_metrics, data_wait = entry
        host = jax.device_get(device_metrics)
        now = time.perf_counter()
        dt, clock["done"] = now - clock["done"], now
        clock["ema"] = dt if clock["ema"] is None else 0.9 * clock["ema"] + 0.1 * dt
        loss = float(host["loss"])
        if not np.isfinite(loss):
            raise NonFiniteLossError(
                f"loss became {loss} at step {done_step}; stopped without saving this state "
                f"(last good checkpoint: step {last_saved} in {ckpt_lib.checkpoints_dir(workdir)})")
        losses[done_step] = loss
        row = {k: float(v) for k, v in host.items()}
        row.update(metrics_lib.perf_metrics(
            step_seconds=dt, flops_per_device=flops, peak_tflops=peak,
            global_batch=parts["global_batch"], data_wait_seconds=data_wait))
        if done_step % int(config.train.log_every_steps) == 0 or done_step == num_steps:
            writer.write(done_step, row)
            metrics_lib.print_line(metrics_lib.progress_line(
                done_step, num_steps, row, eta_seconds=clock["ema"] * (num_steps - done_step)))

    try:
        while step < num_steps:
            t0 = time.perf_counter()
            local = next(data_iter)
            data_wait = time.perf_counter() - t0
            batch = mesh_lib.global_batch(batch_lib.device_part(local), mesh)
            profile.before(step)
            state, metrics = compiled(state, batch, base_rng)
            step += 1
            if pending is not None:
                finish(pending)
            pending = (step, metrics, data_wait)
            profile.after(step, state)
            preempted = stop.requested(step)
            early = stop_after and step - start >= stop_after
            if evals and (step % every_eval == 0 or step == num_steps):
                finish(pending)
                pending = None
                evaluate(step)
            if (step % int(config.checkpoint.every_steps) == 0 or step == num_steps or preempted
                    or early):
                if pending is not None:
                    finish(pending)
                pending = None
                save(step)
                last_saved = step
            if preempted:
                metrics_lib.print_line(f"SIGTERM: saved step {step}, exiting")
                break
            if early:
                break
            if lock is not None:
                lock.refresh()
            if delay:
                time.sleep(delay)
    finally:
        profile.stop()
        manager.wait_until_finished()
        manager.close()
        writer.close()
        stop.restore()
        if hasattr(data_iter, "close"):
            data_iter.close()
    return {"losses": losses, "last_step": step, "evals": eval_rows, "evaluators": evals,
            "state": state, "graphdef": parts["graphdef"],
            "mesh": mesh, "flops_per_device": flops, "model_cfg": parts["model_cfg"]}


class _Profile:
    """config.train.profile_steps "A:B": a jax.profiler trace of steps A+1..B in
    WORKDIR/profile (process 0; TensorBoard's profile plugin reads it)."""

    def __init__(self, spec: str, workdir):
        self.range = config_lib.profile_range(spec) if spec else None
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
            metrics_lib.print_line(f"profile of steps {self.range[0] + 1}-{self.range[1]} "
                                   f"written to {self.dir}")


class _PreemptionWatch:
    """SIGTERM -> save and exit at a step every process agrees on.

    One process: a signal handler sets a flag. Several: JAX's preemption sync point (the
    coordination service sees the signal and picks one step for all processes).
    """

    def __init__(self):
        self._flag = False
        self._multi = jax.process_count() > 1
        self._previous = None
        if not self._multi:
            try:
                self._previous = signal.signal(signal.SIGTERM, self._handle)
            except ValueError:  # Not the main thread (e.g. some notebook runners): no handler.
                self._previous = None

    def _handle(self, signum, frame):
        self._flag = True

    def requested(self, step: int) -> bool:
        if self._multi:
            from jax.experimental import multihost_utils
            return bool(multihost_utils.reached_preemption_sync_point(step))
        return self._flag

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
