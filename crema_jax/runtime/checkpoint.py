"""Orbax checkpoints: the training state for exact resume, and model-only checkpoints.

Layout (an Orbax CheckpointManager directory, also readable from gs:// through etils.epath):

    <workdir>/checkpoints/<step>/params     nested dict of arrays: trainable nnx.Param values
                                             merged with the fixed (non-Param) variables
                         /<step>/opt_state  optax state (training checkpoints only)
                         /<step>/rng        {"key": uint32 key data, "step": int} (training only)
                         /<step>/data_iter  Grain iterator state (training only)
                         /<step>/config     the full ConfigDict as JSON
                         /<step>/digests    {"params": ..., "opt_state": ...}: each array's
                                             digest (runtime/digests.py), checked on every read

Only committed steps are read (runtime/workdir.py tells them). The config is stored and returned
as a JSON-safe dict: reading it onto today's defaults is crema_jax.config.from_saved's job.
"""
from __future__ import annotations

import json
import os
import re
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from crema_jax.runtime import checkpoint_errors, digests, files, made_folders, storage, trees
from crema_jax.runtime.workdir import (checkpoints_dir, complete_steps, has_train_state,
                                       is_unfinished_step_name, resolve_checkpoint)

TRAIN_ITEMS = ("params", "opt_state", "rng", "data_iter", "config", "digests")


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
    """The CheckpointManager for `<workdir>/checkpoints` with the Grain handler registered.

    It keeps the newest `max_to_keep` steps, and always a params-only step (the weights
    `import-torch --out` wrote, which a run in that workdir started from): Orbax's retention
    had deleted it, the one converted copy of the imported weights."""
    import grain  # here: model-only readers (export, probe, the accelerator bench) need no Grain
    from orbax.checkpoint.checkpoint_managers import preservation_policy as policies

    root = checkpoints_dir(workdir)
    imported = [s for s in complete_steps(root) if not has_train_state(workdir, s)]
    options = ocp.CheckpointManagerOptions(
        enable_async_checkpointing=async_save, create=create,
        preservation_policy=policies.AnyPreservationPolicy(
            [policies.LatestN(max_to_keep), policies.CustomSteps(imported)]))
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
    import grain  # here: see make_manager

    items = dict(
        params=ocp.args.StandardSave(params),
        opt_state=ocp.args.StandardSave(opt_state),
        rng=ocp.args.StandardSave({"key": jax.random.key_data(rng),
                                   "step": np.asarray(step, np.int64)}),
        config=ocp.args.JsonSave(config_to_json_dict(config)),
        digests=_digests_save(params=params, opt_state=opt_state),
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
    import grain  # here: see make_manager

    replicated = _replicated_like(abstract_params)
    # The key as host data, placed below: restored with its saved sharding, it had named the
    # devices it was saved on, and a resume on fewer devices failed ("Topology mismatch").
    key_shape = jax.random.key_data(jax.random.key(0, impl=rng_impl)).shape
    items = dict(
        params=ocp.args.StandardRestore(abstract_params),
        opt_state=ocp.args.StandardRestore(abstract_opt_state),
        rng=ocp.args.StandardRestore({"key": np.zeros(key_shape, np.uint32),
                                      "step": np.zeros((), np.int64)}),
    )
    if data_iter is not None:
        items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    rng_data = np.asarray(restored["rng"]["key"])
    if replicated is not None:  # make_array_from_callback: valid across processes too.
        rng_data = jax.make_array_from_callback(rng_data.shape, replicated,
                                                lambda index: rng_data[index])
    step_dir = epath.Path(manager.directory) / str(step)
    _check_digests(step_dir, params=restored["params"], opt_state=restored["opt_state"])
    rng = jax.random.wrap_key_data(rng_data, impl=rng_impl)
    return dict(params=restored["params"], opt_state=restored["opt_state"], rng=rng,
                step=int(np.asarray(restored["rng"]["step"])))


def _replicated_like(tree):
    """A fully replicated sharding on the mesh the targets use (None if they carry none)."""
    for leaf in jax.tree.leaves(tree):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, jax.sharding.NamedSharding):
            return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    return None


class SaveWatch:
    """Whether the saves a run started were written. Orbax writes asynchronously and reports a
    failure only when asked, so the train loop asks before every step it dispatches (`poll`,
    which never waits) and waits for a save to end before starting the next one and at the
    end (`wait`): a failed save (a full disk) stops the run within a step of its failure, not
    one checkpoint interval later, and the last complete step stays the one a rerun resumes."""

    def __init__(self, manager: ocp.CheckpointManager, last_complete: int | None):
        self.manager = manager
        self.last_complete = last_complete
        self.pending: int | None = None

    def save(self, step: int, **state) -> None:
        """save_train_state(step, **state), after the previous save is known to be written."""
        self.wait()
        self.pending = step
        try:
            save_train_state(self.manager, step, **state)
        except Exception as err:  # noqa: BLE001 - whatever the writer raised, named once
            raise self._failure(step, err) from None

    def poll(self) -> None:
        """Raise CheckpointSaveError if a save has failed; never waits for a running one."""
        if self.pending is not None and not self.manager.is_saving_in_progress():
            self.wait()

    def wait(self) -> None:
        """Wait for the running save; CheckpointSaveError if it failed."""
        if self.pending is None:
            return
        step, self.pending = self.pending, None
        try:
            self.manager.check_for_errors()
            self.manager.wait_until_finished()
        except Exception as err:  # noqa: BLE001 - see save
            raise self._failure(step, err) from None
        self.last_complete = step

    def _failure(self, step: int, err: BaseException) -> checkpoint_errors.CheckpointSaveError:
        path = epath.Path(self.manager.directory)
        kept = (f"step {self.last_complete} is the last complete checkpoint; a rerun resumes "
                "from it" if self.last_complete is not None else
                "no complete checkpoint was written; a rerun starts over")
        return checkpoint_errors.CheckpointSaveError(
            f"saving checkpoint step {step} to {path / str(step)} failed: "
            f"{checkpoint_errors.cause(err)}; {kept}")


# ------------------------------------------------------------------------------------------------
# Model-only checkpoints (import-torch writes them; probe, finetune, embed read any checkpoint).
# ------------------------------------------------------------------------------------------------
def save_model_checkpoint(workdir, params, config, step: int = 0) -> epath.Path:
    """Writes `<workdir>/checkpoints/<step>/{params,config}` synchronously; returns the step dir.
    A failed save (a full disk) is a CheckpointSaveError, "cannot write WORKDIR: CAUSE", that
    leaves nothing behind (see _remove_unfinished; a rerun had been told of "an unfinished
    import from an interrupted run"); quiet_background_save_errors drops Orbax's logs of it."""
    root = checkpoints_dir(workdir)
    made = made_folders.to_make(root)  # the folders the save will make (none for a URL)
    items = ocp.args.Composite(  # before the save: an error here is no write's, raised as it is
        params=ocp.args.StandardSave(params),
        config=ocp.args.JsonSave(config_to_json_dict(config)),
        digests=_digests_save(params=params))
    try:
        with ocp.CheckpointManager(
                root, item_names=("params", "config", "digests"),
                options=ocp.CheckpointManagerOptions(enable_async_checkpointing=False)) as manager:
            manager.save(step, args=items, force=True)
            manager.wait_until_finished()
    except Exception as err:  # noqa: BLE001 - whatever the writer raised, named once
        if not storage.is_remote(root):  # an object store's step has no temporary folder
            _remove_unfinished(root, step, made)
        raise checkpoint_errors.CheckpointSaveError(
            f"cannot write {workdir}: {checkpoint_errors.cause(err)}") from err
    return root / str(step)


def _remove_unfinished(root: epath.Path, step: int, made: list[str], *, quiet_s: float = 1.0,
                       limit_s: float = 30.0) -> None:
    """Removes Orbax's temporary folders of `step` under `root`, then the folders `made`
    (made_folders.to_make) once nothing is in them. TensorStore's writes of a failed save go on
    in its own threads after the save raised, making those folders again, so this repeats until
    nothing reappears for `quiet_s` seconds (at most `limit_s`). Best effort: the save's error
    is the one told."""
    start = quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < quiet_s and time.monotonic() - start < limit_s:
        try:
            found = [e for e in (root.iterdir() if root.is_dir() else ())
                     if is_unfinished_step_name(e.name) and e.name.split(".")[0] == str(step)]
            for entry in found:
                entry.rmtree()
            if made and os.path.isdir(made[0]):
                made_folders.remove_if_empty(made)
                if not os.path.isdir(made[0]):   # removed this pass
                    found.append(made[0])
        except OSError:  # a file written while it was removed (the next pass), or a store
            found = []     # refusing removal (EROFS, EACCES: not waited out for limit_s)
        if found:
            quiet_since = time.monotonic()
        time.sleep(0.05)


def load_model_checkpoint(path) -> tuple[dict, dict, int]:
    """(params as nested dict of numpy arrays, saved config as a JSON dict, step) from the latest
    complete step (crema_jax.config.from_saved reads the dict onto today's defaults).

    Works for training and model-only checkpoints and for any mesh they were written on:
    arrays come back to host memory, the caller places them.
    """
    root, step = _resolve(path)
    # read_only makes Orbax warn "Given directory is read only" on every read: it is meant.
    # The step's _CHECKPOINT_METADATA (Orbax's timestamps) is not read for anything here: a
    # damaged one logged its content on ERROR lines, 2-4 per read, for a checkpoint that loads.
    with checkpoint_errors.absl_quiet("Given directory is read only",
                                      "Failed to json parse Metadata file"), \
            ocp.CheckpointManager(
            root,
            # Handlers for the training-only items too, so Orbax does not warn that it found them
            # (data_iter: Grain's state is JSON; never read here, so Grain need not be loaded).
            item_handlers={"params": ocp.PyTreeCheckpointHandler(),
                           "config": ocp.JsonCheckpointHandler(),
                           "opt_state": ocp.StandardCheckpointHandler(),
                           "rng": ocp.StandardCheckpointHandler(),
                           "data_iter": ocp.JsonCheckpointHandler(),
                           "digests": ocp.JsonCheckpointHandler()},
            options=ocp.CheckpointManagerOptions(create=False, read_only=True,
                                                 save_interval_steps=0)) as manager:
        params_dir = root / str(step) / "params"
        damaged = f"{params_dir}: damaged, the saved weights do not read"
        try:
            meta = manager.item_metadata(step)["params"]
        except json.JSONDecodeError as err:  # the one JSON file it reads
            raise DamagedCheckpointError(
                f"{damaged} ({params_dir / '_METADATA'}: not JSON: {err})") from err
        except (ValueError, OSError, KeyError, TypeError) as err:
            raise DamagedCheckpointError(f"{damaged} ({_damage(err)})") from err
        restore_args = jax.tree.map(
            lambda _: ocp.RestoreArgs(restore_type=np.ndarray), _metadata_tree(meta))
        try:
            restored = manager.restore(step, args=ocp.args.Composite(
                params=ocp.args.PyTreeRestore(restore_args=restore_args)))
        except (ValueError, OSError, KeyError, TypeError) as err:
            raise DamagedCheckpointError(f"{damaged} ({_damage(err)})") from err
    _check_digests(root / str(step), params=restored["params"])
    params = trees.int_keys(restored["params"])
    _check_finite(params, params_dir)
    return params, load_saved_config(root / str(step)), step


def _resolve(path) -> tuple[epath.Path, int]:
    """resolve_checkpoint(path); its refusal of a hub folder (PyTorch weights and the
    config.json of a crema_jax library, as export-torch --hub_folder writes) says how to read
    one: it had said only "no complete checkpoint found"."""
    try:
        return resolve_checkpoint(path)
    except FileNotFoundError as err:
        config = epath.Path(path) / "config.json"
        try:
            hub = json.loads(config.read_text()).get("library_name") == "crema_jax"
        except (OSError, ValueError, AttributeError, RecursionError):
            hub = False
        if not hub:
            raise
        raise FileNotFoundError(
            f"{err}; {path} is a hub folder of PyTorch weights (export-torch --hub_folder "
            f"writes them): run `crema-jax import-torch {path} --out=DIR` first, then pass "
            "the checkpoint DIR") from None


def _check_finite(params, params_dir) -> None:
    """DamagedCheckpointError when a weight is NaN or inf: every feature, prediction and test
    statistic computed from it would be NaN (a comparison reported 'B better' from one)."""
    bad = {path: int(np.size(v) - np.isfinite(v).sum())
           for path, v in trees.flatten(params).items()
           if np.asarray(v).dtype.kind == "f" and not np.isfinite(v).all()}
    if bad:
        first = sorted(bad)[0]
        raise DamagedCheckpointError(
            f"{params_dir}: the saved weights hold {sum(bad.values())} NaN or inf values in "
            f"{len(bad)} arrays (first: {first}); the run that saved them diverged, or the "
            "files are damaged")


def _digests_save(**trees_by_item) -> ocp.args.JsonSave:
    return ocp.args.JsonSave({"format": digests.FORMAT, **{
        item: digests.of_tree(tree) for item, tree in trees_by_item.items()}})


def _check_digests(step_dir, **trees_by_item) -> None:
    """DamagedCheckpointError when an array read back differs from the digest saved with it: the
    files changed after they were written (a disk fault, a bad copy), which Orbax's reader does
    not see. Steps saved before digests were written are read unchecked."""
    file = epath.Path(step_dir) / "digests" / "metadata"
    if not file.exists():
        return
    saved = files.load_json(file.read_text, file, dict, DamagedCheckpointError,
                            " (the digests saved with the checkpoint)")
    if saved.get("format") != digests.FORMAT:
        return  # written by a later version, in a format this one does not know
    for item, tree in trees_by_item.items():
        if not isinstance(saved.get(item, {}), dict):
            raise DamagedCheckpointError(f"{file}: damaged ({item!r} holds a "
                                         f"{type(saved[item]).__name__}, expected a mapping)")
        changed = digests.mismatches(tree, saved.get(item, {}))
        if changed:
            arrays = "1 saved array differs" if len(changed) == 1 else \
                f"{len(changed)} saved arrays differ"
            raise DamagedCheckpointError(
                f"{epath.Path(step_dir) / item}: damaged, {arrays} from the digests in {file} "
                f"(first: {changed[0]}); the files changed after they were saved (a disk fault "
                "or a bad copy)")


class DamagedCheckpointError(ValueError):
    """A checkpoint step's saved weights do not read (the message names the step's params)."""


def _damage(err: BaseException) -> str:
    """The last file TensorStore names and what was wrong with it ("d/0323...: Requested byte
    range [0, 11944) is not valid for value of size 16", "manifest.ocdbt: Error decoding
    manifest: ...", "d/0323...: not found"), else the cause in one line."""
    text = checkpoint_errors.cause(err, limit=10_000)
    found = list(re.finditer(r'local file "([^"]+)"', text))
    if not found:
        return checkpoint_errors.cause(err)
    reason = text[found[-1].end():].lstrip(": ")
    status = re.match(r"([A-Z_]+): ", text)
    reason = reason or (status.group(1).lower().replace("_", " ") if status else "unreadable")
    reason = reason if len(reason) <= 200 else reason[:197] + "..."
    return f"{found[-1].group(1)}: {reason}"


class DamagedConfigError(ValueError):
    """A checkpoint step's saved config does not read as a JSON object (the message names it)."""


def load_saved_config(path) -> dict:
    """Only the saved config (a JSON dict) of the latest complete checkpoint under `path` (or
    of the step dir `path`); DamagedConfigError naming the file when it does not read."""
    root, step = _resolve(path)
    file = root / str(step) / "config" / "metadata"
    return files.load_json(file.read_text, file, dict, DamagedConfigError,
                           " (the checkpoint's saved config)")


def _metadata_tree(meta) -> Any:
    """Orbax item metadata as a plain nested dict (its wrapper type changed across versions)."""
    tree = getattr(meta, "tree", meta)
    if hasattr(tree, "items") and not isinstance(tree, dict):
        tree = dict(tree.items())
    return tree
