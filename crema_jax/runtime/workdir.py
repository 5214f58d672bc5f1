"""The workdir a run owns: where its checkpoints live (`<workdir>/checkpoints/<step>/`), which
steps are complete, one writer at a time (`WorkdirLock`), and nothing deleted (`set_aside`,
`prepare_workdir`).

Orbax writes every step into a temporary directory and renames it on commit (on object stores,
which cannot rename, it writes commit markers), so a step that a `kill -9` interrupted never
looks complete: `latest_step` and `resolve_checkpoint` only see committed steps.

- `prepare_workdir` moves a step left incomplete by a crash or a failed save aside as
  `<step>.incomplete-TIME` (Orbax's `<step>.orbax-checkpoint-tmp` dir; on object stores a
  `<step>` dir without its commit markers), which Orbax would otherwise delete when the rerun
  writes that step again, and refuses to start over on a workdir with
  checkpoints unless told to (then `checkpoints/` is moved to `checkpoints.replaced-TIME`);
- a step that cannot be restored is moved aside as `<step>.damaged-TIME` by the trainer, which
  then resumes from the newest step that restores; a resume finding every step set aside is
  refused (a start from step 0 would hide them);
- `WorkdirLock` keeps a second run from writing into the same workdir, and `check_workdir`
  keeps a run out of a folder that holds other files or its own inputs.
"""
from __future__ import annotations

import json
import os
import re
import socket
import time
import uuid

from absl import logging
from etils import epath

from crema_jax.runtime import files, storage

CHECKPOINTS_DIRNAME = "checkpoints"
COMMIT_MARKER = "commit_success.txt"  # Orbax writes it last, on every file system.
_STEP_DIR = re.compile(r"^\d+$")
# Where Orbax writes a step before its commit renames it to "<step>"; a failed or killed save
# leaves it, and Orbax deletes it when that step is saved again.
_TMP_STEP_DIR = re.compile(r"^(\d+)\.orbax-checkpoint-tmp")
_DAMAGED_STEP_DIR = re.compile(r"^\d+\.damaged-")  # set_aside(step, "damaged")


# ------------------------------------------------------------------------------------------------
# Paths.
# ------------------------------------------------------------------------------------------------
def absolute_path(path) -> epath.Path:
    """Orbax needs absolute paths; cloud paths (gs://...) already are."""
    text = str(path)
    return epath.Path(text if "://" in text else os.path.abspath(text))


def checkpoints_dir(workdir) -> epath.Path:
    return absolute_path(workdir) / CHECKPOINTS_DIRNAME


def is_unfinished_step_name(name: str) -> bool:
    """Whether `name` is Orbax's temporary folder of a step whose save has not finished."""
    return bool(_TMP_STEP_DIR.match(name))


def is_complete_step_dir(path: epath.Path) -> bool:
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
    if is_complete_step_dir(path):
        return path.parent, int(path.name)
    root = path / CHECKPOINTS_DIRNAME if (path / CHECKPOINTS_DIRNAME).is_dir() else path
    step = latest_step(root)
    if step is None:
        raise FileNotFoundError(
            f"{path}: no complete checkpoint found (expected a workdir with checkpoints/<step>/, "
            f"a checkpoints dir, or a step dir containing 'params')")
    newer = [p.name for p in step_dirs(root) if int(p.name) > step]
    if newer:  # an interrupted save: the step read is not the latest one the run reached
        logging.warning("%s: step %s is incomplete (a save cut short); reading step %d",
                        root, newer[-1], step)
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
    return [int(p.name) for p in step_dirs(root) if is_complete_step_dir(p)]


def latest_step(root) -> int | None:
    """Latest committed step under a checkpoints dir; half-written (tmp) steps are ignored."""
    root = epath.Path(root)
    if not root.is_dir():
        return None
    steps = [int(p.name) for p in root.iterdir() if is_complete_step_dir(p)]
    return max(steps) if steps else None


def set_aside(path: epath.Path, why: str, *, name: str | None = None) -> epath.Path:
    """Rename `path` to `<name>.<why>-<UTC time>` beside it (Orbax ignores such names; `name`
    defaults to the path's own); return the new path. Nothing is deleted."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    name = path.name if name is None else name
    target = path.parent / f"{name}.{why}-{stamp}"
    n = 1
    while target.exists():
        target = path.parent / f"{name}.{why}-{stamp}-{n}"
        n += 1
    path.rename(target)
    return target


def check_workdir(workdir, *, inputs=()) -> None:
    """files.OutputError unless the local `workdir` is new, empty or one a run (or
    `import-torch --out`) wrote: it holds `checkpoints/`, a moved-aside `checkpoints.replaced-*`
    or the lock. Nor may it be one of the run's input folders or lie inside one (a run had
    written its checkpoints, metrics and plot into a user's folder, its dataset or its cache).
    A URL workdir (gs://) is not checked: an object store has no folder to share."""
    if storage.is_remote(str(workdir)):
        return
    files.check_output_dir(str(workdir), marker=(CHECKPOINTS_DIRNAME, CHECKPOINTS_DIRNAME
                                                 + ".replaced-*", WorkdirLock.NAME),
                           flag="--workdir", inputs=inputs, outside=inputs, create=False)


def prepare_workdir(workdir, *, resume: bool, overwrite: bool) -> list[str]:
    """Before a training run writes into `workdir`: set incomplete steps aside; with
    resume=False, refuse existing checkpoints unless overwrite (then move them aside).
    Returns one line per thing moved, for the log."""
    root = checkpoints_dir(workdir)
    if root.exists() and not root.is_dir():  # Orbax's first save had hung on it
        raise ValueError(f"{root}: a file where the run keeps its checkpoints (a folder); move "
                         "it away or choose a new --workdir")
    for path in sorted(root.iterdir()) if root.is_dir() else ():
        if (_STEP_DIR.match(path.name) or _TMP_STEP_DIR.match(path.name)) and not path.is_dir():
            raise ValueError(f"{path}: a file named like a checkpoint step, which a save "
                             "would replace; move it out of the checkpoints folder")
    notes = []
    for path in step_dirs(root):
        if not is_complete_step_dir(path):
            moved = set_aside(path, "incomplete")
            notes.append(f"checkpoint step {path.name} was left incomplete (a crash during its "
                         f"save); moved aside to {moved.name}")
    for path in sorted(root.iterdir()) if root.is_dir() else ():
        step = _TMP_STEP_DIR.match(path.name)
        if step and path.is_dir():
            moved = set_aside(path, "incomplete", name=step.group(1))
            notes.append(f"checkpoint step {step.group(1)} was left incomplete (a crash or a "
                         f"failed save); moved aside to {moved.name}")
    steps = complete_steps(root)
    damaged = sorted(p.name for p in root.iterdir() if _DAMAGED_STEP_DIR.match(p.name)) \
        if root.is_dir() else []
    if resume and damaged and not steps:  # a fresh start here would hide the lost steps
        raise ValueError(
            f"{root}: every checkpoint step was set aside as damaged ({', '.join(damaged[:3])}"
            f"{' ...' if len(damaged) > 3 else ''}), so there is nothing to resume; choose a new "
            "--workdir, or pass --config.checkpoint.resume=False to train this one from step 0")
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

    Taken with an exclusive create, so of two runs started together one wins (on an object
    store: a conditional write, and the lock read back, storage.create_exclusive). Stale-lock
    rule: a lock whose process is gone from THIS host, or whose heartbeat (the file's mtime,
    renewed by `refresh`) is older than `stale_seconds` from another host, is taken over with a
    note; any other lock, or one whose age the store cannot tell, refuses the run. Only process
    0 of a multi-process job takes it.

    A lock whose holder cannot be read (empty, not JSON, nested too deeply, no pid: a full disk
    or a crash while a run created it) names no run, so no run can be waited for: one older
    than `DAMAGED_GRACE_SECONDS` is taken over with a note; a younger one (a run may be between
    creating and writing it) refuses the run, naming it as an unreadable lock.
    """

    NAME = "crema_jax.lock"
    DAMAGED_GRACE_SECONDS = 10.0

    def __init__(self, workdir, *, stale_seconds: float = 3600.0, name: str = NAME):
        self.folder = storage.absolute(str(workdir))  # a local path or a URL (storage.py)
        self.path = storage.join(self.folder, name)
        self.stale_seconds = float(stale_seconds)
        self.info = {"pid": os.getpid(), "host": socket.gethostname(),
                     "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "id": uuid.uuid4().hex}
        self.remote = storage.is_remote(self.path)
        self.held = False
        self._refreshed = 0.0

    def acquire(self) -> str | None:
        """Takes the lock or raises WorkdirLockedError; returns a note when a stale or
        unreadable lock was taken over."""
        if not self.remote:  # object stores have no folders to make
            files.make_folder(self.folder, self.folder)
        note = None
        if not self._create():
            holder = self._read_holder()
            mtime = storage.modified(self.path)  # the lock as judged: its holder and its age
            if holder is None:
                note = self._judge_damaged(mtime)
            elif not self._stale(holder, mtime):
                raise WorkdirLockedError(
                    f"{self.folder} is in use: a run by pid {holder.get('pid', '?')} on "
                    f"{holder.get('host', '?')} since {holder.get('started', '?')} holds "
                    f"{self.path}; wait for it to finish, or delete that file if the run is gone")
            else:
                note = (f"took over the stale lock of pid {holder.get('pid', '?')} on "
                        f"{holder.get('host', '?')} (that run is gone)")
            self._take_over(holder, mtime)
        self.held = True
        return note

    def _judge_damaged(self, mtime: float | None) -> str:
        """The note of taking over an unreadable lock (see the class docstring) modified at
        `mtime`, or WorkdirLockedError when it may belong to a run that is starting."""
        grace = self.DAMAGED_GRACE_SECONDS
        if mtime is not None and time.time() - mtime <= grace:
            raise WorkdirLockedError(
                f"{self.path}: an unreadable lock (empty or damaged) that names no run, written "
                f"in the last {grace:.0f} s (a run may be starting: try again), or remove it if "
                "no run uses this folder")
        if mtime is None and storage.exists(self.path):  # a store that cannot tell its age
            raise WorkdirLockedError(
                f"{self.path}: an unreadable lock (empty or damaged) that names no run; remove "
                "it if no run uses this folder")
        return (f"took over the unreadable lock {self.path} (empty or damaged: left by a crash "
                "or a full disk)")

    def _still_the_same(self, holder: dict | None, mtime: float | None) -> bool:
        """Whether the lock is still the one judged stale or damaged: the same holder (None:
        unreadable) and the same modification time. Another run may have taken it over
        meanwhile, or its holder renewed it: that lock must not be removed (two runs had then
        both held the workdir)."""
        return self._read_holder() == holder and storage.modified(self.path) == mtime

    def _take_over(self, holder: dict | None, mtime: float | None) -> None:
        """Replaces the lock judged stale or damaged with this run's, if it is still that lock
        and no other run creates one first; else WorkdirLockedError."""
        if not self._still_the_same(holder, mtime):
            raise WorkdirLockedError(f"{self.folder}: another run took the lock first")
        storage.remove(self.path)
        if not self._create():
            raise WorkdirLockedError(f"{self.folder}: another run took the lock first")

    def _create(self) -> bool:
        text = json.dumps(self.info)
        try:
            if not storage.create_exclusive(self.path, text.encode()):
                return False
        except OSError as err:  # "[Errno 28] No space left on device" had named no file
            raise OSError(err.errno, f"cannot create the lock {self.path}: "
                          f"{err.strerror or err}") from None
        # A store that ignores the exclusive mode lets the last of two writers win: read back.
        return not self.remote or self._holder() == self.info

    def _holder(self) -> dict:
        return self._read_holder() or {}

    def _read_holder(self) -> dict | None:
        """The lock's holder; {} when the file cannot be read (gone meanwhile, say); None when
        it reads but names no holder (empty, not JSON, nested too deeply, no pid)."""
        try:
            if self.remote:
                text = storage.read_bytes(self.path, limit=1 << 16)
            else:
                with open(self.path, "rb") as f:
                    text = f.read(1 << 16)
        except OSError:
            return {}
        try:
            holder = json.loads(text)
        except (ValueError, RecursionError):
            return None
        return holder if isinstance(holder, dict) and "pid" in holder else None

    def _stale(self, holder: dict, mtime: float | None) -> bool:
        """Whether the lock of `holder`, modified at `mtime`, is stale (the class docstring)."""
        if holder.get("host") == self.info["host"] and isinstance(holder.get("pid"), int):
            try:
                os.kill(holder["pid"], 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
            return False
        if mtime is None:  # gone since it was read (stale), or a store that cannot tell (not)
            return not storage.exists(self.path)
        return time.time() - mtime > self.stale_seconds

    def refresh(self, every_seconds: float = 60.0) -> None:
        """The heartbeat: renew the lock at most every `every_seconds`, while it is still ours
        (a run that stalled past `stale_seconds` may have lost it to another host: it stops
        renewing, with a warning, rather than overwrite the other run's lock)."""
        now = time.time()
        if not self.held or now - self._refreshed < every_seconds:
            return
        self._refreshed = now
        try:
            holder = self._holder()
            if holder.get("id") != self.info["id"]:
                self.held = False
                logging.warning("%s: the workdir lock is no longer this run's (now pid %s on %s)",
                                self.path, holder.get("pid", "?"), holder.get("host", "?"))
            elif self.remote:  # an object's mtime is its last write
                storage.replace_bytes(self.path, json.dumps(self.info).encode())
            else:
                os.utime(self.path)
        except Exception as err:  # noqa: BLE001 - a store's transient error must not stop a run
            logging.warning("%s: lock heartbeat failed (%s: %s)", self.path,
                            type(err).__name__, err)

    def release(self) -> None:
        if self.held and self._holder().get("id") == self.info["id"]:
            try:
                storage.remove(self.path)
            except OSError:
                pass
        self.held = False


