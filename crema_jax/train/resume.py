"""Where a run starts: the workdir's own latest training checkpoint (exact resume), a params-only
checkpoint (warm start: `import-torch --out` output in the workdir, or config.train.init_from),
or a fresh init.

A training checkpoint that fails to restore is set aside (`<step>.damaged-TIME`, kept) and the
step before it is tried; a failure of the machine or the store while restoring (memory, network,
permissions) is no damage: the run stops with the step kept in place. A warm start takes the
weights only: the optimizer, RNG and data order start fresh, because an imported file has no
optimizer state to resume.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx

from crema_jax import config as config_lib
from crema_jax import models
from crema_jax.models import families
from crema_jax.runtime import checkpoint as ckpt_lib
from crema_jax.runtime import mesh as mesh_lib
from crema_jax.runtime import trees
from crema_jax.runtime import workdir as workdir_lib
from crema_jax.train import progress, warm_start

# Fields whose change makes a checkpoint's state unusable (other parameter or optimizer trees;
# the global batch: the saved data iterator's batches; the input workers: Grain saves one
# iterator state per worker, and a restore with another count fails on every step).
_STATE_FIELDS = ("model.scan_layers", "optim.name", "optim.decay_mask", "train.global_batch_size",
                 "data.num_workers")


# Errors that say nothing about the checkpoint's bytes: the machine or the store failed. A step
# that fails with one is kept where it is (set aside, it would be skipped by every later resume)
# and the run stops. The status words are those tensorstore and gRPC put in their messages.
_NOT_DAMAGE_TYPES = (MemoryError, ConnectionError, TimeoutError, PermissionError,
                     InterruptedError)
_NOT_DAMAGE_STATUS = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED",
                      "PERMISSION_DENIED", "UNAUTHENTICATED", "Out of memory")


def _not_damage(err: BaseException) -> bool:
    """Whether `err`, or an error it was raised from, is a failure of the machine or the store
    (memory, network, permissions) rather than damage to the checkpoint."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, _NOT_DAMAGE_TYPES) or any(w in str(err) for w in _NOT_DAMAGE_STATUS):
            return True
        err = err.__cause__ or err.__context__
    return False


@dataclasses.dataclass
class Start:
    """The state a run starts from, its base RNG key, its step, and the checkpoint manager (a
    new one when a damaged step was set aside)."""
    state: dict
    rng: Any
    step: int
    manager: Any


def start_state(setup, config, workdir, *, manager, target, rng, grain_iter,
                fresh: Callable[[], dict]) -> Start:
    """The run's starting point (call under the training mesh and its logical rules).

    `target`: the abstract, sharded train state; `rng`: the run's base key; `grain_iter`: the
    input iterator restored in place with a training checkpoint; `fresh()`: a new init.
    """
    root = workdir_lib.checkpoints_dir(workdir)
    step = workdir_lib.latest_step(root) if config.checkpoint.resume else None
    init_from = str(config.train.init_from or "")
    imported = step is not None and not workdir_lib.has_train_state(workdir, step)
    if imported:  # e.g. `import-torch --out=W` then `pretrain --workdir=W`
        if init_from and not _within(init_from, workdir):
            raise ValueError(
                f"config.train.init_from={init_from}: the workdir {workdir} holds imported "
                f"weights too (checkpoints/{step}, params only), which a run in it starts from; "
                "name one source: clear config.train.init_from or choose a new --workdir")
        init_from = str(workdir)
    if imported or (step is None and init_from):
        state, step = _warm_start(setup, config, init_from, target, fresh, own=imported)
        return Start(state, rng, step, manager)
    if step is None:
        return Start(fresh(), rng, 0, manager)
    restored = _restore(setup, config, workdir, manager, target, grain_iter)
    if restored.state is None:  # every training step set aside: the imported weights are left
        progress.print_line(f"no training checkpoint of {workdir} restores; starting again from "
                            "its imported weights")
        state, step = _warm_start(setup, config, str(workdir), target, fresh, own=True)
        return Start(state, rng, step, restored.manager)
    unused = (f" (config.train.init_from={init_from} serves a run's first start only)"
              if init_from else "")
    progress.print_line(f"resumed from step {restored.step} of {workdir}{unused}")
    return restored


def _within(path: str, workdir) -> bool:
    """Whether `path` is the workdir or lies inside it (its checkpoints/STEP)."""
    path, workdir = str(workdir_lib.absolute_path(path)), str(workdir_lib.absolute_path(workdir))
    return path.rstrip("/") == workdir.rstrip("/") or path.startswith(workdir.rstrip("/") + "/")


def _restore(setup, config, workdir, manager, target, grain_iter) -> Start:
    """The newest training checkpoint that restores, after its saved config is compared with the
    run's (resume_changes: a change the state cannot follow is an error, never damage). A step
    whose config or state fails to read is set aside with one line naming it, and the one before
    it is tried; state None when the workdir held none (a workdir whose every step is damaged is
    an error)."""
    root = workdir_lib.checkpoints_dir(workdir)
    steps = sorted((s for s in workdir_lib.complete_steps(root)   # not an imported params-only
                    if workdir_lib.has_train_state(workdir, s)), reverse=True)  # step

    def set_aside(step, err):
        if jax.process_count() > 1:
            raise err
        manager.close()
        moved = workdir_lib.set_aside(root / str(step), "damaged")
        reason = " ".join(str(err).split())[:200]
        progress.print_line(f"checkpoint step {step} could not be restored "
                            f"({type(err).__name__}: {reason}); kept as {moved.name}, "
                            "trying the step before it")
        return ckpt_lib.make_manager(workdir, max_to_keep=int(config.checkpoint.max_to_keep),
                                     async_save=bool(config.checkpoint.async_save))

    for step in steps:
        try:
            saved = ckpt_lib.load_saved_config(root / str(step))
        except ckpt_lib.DamagedConfigError as err:
            manager = set_aside(step, err)
            continue
        for line in resume_changes(config, config_lib.from_saved(saved), source=str(workdir),
                                   target=target):
            progress.print_line(line)
        try:
            restored = ckpt_lib.restore_train_state(
                manager, step, abstract_params=trees.merge(target["params"], target["fixed"]),
                abstract_opt_state=target["opt_state"], data_iter=grain_iter)
        except Exception as err:  # noqa: BLE001 - any damage: truncated, corrupt
            if _not_damage(err):
                reason = " ".join(str(err).split())[:300]
                raise OSError(f"{root / str(step)}: could not be restored ({type(err).__name__}: "
                              f"{reason}); this is no damage to the checkpoint, which is kept "
                              "as it is: fix the cause (memory, the store, permissions) and "
                              "rerun to resume") from err
            manager = set_aside(step, err)
            continue
        state = {"params": trees.select_like(restored["params"], target["params"]),
                 "fixed": trees.select_like(restored["params"], target["fixed"]),
                 "opt_state": restored["opt_state"],
                 "step": mesh_lib.place(np.int32(step), setup.replicated)}
        return Start(state, restored["rng"], step, manager)
    if steps and workdir_lib.latest_step(root) is None:
        raise ValueError(f"{root}: no checkpoint step restores (all set aside as damaged); "
                         "start a new run with a new --workdir")
    return Start(None, None, 0, manager)


def _warm_start(setup, config, source: str, target, fresh, *, own: bool):
    """(train state, step) whose params (and fixed tables) come from the params-only
    checkpoint at `source`, with a fresh optimizer. `own`: `source` is the workdir itself,
    whose step the run continues from; otherwise (config.train.init_from) it starts at 0."""
    loaded, ckpt_config, ckpt_step = config_lib.load_checkpoint(source)
    warm_start.check_architecture(config.model, ckpt_config.model, source=source)
    template = trees.merge(target["params"], target["fixed"])
    if "encoder" in template and "encoder" not in loaded:  # a bare encoder checkpoint
        loaded = {"encoder": loaded}
    fitted, missing, unused = warm_start.fit_params(loaded, template, source=source)
    if missing:  # their fresh values: the init the run would use without a checkpoint
        new = fresh()
        fitted = warm_start.fill_missing(fitted, trees.merge(new["params"], new["fixed"]))
    shardings = setup.shardings
    placed = jax.tree.map(mesh_lib.place, fitted,
                          trees.merge(shardings["params"], shardings["fixed"]))
    start = ckpt_step if own else 0
    state = jax.jit(lambda p, f, s: {"params": p, "fixed": f, "opt_state": setup.tx.init(p),
                                     "step": s}, out_shardings=shardings)(
        trees.select_like(placed, target["params"]),
        trees.select_like(placed, target["fixed"]),
        mesh_lib.place(np.int32(start), setup.replicated))
    progress.print_line(
        f"initialised params from {source} (step {ckpt_step}, params only): fresh optimizer, "
        f"starting at step {start}" + (f"; {len(missing)} freshly initialised" if missing else "")
        + (f"; {len(unused)} of the checkpoint's entries unused, this model has no place for "
           f"them: {', '.join(unused[:4])}{', ...' if len(unused) > 4 else ''}" if unused else ""))
    for change in warm_start.meaning_changes(config.model, ckpt_config.model):
        progress.print_line(f"{source}: {change} (the same weights; a subset of the leads gets "
                            "other lead embeddings)")
    return state, start


def _state_shapes(model_cfg) -> dict[str, tuple]:
    """{"params/a/b": shape} of every parameter and fixed table `model_cfg` builds (abstract)."""
    abstract = nnx.eval_shape(lambda: models.build_model(model_cfg, rngs=nnx.Rngs(0)))
    _, params, fixed = nnx.split(abstract, nnx.Param, ...)
    return {k: tuple(v.shape) for k, v in trees.flatten(
        {"params": nnx.to_pure_dict(params), "fixed": nnx.to_pure_dict(fixed)}).items()}


def _effective(flat: dict, model_cfg) -> dict:
    """`flat` (a config flattened: "model.depth": 0) with the size entry's fields resolved."""
    sizes = families.family_of(model_cfg).size_fields(model_cfg)
    return {**flat, **{f"model.{k}": v for k, v in sizes.items()}}


def resume_changes(config, saved, *, source: str, target=None) -> list[str]:
    """Lines naming what differs between the run's config and the checkpoint's. A change that
    the saved state cannot follow (the architecture, decoder and heads included: any model field
    that changes a parameter's shape or the tree, when `target`, the run's abstract state, is
    given; the optimizer's structure) is a ValueError naming the fields, before any restore
    (which would otherwise fail on every step and set each aside as damaged); anything else
    (steps, learning rate, logging) is reported and allowed."""
    run, old = (trees.flatten(ckpt_lib.config_to_json_dict(c), sep=".") for c in (config, saved))
    changed = sorted(k for k in set(run) | set(old) if run.get(k) != old.get(k))
    if not changed:
        return []
    arch_run, arch_old = (warm_start.architecture(c.model) for c in (config, saved))
    # The model's values as they take effect: a size entry's field of 0 is the size's own value
    # ("depth: checkpoint 0, run 3" had named the placeholder, not the checkpoint's 2).
    eff_run, eff_old = _effective(run, config.model), _effective(old, saved.model)
    model_changes = [f"config.{k}: checkpoint {eff_old.get(k)!r}, run {eff_run.get(k)!r}"
                     for k in sorted(set(eff_run) | set(eff_old))
                     if k.startswith("model.") and eff_run.get(k) != eff_old.get(k)]
    fatal = list(model_changes) if arch_run != arch_old else []
    if not fatal and target is not None and model_changes:
        ours = {k: tuple(v.shape) for k, v in trees.flatten(
            {"params": target["params"], "fixed": target["fixed"]}).items()}
        theirs = _state_shapes(saved.model)
        if ours != theirs:
            differ = sorted(k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k))
            fatal = model_changes + [
                f"(the saved parameters differ in shape or presence: {differ[0]}"
                + (f" and {len(differ) - 1} more)" if len(differ) > 1 else ")")]
    fatal += [f"config.{k}: checkpoint {old.get(k)!r}, run {run.get(k)!r}"
              for k in _STATE_FIELDS if k in changed]
    clipped = [float(c.get("optim.grad_clip_norm", 0)) > 0 for c in (old, run)]
    if clipped[0] != clipped[1]:
        fatal.append("config.optim.grad_clip_norm: clipping turned on or off changes the "
                     "optimizer state")
    if fatal:
        raise ValueError(f"{source}: this run cannot resume the workdir's checkpoint: "
                         + "; ".join(fatal) + ". Use the checkpoint's values, or a new --workdir")
    shown = ", ".join(f"{k} {old.get(k)!r} -> {run.get(k)!r}" for k in changed[:8])
    more = f" (+{len(changed) - 8} more)" if len(changed) > 8 else ""
    return [f"resuming with changed config fields: {shown}{more}"]
