"""embed's and predict's work kept on disk as it goes, so that an interrupted run resumes.

A run over records with an output file (`embed --out=Y.npy`, `predict --out=P.csv`) keeps what
it has finished in a hidden folder beside that file, `.NAME.partial` (NAME: the output's file
name), which is this module's alone:
- `lock`: one run at a time writes an output (`Keeper.lock`, an fcntl.flock on this file,
  which holds the pid of the run holding it): a second run with the same --out (a cron job
  fired twice) is refused in one line naming the output and that pid. The OS releases the lock
  when its process ends, however it ends, so a SIGKILLed run leaves no stale lock; the file
  stays in a folder kept for a resume. On a file system without locks (Lustre mounted without
  -o flock) a run goes on unlocked and says so in one line;
- `manifest.json`: FORMAT and the digests of what the outputs depend on (`settings`): the
  checkpoint's weights (runtime/digests.py over every array), the data path (the data section
  the records are read with: preset, rate, crops, preprocessing, lead options), the outputs
  asked for (features, logits) and the package version (an upgrade may compute otherwise);
- `chunk-NNNNNN.npz`, one per FLUSH_SECONDS (and one when the run stops: the end, Ctrl-C,
  SIGTERM, an error), each written atomically (runtime/files.py): the records finished since
  the last one, by key (the record's absolute path and the size and mtime of each file it is
  read from), their rows (crop-averaged outputs, window), their skips (reason, path, message)
  and their repairs. A record is finished once every row of it is computed or skipped.

The same command run again reads the records no chunk holds and no others (a record whose
files changed since is read again), writes the output from all the chunks and removes the
folder. With other settings it says so in one line and starts over (the folder's files are
removed); a folder of that name without our manifest, or holding a file of another name, is
refused, never touched. An empty folder (a run stopped before its manifest was written) is
ours; a run stopped before finishing any record (no chunk written) removes its folder, its
manifest and lock too; a folder whose files are all older than the output beside it (a run
stopped between writing its output and removing the folder) is removed as stale, said in one
line (`clear_stale`).

CREMA_JAX_FLUSH_SECONDS overrides FLUSH_SECONDS (0: a chunk after every batch);
CREMA_JAX_TEST_KILL_AFTER_CHUNK=N makes the process SIGKILL itself right after writing chunk N
(a test's deterministic interruption), CREMA_JAX_TEST_STOP_AFTER_CHUNK=N SIGSTOP itself there
(a run still alive, holding its lock, at a known point).
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import os
import re
import signal

import jax
import numpy as np
from flax import nnx

import crema_jax
from crema_jax.data.index import duplicates
from crema_jax.data.reading import wfdb_records
from crema_jax.runtime import digests, files, made_folders

FORMAT = "crema_jax.partial_outputs.v1"
MANIFEST = "manifest.json"
LOCK = "lock"
FLUSH_SECONDS = 10.0
_CHUNK = re.compile(r"chunk-(\d{6})\.npz")
_OURS = re.compile(r"\.?(manifest\.json|chunk-\d{6}\.npz)(\..*\.tmp)?|lock")  # temporaries too

_TEST_SIGNALS = {"CREMA_JAX_TEST_KILL_AFTER_CHUNK": signal.SIGKILL,
                 "CREMA_JAX_TEST_STOP_AFTER_CHUNK": signal.SIGSTOP}
# The data section's fields that change how fast, not what, is computed.
_RUNTIME_FIELDS = ("batch_size", "num_workers", "read_threads", "prefetch_buffer_size",
                   "per_worker_buffer_size")


def _ours(folder: str, name: str) -> bool:
    """An entry of the folder this module writes: one of its names, and a plain file (a link
    named `lock` had been followed, its target overwritten with the pid)."""
    path = os.path.join(folder, name)
    return bool(_OURS.fullmatch(name)) and os.path.isfile(path) and not os.path.islink(path)


def folder_of(out_path: str) -> str:
    """The partial folder of an output file: `.NAME.partial` beside it."""
    head, name = os.path.split(os.path.abspath(out_path))
    return os.path.join(head, f".{name}.partial")


def record_key(path: str) -> str:
    """A record's key: its absolute path, and the size and mtime of each file it is read from
    (duplicates.file_stats: its header and own signal files, or the file read whole; and the
    signal files its header names, of any name): a record whose files changed is another."""
    header = path + ".hea"
    named = wfdb_records.signal_files_named(header) if os.path.isfile(header) else []
    return json.dumps([os.path.abspath(path), duplicates.file_stats(path),
                       {name: duplicates.file_stats(name) for name in sorted(set(named))}])


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def settings_of(backbone, data_cfg, output: str) -> dict:
    """{what the outputs depend on: its digest} (the module docstring)."""
    weights = jax.tree.map(np.asarray, nnx.to_pure_dict(backbone.state))
    data = {k: v for k, v in data_cfg.to_dict().items() if k not in _RUNTIME_FIELDS}
    return {"checkpoint weights": _sha(digests.of_tree(weights)),
            "data path": _sha(json.loads(json.dumps(data, default=str))), "outputs": output,
            "package version": crema_jax.__version__}


class Keeper:
    """The partial folder of one output file (the module docstring). `say` prints its lines."""

    def __init__(self, out_path: str, output: str, *, say=print):
        self.out_path, self.output, self.say = out_path, output, say
        self.folder = folder_of(out_path)
        self.kept: dict[str, dict] = {}   # record key -> {"rows", "window", "skips", "repairs"}
        self.chunks = 0
        self.flush_seconds = float(os.environ.get("CREMA_JAX_FLUSH_SECONDS", FLUSH_SECONDS))
        self._lock_fd: int | None = None   # the lock file, open and flocked while held
        self._made: list[str] = []   # the output's folders `lock` made, deepest first

    def lock(self) -> None:
        """Takes the folder's lock for this run (the module docstring), making the folder (and
        the output's folders) if new; BusyError when another run holds it. A folder that is not
        ours (a link, a file, a folder holding files of other names) is left untouched, not
        locked: `start` refuses it."""
        if self._lock_fd is not None or (os.path.lexists(self.folder) and not self._ours()):
            return
        path = os.path.join(self.folder, LOCK)
        self._made = made_folders.to_make(os.path.dirname(self.folder))
        for _ in range(3):  # again when the run that held it removed it as it ended
            os.makedirs(self.folder, exist_ok=True)
            try:  # never through a link; 0o666 less the umask, as the run's other files
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
            except FileNotFoundError:
                continue
            except PermissionError:
                raise BusyError(f"{self.out_path}: its lock file {path} is not writable by this "
                                "user (another user's run made it); ask its owner to remove "
                                "the folder, or choose another --out") from None
            taken = _flock(fd)
            if taken is False:
                holder = os.read(fd, 32).decode("ascii", "replace").strip()
                os.close(fd)
                raise BusyError(f"{self.out_path}: another run"
                                + (f" (pid {holder})" if holder.isdigit() else "")
                                + f" is writing it (its lock: {path}); wait for it to end, or "
                                "choose another --out")
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                if taken is not True:
                    self.say(f"warning: {self.folder}: its file system takes no locks "
                             f"({taken}); nothing stops another run writing {self.out_path} "
                             "at the same time")
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self._lock_fd = fd
                return
            os.close(fd)
        raise BusyError(f"{self.out_path}: {path} keeps being removed by other runs; try again")

    def _ours(self) -> bool:
        """The folder is a real one holding only names of ours (or nothing)."""
        return (os.path.isdir(self.folder) and not os.path.islink(self.folder)
                and all(_ours(self.folder, n) for n in os.listdir(self.folder)))

    def start(self, backbone, data_cfg, keys: list[str]) -> list[int]:
        """Open (or make) the folder for these settings; returns the positions in `keys` of
        the records still to compute, having said what is kept."""
        self.lock()
        settings = settings_of(backbone, data_cfg, self.output)
        manifest = os.path.join(self.folder, MANIFEST)
        if os.path.lexists(self.folder) and self._unstarted():
            self._clear()
        elif os.path.lexists(self.folder):
            saved = self._manifest(manifest)
            changed = [k for k in settings if saved.get("settings", {}).get(k) != settings[k]]
            if changed:
                self.say(f"{self.folder}: kept outputs of a run with another "
                         f"{', '.join(changed)}; not used, starting over")
                self._clear()
            else:
                self._load()
        if not os.path.isfile(manifest):
            os.makedirs(self.folder, exist_ok=True)
            files.write_json_atomic(manifest, {"format": FORMAT, "settings": settings})
        todo = [i for i, key in enumerate(keys) if key not in self.kept]
        done = len(keys) - len(todo)
        if done:
            self.say(f"resuming: {done} of {len(keys)} records kept in {self.folder} from an "
                     f"earlier run, {len(todo)} to compute")
        return todo

    def _unstarted(self) -> bool:
        """The folder is a real one holding nothing but our temporaries and lock, if anything:
        a run stopped between making it and writing its manifest."""
        if not os.path.isdir(self.folder) or os.path.islink(self.folder):
            return False
        return all(_ours(self.folder, n) and (n == LOCK or n.endswith(".tmp"))
                   for n in os.listdir(self.folder))

    def _manifest(self, manifest: str) -> dict:
        """The folder's manifest; refuses a folder that is not ours (no manifest of ours, or a
        file of another name: neither read nor removed)."""
        why, saved = "no " + MANIFEST, None
        if os.path.isdir(self.folder) and not os.path.islink(self.folder):
            try:
                with open(manifest, encoding="utf-8") as f:
                    saved = json.load(f)
                why = f"{MANIFEST} is not {FORMAT}"
            except (OSError, ValueError) as err:
                why = f"{MANIFEST} unreadable: {err}" if os.path.exists(manifest) else why
        if not isinstance(saved, dict) or saved.get("format") != FORMAT:
            raise ValueError(f"{self.folder}: exists but is not the partial outputs of a run "
                             f"({why}); move it away or choose another --out")
        foreign = sorted(n for n in os.listdir(self.folder) if not _ours(self.folder, n))
        if foreign:
            raise ValueError(f"{self.folder}: the partial outputs of a run, and files of another "
                             f"name ({', '.join(foreign[:3])}); move it away or choose another "
                             "--out")
        return saved

    def _load(self) -> None:
        for name in sorted(os.listdir(self.folder)):
            match = _CHUNK.fullmatch(name)
            if not match:
                continue
            self.chunks = max(self.chunks, int(match.group(1)))
            with np.load(os.path.join(self.folder, name), allow_pickle=False) as z:
                meta, rows = json.loads(str(z["meta"])), z["outputs"]
            for key, entry in zip(meta["keys"], meta["records"]):
                self.kept[key] = {"rows": rows[entry["rows"][0]:entry["rows"][1]],
                                  "window": entry["window"], "skips": entry["skips"],
                                  "repairs": entry["repairs"]}

    def save(self, finished: dict[str, dict]) -> None:
        """One chunk of finished records {key: {"rows" (n, D), "window", "skips",
        "repairs"}}; kept in memory too."""
        if not finished:
            return
        records, blocks, start = [], [], 0
        for entry in finished.values():
            rows = np.asarray(entry["rows"], np.float32)
            records.append({"rows": [start, start + len(rows)], "window": entry["window"],
                            "skips": entry["skips"], "repairs": entry["repairs"]})
            blocks.append(rows)
            start += len(rows)
        width = max((b.shape[-1] for b in blocks if len(b)), default=0)
        outputs = np.concatenate([b if len(b) else np.zeros((0, width), np.float32)
                                  for b in blocks])
        meta = json.dumps({"keys": list(finished), "records": records})
        buffer = io.BytesIO()
        np.savez(buffer, outputs=outputs, meta=np.array(meta))
        self.chunks += 1
        files.write_bytes_atomic(os.path.join(self.folder, f"chunk-{self.chunks:06d}.npz"),
                                 buffer.getvalue())
        self.kept.update(finished)
        for variable, number in _TEST_SIGNALS.items():
            if os.environ.get(variable) == str(self.chunks):
                os.kill(os.getpid(), number)

    def _clear(self) -> None:
        """Removes what the folder keeps (ours only: the manifest, the chunks, their
        temporaries), not its lock: this run starts over in it."""
        for name in os.listdir(self.folder):
            if _OURS.fullmatch(name) and name != LOCK:
                os.remove(os.path.join(self.folder, name))
        self.kept, self.chunks = {}, 0

    def remove(self) -> None:
        """Removes the folder's files (ours only: the manifest, the chunks, their temporaries,
        the lock) and the folder, and releases the lock: the run is done with it. A file of
        another name is left, and so is the folder then; a folder another run holds the lock
        of is left whole."""
        if os.path.isdir(self.folder) and (self._lock_fd is not None or _unlocked(self.folder)):
            self._delete()
        self._release()   # not close(): its clean-up could remove a new run's folder
        made_folders.remove_if_empty(self._made)

    def _delete(self) -> None:
        """Removes the folder's files of ours, the lock too, and the folder once empty."""
        self._clear()
        if os.path.lexists(os.path.join(self.folder, LOCK)):
            os.remove(os.path.join(self.folder, LOCK))
        try:
            os.rmdir(self.folder)
        except OSError:
            pass

    def close(self) -> None:
        """Releases the lock (the end of the command, whatever the end): a folder of ours
        holding no chunk (the run stopped before keeping anything, even once its manifest was
        written: an error or Ctrl-C before its first batch) is removed with it."""
        if self._lock_fd is None:
            return
        if self._ours() and not any(_CHUNK.fullmatch(n) for n in os.listdir(self.folder)):
            self._delete()
            made_folders.remove_if_empty(self._made)
        self._release()

    def _release(self) -> None:
        """Closes the lock file, which releases its flock."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def clear_stale(out_path: str) -> str | None:
    """Removes the partial folder of `out_path` when the output exists and was written after
    every file in the folder (its run stopped between writing the output and removing the
    folder); returns the line saying so, else None (no folder, not ours, or newer)."""
    folder = folder_of(out_path)
    if (not os.path.isfile(out_path) or not os.path.isdir(folder) or os.path.islink(folder)):
        return None
    names = os.listdir(folder)
    if MANIFEST not in names or not all(_ours(folder, n) for n in names):
        return None
    if not _unlocked(folder):  # a run writing it, between writing the output and removing it
        return None
    written = os.stat(out_path).st_mtime_ns
    if any(os.stat(os.path.join(folder, n)).st_mtime_ns > written for n in names):
        return None
    Keeper(out_path, "").remove()
    return (f"removed {folder}: left by the run that wrote {out_path} (stopped before "
            "removing it)")


class BusyError(ValueError):
    """Another run writes the same output (holds its partial folder's lock)."""


# flock's errors on a file system without locks (Lustre mounted without -o flock, some FUSE
# mounts): there a run goes on unlocked, saying so, as embed and predict ran before the lock.
_NO_LOCKS = (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP)


def _flock(fd: int) -> bool | str:
    """Takes the exclusive flock on `fd` without waiting: True, False when another holds it,
    or the error's text where the file system has no locks (_NO_LOCKS)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return False
        if err.errno in _NO_LOCKS:
            return os.strerror(err.errno)
        raise
    return True


def _unlocked(folder: str) -> bool:
    """No run holds the folder's lock (none may have made one, or the file system has none).
    Opened for writing (NFS emulates flock with fcntl locks, whose exclusive lock needs it) and
    never through a link; a lock file that cannot be so opened counts as held."""
    path = os.path.join(folder, LOCK)
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    except FileNotFoundError:
        return True
    except OSError:  # a link (ELOOP), or not ours to write: taken as held, left alone
        return False
    try:
        return _flock(fd) is not False
    finally:
        os.close(fd)


def stopped_line(keeper: Keeper, total: int) -> str:
    """What an interrupted run leaves: how much is kept and how to go on."""
    return (f"kept the outputs of {len(keeper.kept)} of {total} records in {keeper.folder}: "
            "the same command resumes from them")
