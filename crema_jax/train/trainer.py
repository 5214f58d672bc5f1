"""Pretraining, top to bottom: mesh -> model and optimizer -> update step -> input pipeline ->
sharded state and checkpoint restore -> evaluators -> train loop (metrics, NaN guard,
checkpoints, preemption: train/loop.py).

The same code runs on one CPU, on 8 fake CPU devices, on several processes on localhost and on a
TPU pod slice; only config.mesh and the process count change.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Callable

import jax
from absl import logging
from etils import epath
from flax import nnx

from crema_jax import config_checks
from crema_jax import losses, models
from crema_jax.data.pipeline import batch as batch_lib
from crema_jax.models import sharding
from crema_jax.runtime import checkpoint as ckpt_lib
from crema_jax.runtime import made_folders
from crema_jax.runtime import mesh as mesh_lib
from crema_jax.runtime import optimizer as optim_lib
from crema_jax.runtime import workdir as workdir_lib
from crema_jax.train import hooks, layout, perf, progress, resume
from crema_jax.train import loop as loop_lib
from crema_jax.train import step as step_lib


@dataclasses.dataclass(frozen=True)
class Setup:
    """Everything the loop, the dry run and the evaluators share, built once by `build`."""
    mesh: jax.sharding.Mesh
    rules: tuple            # logical axis -> mesh axes
    model_cfg: Any          # config.model resolved for the mesh's devices (layout.for_target)
    graphdef: Any           # the pretraining model's nnx graph (params travel separately)
    tx: Any                 # the optax optimizer
    schedule: Callable      # step -> learning rate
    shardings: dict         # NamedShardings of the train state
    step_fn: Callable       # the jitted train step (state, batch, rng) -> (state, metrics)
    init_fn: Callable       # the jitted init: key -> train state
    global_batch: int
    per_process_batch: int

    @property
    def replicated(self) -> jax.sharding.NamedSharding:
        return mesh_lib.replicated(self.mesh)

    @contextlib.contextmanager
    def on_mesh(self):
        """The context the step runs in: the mesh and its logical-axis rules."""
        with jax.set_mesh(self.mesh), nnx.logical_axis_rules(self.rules):
            yield


# ================================================================================ the setup
def build(config, *, devices=None) -> Setup:
    """Mesh, rules, optimizer, the model's abstract state and shardings, the jitted step."""
    # ------------------------------------------------------------------------ set up the mesh
    mesh = mesh_lib.make_mesh(config.mesh, devices)
    rules = mesh_lib.logical_rules(mesh, config.mesh, sharding.DEFAULT_RULES)
    global_batch, per_process = layout.batch_sizes(config, mesh)
    model_cfg = layout.for_target(config.model, mesh)
    # ------------------------------------------------------------ create model and optimizer
    tx, schedule = optim_lib.make_optimizer(config.optim, global_batch=global_batch,
                                            total_steps=int(config.train.num_steps))
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
        graphdef, abstract_params, abstract_fixed = step_lib.abstract_model_state(model_cfg, mesh)
    # Outside the mesh context: optax builds the optimizer's scalar leaves eagerly, on the
    # default device, which the mesh's devices need not be (abstract TPU devices in a dry run).
    shardings = step_lib.state_shardings(tx, abstract_params, abstract_fixed, mesh)
    # ------------------------------------------------------------ the update step (jit once)
    step_fn = step_lib.make_jitted_step(
        shardings, mesh_lib.batch_sharding(mesh), mesh_lib.replicated(mesh),
        loss_of=step_lib.pretraining_loss(graphdef, losses.get_loss(config.loss)), tx=tx,
        schedule=schedule, grad_accum_steps=int(config.optim.grad_accum_steps))
    init_fn = jax.jit(lambda key: step_lib.init_state(key, model_cfg=model_cfg, tx=tx),
                      out_shardings=shardings)
    return Setup(mesh, rules, model_cfg, graphdef, tx, schedule, shardings, step_fn, init_fn,
                 global_batch, per_process)


def predict_fns(setup: Setup) -> dict:
    """The model's outputs for evaluators (big_vision's predict_fns), on the training mesh:
    `fn(state, batch of global arrays) -> replicated outputs`.
    - "reconstruct": {"pred": (B, L, N, P) reconstructed patches, "proj": (B, V, E)};
    - "features": pooled encoder features (B, C, D) of evaluation crops."""
    graphdef = setup.graphdef
    reconstruct = jax.jit(lambda params, fixed, batch: {
        k: v for k, v in models.forward(graphdef, (params, fixed), batch, None,
                                        train=False).items() if k in ("pred", "proj")},
        out_shardings=setup.replicated)
    features = jax.jit(lambda params, fixed, b: models.encode_features(
        graphdef, (params, fixed), b["patches"], b["lead_indices"], b["patch_valid"]),
        out_shardings=setup.replicated)

    def on_mesh(fn):
        def run(state, batch):
            with setup.on_mesh():
                return fn(state["params"], state["fixed"], batch)
        return run
    return {"reconstruct": on_mesh(reconstruct), "features": on_mesh(features)}


def input_iterator(config, per_process_batch: int):
    """This process's Grain iterator of pretraining batches: config.data with its batch size.
    Prints the run's data line: how many ECGs, from where (sources.describe)."""
    data_cfg = config.data.copy_and_resolve_references()
    with data_cfg.unlocked():
        data_cfg.batch_size = int(per_process_batch)
    # Imported here, not at the top: the input pipeline needs grain and wfdb, and the compiled
    # step alone (dry runs, bench/accelerator.sh on an image without them) does not.
    from crema_jax.data.pipeline import datasets as pipeline
    from crema_jax.data.pipeline import sources

    source = sources.make_source(data_cfg)
    progress.print_line(f"data: {len(source)} ECGs from {sources.describe(data_cfg)}")
    return iter(pipeline.make_pretrain_dataset(data_cfg, source=source))


def abstract_state(setup: Setup):
    """The train state as sharded ShapeDtypeStructs (nothing runs on any device)."""
    key = jax.eval_shape(lambda: jax.random.key(0))
    with setup.on_mesh():
        shapes = jax.eval_shape(setup.init_fn, key)
    return step_lib.with_shardings(shapes, setup.shardings)


def compile_step(setup: Setup, config, target):
    """AOT-compile the step against abstract arrays (no data, no parameters allocated)."""
    batch = mesh_lib.abstract_batch(
        batch_lib.pretrain_spec(config.data, setup.per_process_batch), setup.mesh)
    rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=setup.replicated)
    with setup.on_mesh():
        lowered = setup.step_fn.lower(target, batch, rng)
    if config.train.fast_compile:
        return _compile_fast(lowered)
    return lowered.compile()


def _compile_fast(lowered):
    """XLA backend optimisation level 0: about half the compile time on CPU, slower steps."""
    try:
        return lowered.compile(compiler_options={"xla_backend_optimization_level": 0})
    except Exception:  # noqa: BLE001 - a backend without the option compiles normally.
        return lowered.compile()


def init_state(setup: Setup, rng):
    """A fresh sharded state. The init program runs once, so XLA's backend optimisations only
    cost compile time (seconds on CPU): compile it at level 0."""
    return _compile_fast(setup.init_fn.lower(rng))(rng)


def dry_run(config, *, devices=None) -> dict:
    """Lower and compile the step for the configured mesh; FLOPs and memory per device.

    `devices` may be abstract (mesh_lib.tpu_topology_devices): a pod slice's step is then
    compiled by the TPU compiler on this machine, and its per-device memory is the TPU's plan.
    """
    config_checks.validate(config)
    layout.check(config, devices, reads=False)
    setup = build(config, devices=devices)
    compiled = compile_step(setup, config, abstract_state(setup))
    flops = perf.compiled_flops_per_device(
        compiled, grad_accum_steps=int(config.optim.grad_accum_steps))
    device = setup.mesh.devices.flat[0]
    report = {"mesh": dict(setup.mesh.shape), "global_batch": setup.global_batch,
              "devices": int(setup.mesh.size), "device_kind": device.device_kind,
              "processes": mesh_lib.process_count(setup.mesh),
              "flops_per_step_per_device": flops,
              "flops_per_step": flops * setup.mesh.size,
              "memory_per_device": perf.memory_summary(compiled)}
    if device.platform != "cpu":  # A table peak: the fastest a step could possibly be.
        peak, _ = perf.peak_tflops_per_device(config.model.dtype, device)
        if math.isfinite(peak):
            report["step_seconds_at_peak"] = flops / (peak * 1e12)
    return report


# ================================================================================ training
def train(config, workdir, *, devices=None, batch_iter=None, evaluators=None,
          drill: hooks.FaultDrill | None = None) -> dict:
    """Pretrains per `config` in `workdir`; returns {"losses": {step: loss}, "last_step",
    "preempted" (SIGTERM stopped the run before config.train.num_steps, its step saved),
    "evals": {step: row}, ...}.

    `batch_iter` replaces the configured Grain pipeline (tests, benchmarks): any iterator of
    per-process batches; it is checkpointed only if it has get_state/set_state.
    `evaluators(config, setup, predict_fns) -> [evaluator, ...]` builds what config.evals.names
    lists (crema_jax.evaluate.evaluators.build; the pretrain command passes it); each
    evaluator's `run(state)` metrics are logged at every multiple of config.evals.every_steps
    and at the last step, before that step's checkpoint is written. `drill`: the faults a test
    injects (hooks.FaultDrill).

    The workdir is locked for the run (workdir.WorkdirLock, process 0); incomplete steps a
    crash left are set aside; resume=False on a workdir with checkpoints is refused unless
    checkpoint.overwrite (workdir.prepare_workdir). The folders the run made (the workdir, its
    missing parents) are removed again when it ends leaving no file in them.
    """
    config_checks.validate(config)
    # The mesh, batch and rules fit the model, the read-ahead this machine: nothing written yet.
    layout.check(config, devices, reads=batch_iter is None)
    if config.evals.names and evaluators is None:
        raise ValueError(f"config.evals.names={tuple(config.evals.names)} needs "
                         "evaluators=crema_jax.evaluate.evaluators.build (the pretrain command "
                         "passes it)")
    lock, made = None, []
    if jax.process_index() == 0:
        workdir_lib.check_workdir(workdir, inputs=[config.data.root, config.data.cache_dir])
        made = made_folders.to_make(workdir)
    workdir = epath.Path(workdir)
    try:
        if jax.process_index() == 0:
            lock = workdir_lib.WorkdirLock(
                workdir, stale_seconds=float(config.checkpoint.lock_stale_seconds))
            note = lock.acquire()
            if note:
                progress.print_line(note)
            for note in workdir_lib.prepare_workdir(
                    workdir, resume=bool(config.checkpoint.resume),
                    overwrite=bool(config.checkpoint.overwrite)):
                progress.print_line(note)
        return _train(config, workdir, devices=devices, batch_iter=batch_iter, lock=lock,
                      evaluators=evaluators, drill=drill or hooks.FaultDrill())
    finally:
        if lock is not None:
            lock.release()
        made_folders.remove_if_empty(made)


def _train(config, workdir, *, devices, batch_iter, lock, evaluators, drill) -> dict:
    # ============================================================ mesh, model, optimizer, step
    setup = build(config, devices=devices)
    logging.info("mesh %s, global batch %d", dict(setup.mesh.shape), setup.global_batch)

    # ============================================================================ input pipeline
    data_iter = (input_iterator(config, setup.per_process_batch) if batch_iter is None
                 else batch_iter)
    grain_iter = data_iter if hasattr(data_iter, "get_state") else None

    # ======================================================= sharded state, checkpoint restore
    manager = ckpt_lib.make_manager(workdir, max_to_keep=int(config.checkpoint.max_to_keep),
                                    async_save=bool(config.checkpoint.async_save))
    base_rng = jax.random.wrap_key_data(mesh_lib.place(
        jax.random.key_data(jax.random.key(int(config.train.seed))), setup.replicated))
    target = abstract_state(setup)
    with setup.on_mesh():
        start = resume.start_state(setup, config, workdir, manager=manager, target=target,
                                   rng=base_rng, grain_iter=grain_iter,
                                   fresh=lambda: init_state(setup, base_rng))
        if start.step and start.step >= int(config.train.num_steps):
            return _nothing_to_train(config, workdir, setup, start, data_iter)
        compiled = compile_step(setup, config, target)
    flops = perf.compiled_flops_per_device(
        compiled, grad_accum_steps=int(config.optim.grad_accum_steps))
    peak, peak_source = perf.peak_tflops_per_device(config.model.dtype)
    progress.print_line(
        f"compiled train step: {flops * setup.mesh.size / 1e9:.2f} GFLOP/step, peak "
        f"{peak:.2f} TFLOP/s/device ({peak_source}), mesh {dict(setup.mesh.shape)}")

    # ============================================================================ evaluators
    evals = evaluators(config, setup, predict_fns(setup)) if config.evals.names else []

    # ============================================================================ train loop
    loop = loop_lib.Loop(config, workdir, setup, compiled, start, evals, lock=lock,
                         drill=drill, grain_iter=grain_iter, flops=flops, peak=peak)
    try:
        loop.run(data_iter)
    finally:
        loop.close()
        if hasattr(data_iter, "close"):
            data_iter.close()
    return _result(setup, loop.state, loop.step, losses=loop.losses, evals=loop.eval_rows,
                   evaluators=evals, flops=flops, preempted=loop.preempted)


def _nothing_to_train(config, workdir, setup, start, data_iter) -> dict:
    """A resumed run already at config.train.num_steps or past it: one line says so, and the
    restored state is the result (it was a silent exit 0 after compiling the step)."""
    progress.print_line(f"step {start.step} of {workdir} is at or past config.train.num_steps="
                        f"{int(config.train.num_steps)}: nothing to train (raise it to go on)")
    start.manager.close()
    if hasattr(data_iter, "close"):
        data_iter.close()
    return _result(setup, start.state, start.step)


def _result(setup, state, last_step, *, losses=None, evals=None, evaluators=(), flops=0.0,
            preempted=False):
    """What `train` returns (see its docstring)."""
    return {"losses": losses or {}, "last_step": last_step, "preempted": preempted,
            "evals": evals or {},
            "evaluators": list(evaluators), "state": state, "graphdef": setup.graphdef,
            "mesh": setup.mesh, "flops_per_device": flops, "model_cfg": setup.model_cfg}
