"""Orbax checkpoints: the training state for exact resume, and model-only checkpoints.

Layout (an Orbax CheckpointManager directory, also readable from gs:// through etils.epath):

    <workdir>/checkpoints/<step>/params     nested dict of arrays: trainable nnx.Param values
                                             merged with the fixed (non-Param) variables
                         /<step>/opt_state  optax state (training checkpoints only)
                         /<step>/rng        {"key": uint32 key data, "step": int} (training only)
                         /<step>/data_iter  Grain iterator state (training only)
                         /<step>/config     the full ConfigDict as JSON

Orbax writes every step into a temporary directory and renames it on commit, so a step that a
`kill -9` interrupted never looks complete: `latest_step` and `load_model_checkpoint` only see
committed steps (the step's commit marker AND every item's). Nothing here deletes a step:
- `prepare_workdir` moves a step dir left incomplete by a crash aside (`<step>.incomplete-TIME`),
  so that a rerun can write that step again, and refuses to start over on a workdir with
  checkpoints unless told to (then `checkpoints/` is moved to `checkpoints.replaced-TIME`);
- a step that cannot be restored is moved aside as `<step>.damaged-TIME` by the trainer, which
  then resumes from the newest step that restores;
- `WorkdirLock` keeps a second run from writing into the same workdir.
"""
from __future__ import annotations

import json
import os
import re
import socket
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from crema_jax import config as config_lib

CHECKPOINTS_DIRNAME = "checkpoints"
TRAIN_ITEMS = ("params", "opt_state", "rng", "data_iter", "config")
COMMIT_MARKER = "commit_success.txt"  # Orbax writes it last, on every file system.
_STEP_DIR = re.compile(r"^\d+$")  # Orbax tmp dirs look like "5.orbax-checkpoint-tmp-1234".


# ------------------------------------------------------------------------------------------------
# Paths.
# ------------------------------------------------------------------------------------------------
def absolute_path(path) -> epath.Path:
    """Orbax needs absolute paths; cloud paths (gs://...) already are."""
    text = str(path)
    return epath.Path(text if "://" in text else os.path.abspath(text))


def checkpoints_dir(workdir) -> epath.Path:
    return absolute_path(workdir) / CHECKPOINTS_DIRNAME


def _is_complete_step_dir(path: epath.Path) -> bool:
    """A committed step: "<digits>/" holding params, Orbax's commit marker, and the marker of
    every item inside it. Local writes are atomic renames of tmp dirs; on gs:// (no rename)
    only the markers tell a finished step."""
    if not (_STEP_DIR.match(path.name) and path.is_dir() and (path / "params").is_dir()
            and (path / COMMIT_MARKER).exists()):
        return False
    return all((item / COMMIT_MARKER).exists() for item in path.iterdir() if item.is_dir())


def resolve_checkpoint(path) -> tuple[epath.Path, int]:
    """`path` = a workdir, its checkpoints dir, or one step dir -> (checkpoints dir, step).

    For a workdir or checkpoints dir the latest COMPLETE step is chosen.
    """
    path = absolute_path(path)
    if _is_complete_step_dir(path):
        return path.parent, int(path.name)
    root = path / CHECKPOINTS_DIRNAME if (path / CHECKPOINTS_DIRNAME).is_dir() else path
    step = latest_step(root)
    if step is None:
        raise FileNotFoundError(
            f"{path}: no complete checkpoint found (expected a workdir with checkpoints/<step>/, "
            f"a checkpoints dir, or a step dir containing 'params')")
    return root, step


def has_train_state(workdir, step: int) -> bool:
    """Whether step `step` under `workdir` is a training checkpoint (import-torch and
    save_model_checkpoint write params and config only: no optimizer state to resume)."""
    return (checkpoints_dir(workdir) / str(step) / "opt_state").exists()


def step_dirs(root) -> list[epath.Path]:
    """Every "<digits>" dir under a checkpoints dir, complete or not, oldest first."""
    root = epath.Path(root)
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if _STEP_DIR.match(p.name) and p.is_dir()),
                  key=lambda p: int(p.name))


def complete_steps(root) -> list[int]:
    return [int(p.name) for p in step_dirs(root) if _is_complete_step_dir(p)]


def set_aside(path: epath.Path, why: str) -> epath.Path:
    """Rename `path` to `<name>.<why>-<UTC time>` beside it (Orbax ignores such names); return
    the new path. Nothing is deleted."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.parent / f"{path.name}.{why}-{stamp}"
    n = 1
    while target.exists():
        target = path.parent / f"{path.name}.{why}-{stamp}-{n}"
        n += 1
    path.rename(target)
    return target


def prepare_workdir(workdir, *, resume: bool, overwrite: bool) -> list[str]:
    """Before a training run writes into `workdir`: set incomplete steps aside; with
    resume=False, refuse existing checkpoints unless overwrite (then move them aside).
    Returns one line per thing moved, for the log."""
    root = checkpoints_dir(workdir)
    notes = []
    for path in step_dirs(root):
        if not _is_complete_step_dir(path):
            moved = set_aside(path, "incomplete")
            notes.append(f"checkpoint step {path.name} was left incomplete (a crash during its "
                         f"save); moved aside to {moved.name}")
    steps = complete_steps(root)
    if steps and not resume:
        if not overwrite:
            raise ValueError(
                f"config.checkpoint.resume=False: {root} holds checkpoints up to step "
                f"{max(steps)}, which a fresh run would overwrite; pass "
                "--config.checkpoint.overwrite=True to move them aside (kept, as "
                "checkpoints.replaced-TIME), or choose a new --workdir")
        moved = set_aside(root, "replaced")
        notes.append(f"config.checkpoint.overwrite: moved the old checkpoints to {moved}")
    return notes


class WorkdirLockedError(ValueError):
    """Another run holds the workdir; the message names it."""


class WorkdirLock:
    """`<workdir>/crema_jax.lock`: which process (pid, host, start time) trains in a workdir.

    Taken with an exclusive create, so of two runs started together one wins. Stale-lock rule:
    a lock whose process is gone from THIS host, or whose heartbeat (the file's mtime, touched
    by `refresh`) is older than `stale_seconds` from another host, is taken over with a note;
    any other lock refuses the run. Only process 0 of a multi-process job takes it.
    """

    NAME = "crema_jax.lock"

    def __init__(self, workdir, *, stale_seconds: float = 3600.0):
        self.path = absolute_path(workdir) / self.NAME
        self.stale_seconds = float(stale_seconds)
        self.info = {"pid": os.getpid(), "host": socket.gethostname(),
                     "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        self.held = False
        self._refreshed = 0.0

    def acquire(self) -> str | None:
        """Takes the lock or raises WorkdirLockedError; returns a note when a stale lock was
        taken over."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        note = None
        if not self._create():
            holder = self._holder()
            if not self._stale(holder):
                raise WorkdirLockedError(
                    f"{self.path.parent} is in use: a run by pid {holder.get('pid', '?')} on "
                    f"{holder.get('host', '?')} since {holder.get('started', '?')} holds "
                    f"{self.path}; wait for it to finish, or delete that file if the run is gone")
            note = (f"took over the stale lock of pid {holder.get('pid', '?')} on "
                    f"{holder.get('host', '?')} (that run is gone)")
            self.path.unlink()
            if not self._create():
                raise WorkdirLockedError(f"{self.path.parent}: another run took the lock first")
        self.held = True
        return note

    def _create(self) -> bool:
        text = json.dumps(self.info)
        if "://" in str(self.path):  # object stores have no exclusive create: best effort
            if self.path.exists():
                return False
            self.path.write_text(text)
            return True
        try:
            fd = os.open(str(self.path), os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW,
                         0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return True

    def _holder(self) -> dict:
        try:
            holder = json.loads(self.path.read_text())
            return holder if isinstance(holder, dict) else {}
        except (OSError, ValueError):
            return {}

    def _stale(self, holder: dict) -> bool:
        if holder.get("host") == self.info["host"] and isinstance(holder.get("pid"), int):
            try:
                os.kill(holder["pid"], 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
            return False
        try:
            age = time.time() - os.path.getmtime(str(self.path))
        except OSError:
            return True
        return age > self.stale_seconds

    def refresh(self, every_seconds: float = 60.0) -> None:
        """The heartbeat: touch the lock at most every `every_seconds`."""
        now = time.time()
        if self.held and now - self._refreshed >= every_seconds and "://" not in str(self.path):
            try:
                os.utime(str(self.path))
            except OSError:
                pass
            self._refreshed = now

    def release(self) -> None:
        if self.held and self._holder().get("pid") == self.info["pid"]:
            try:
                self.path.unlink()
            except OSError:
                pass
        self.held = False


def latest_step(root) -> int | None:
    """Latest committed step under a checkpoints dir; half-written (tmp) steps are ignored."""
    root = epath.Path(root)
    if not root.is_dir():
        return None
    steps = [int(p.name) for p in root.iterdir() if _is_complete_step_dir(p)]
    return max(steps) if steps else None


# ------------------------------------------------------------------------------------------------
# Config <-> JSON.
# ------------------------------------------------------------------------------------------------
def config_to_json_dict(config) -> dict:
    """A JSON-safe dict of the config (tuples become lists; everything else must be plain)."""
    as_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return json.loads(json.dumps(as_dict, default=_json_default))


def _json_default(obj):
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    raise TypeError(f"config value {obj!r} of type {type(obj).__name__} is not JSON-serialisable")


# ------------------------------------------------------------------------------------------------
# Training checkpoints (exact resume).
# ------------------------------------------------------------------------------------------------
def make_manager(workdir, *, max_to_keep: int = 3, async_save: bool = True,
                 create: bool = True) -> ocp.CheckpointManager:
    """The CheckpointManager for `<workdir>/checkpoints` with the Grain handler registered."""
    import grain  # Local import: model-only readers (export, probe) need no Grain.

    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=create)
    return ocp.CheckpointManager(
        checkpoints_dir(workdir), item_names=TRAIN_ITEMS,
        item_handlers={"data_iter": grain.checkpoint.CheckpointHandler()},
        options=options)


def save_train_state(manager: ocp.CheckpointManager, step: int, *, params, opt_state, rng,
                     config, data_iter=None, force: bool = True) -> bool:
    """Starts an (async) save of the full training state; returns whether a save started.

    `rng` is a typed jax.random key; its raw uint32 data is stored. `data_iter` is a Grain
    iterator (or None for iterator-free training, e.g. synthetic data).
    """
    import grain

    items = dict(
        params=ocp.args.StandardSave(params),
        opt_state=ocp.args.StandardSave(opt_state),
        rng=ocp.args.StandardSave({"key": jax.random.key_data(rng),
                                   "step": np.asarray(step, np.int64)}),
        config=ocp.args.JsonSave(config_to_json_dict(config)),
    )
    if data_iter is not None:
        items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
    return manager.save(step, args=ocp.args.Composite(**items), force=force)


def restore_train_state(manager: ocp.CheckpointManager, step: int, *, abstract_params,
                        abstract_opt_state, rng_impl=None, data_iter=None) -> dict:
    """Restores a training checkpoint onto the shardings of the abstract targets.

    Targets are pytrees of jax.ShapeDtypeStruct(shape, dtype, sharding=...): a checkpoint
    written on one mesh restores onto any other. `data_iter` (if given) is set in place.
    Returns {"params", "opt_state", "rng" (typed key), "step"}.
    """
    import grain

    replicated = _replicated_like(abstract_params)
    items = dict(
        params=ocp.args.StandardRestore(abstract_params),
        opt_state=ocp.args.StandardRestore(abstract_opt_state),
        rng=ocp.args.StandardRestore(None),
    )
    if data_iter is not None:
        items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    rng_data = np.asarray(restored["rng"]["key"])
    if replicated is not None:  # make_array_from_callback: valid across processes too.
        rng_data = jax.make_array_from_callback(rng_data.shape, replicated,
                                                lambda index: rng_data[index])
    key_data = rng_data
    rng = jax.random.wrap_key_data(key_data, impl=rng_impl)
    return dict(params=restored["params"], opt_state=restored["opt_state"], rng=rng,
                step=int(np.asarray(restored["rng"]["step"])))


def _replicated_like(tree):
    """A fully replicated sharding on the mesh the targets use (None if they carry none)."""
    for leaf in jax.tree.leaves(tree):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, jax.sharding.NamedSharding):
            return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    return None


# ------------------------------------------------------------------------------------------------
# Model-only checkpoints (import-torch writes them; probe, finetune, embed read any checkpoint).
# ------------------------------------------------------------------------------------------------
def save_model_checkpoint(workdir, params, config, step: int = 0) -> epath.Path:
    """Writes `<workdir>/checkpoints/<step>/{params,config}` synchronously; returns the step dir."""
    with ocp.CheckpointManager(
            checkpoints_dir(workdir), item_names=("params", "config"),
            options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False)) as manager:
        manager.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            config=ocp.args.JsonSave(config_to_json_dict(config))), force=True)
        manager.wait_until_finished()
    return checkpoints_dir(workdir) / str(step)


def load_model_checkpoint(path) -> tuple[dict, ml_collections.ConfigDict, int]:
    """(params as nested dict of numpy arrays, config, step) from the latest complete step.

    Works for training and model-only checkpoints and for any mesh they were written on:
    arrays come back to host memory, the caller places them.
    """
    root, step = resolve_checkpoint(path)
    with ocp.CheckpointManager(
            root,
            # Handlers for the training-only items too, so Orbax does not warn that it found them.
            item_handlers={"params": ocp.PyTreeCheckpointHandler(),
                           "config": ocp.JsonCheckpointHandler(),
                           "opt_state": ocp.StandardCheckpointHandler(),
                           "rng": ocp.StandardCheckpointHandler()},
            options=ocp.CheckpointManagerOptions(create=False, read_only=True)) as manager:
        meta = manager.item_metadata(step)["params"]
        restore_args = jax.tree.map(
            lambda _: ocp.RestoreArgs(restore_type=np.ndarray), _metadata_tree(meta))
        restored = manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.PyTreeRestore(restore_args=restore_args),
            config=ocp.args.JsonRestore()))
    return _int_keys(restored["params"]), config_lib.from_saved(restored["config"]), step


def _int_keys(tree):
    """Orbax stores dict keys as strings; nnx.List indices are ints in nnx pure dicts."""
    if isinstance(tree, dict):
        return {(int(k) if isinstance(k, str) and k.isdigit() else k): _int_keys(v)
                for k, v in tree.items()}
    return tree


def load_config(path) -> ml_collections.ConfigDict:
    """Only the config of the latest complete checkpoint under `path`."""
    root, step = resolve_checkpoint(path)
    with (root / str(step) / "config" / "metadata").open() as f:
        return config_lib.from_saved(json.load(f))


def _metadata_tree(meta) -> Any:
    """Orbax item metadata as a plain nested dict (its wrapper type changed across versions)."""
    tree = getattr(meta, "tree", meta)
    if hasattr(tree, "items") and not isinstance(tree, dict):
        tree = dict(tree.items())
    return tree
