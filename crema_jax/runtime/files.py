"""Writing outputs without losing anything: the one place every command's files are written from.

Rules (every command follows them):
- An output is never one of the command's inputs, never a folder where a file is expected, and
  an existing file is replaced only when the command owns it (a file it wrote, recognised by
  `owned`) or the user said so (`overwrite=True`, e.g. `--overwrite`).
- An output FOLDER is new, empty, or one the command wrote before (it holds the command's marker
  file); a folder holding anything else is refused, so a user's own files are never touched.
- Every file is written to a temporary file created exclusively in the output's own folder, with
  a name unique to the process (mkstemp: O_CREAT | O_EXCL, never following a planted link), then
  renamed over the output in one step (os.replace renames a link itself, never its target). A
  crash leaves the old file or the new one, never half of one; two processes never share a
  temporary name.
- Paths here are local: a URL (gs://bucket/x), which the os module would take for the local
  folders gs:/bucket, is refused (`refuse_url`); runtime/storage.py checks and writes URLs.
"""
from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import pathlib
import stat
import tempfile
import time
from typing import Any, Callable, Iterable


class OutputError(ValueError):
    """An output the command refuses to write; the message names it and says why."""


def is_url(path) -> bool:
    """Whether `path` has a scheme (gs://, s3://, memory://, file://): no local path, though the
    os module would take it for one ("gs://b/x" is the folders gs:/b under the current one).
    runtime/storage.py writes URLs; this module refuses them (`refuse_url`)."""
    return "://" in os.fspath(path)


def refuse_url(path, flag: str, what: str = "file") -> None:
    """OutputError when `path` is a URL: the writer of this output writes a local `what` only
    (it had made the local folders gs:/bucket/... and said "wrote gs://bucket/...")."""
    if is_url(path):
        raise OutputError(f"{flag}={os.fspath(path)}: a URL, but this output is written as a "
                          f"local {what} only; name a local path (and copy it to the store "
                          "after)")


def _real(path) -> str:
    return os.path.realpath(os.fspath(path))


# What a file that is not a regular one is, in the words of every message ("... is a FIFO, not a
# regular file").
_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"))


def kind_of(mode: int) -> str | None:
    """What a file of st_mode `mode` is, in words ("a FIFO", "a folder", ...); None for a
    regular file or a symbolic link (lstat's mode of a link not followed)."""
    if stat.S_ISREG(mode) or stat.S_ISLNK(mode):
        return None
    return next((kind for test, kind in _KINDS if test(mode)), "a special file")


def special_kind(path, *, follow_links: bool) -> str | None:
    """What `path` is, in words (`kind_of`), when it is a FIFO, a device, a socket or a folder;
    None for a regular file or nothing. follow_links: True judges the file a link leads to (what a
    read of an input gets); False the link itself (an output replaces a link, never its target).
    Never opens it (a FIFO would block)."""
    try:
        mode = (os.stat if follow_links else os.lstat)(path).st_mode
    except OSError:
        return None
    return kind_of(mode)


def same_file(a, b) -> bool:
    """Whether two paths name the same file (or would: one need not exist)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return _real(a) == _real(b)


def inside(folder) -> Callable[[Any], bool]:
    """A test of whether a path lies strictly below `folder` once both are resolved (links
    followed, ".." applied); a relative path is taken from `folder`. So "../x", a link that leads
    out, a sibling whose name starts with the folder's ("data2" beside "data") and the folder
    itself are not inside it. `folder` is resolved once: a loop over many paths resolves each
    path only."""
    real = _real(folder)

    def test(path) -> bool:
        try:
            target = os.path.realpath(os.path.join(real, os.fspath(path)))
        except ValueError:  # a NUL byte: no path at all
            return False
        return target != real and os.path.commonpath([target, real]) == real
    return test


def _is_or_inside(path, item) -> bool:
    """Whether `path` is the input `item`, or lies inside it when it is a folder."""
    if item is None or item == "":
        return False
    return same_file(path, item) or (os.path.isdir(item)
                                     and inside(item)(os.path.abspath(os.fspath(path))))


def check_output_file(path, *, inputs: Iterable = (), flag: str = "--out",
                      overwrite: bool = False, owned: Callable[[str], bool] | None = None) -> str:
    """`path` as a safe output file name, or OutputError: not an input (nor inside an input
    folder), not a folder, not a link; an existing file only with overwrite or when `owned`;
    its folder (or the nearest existing one above a folder still to be made) writable, so that a
    command finds it out before its work, not after. A folder still to be made is created with
    the file, and said (runtime/made_folders.note)."""
    path = os.fspath(path)
    refuse_url(path, flag)  # storage.check_output_file checks an output URL
    for item in inputs:
        if _is_or_inside(path, item):
            raise OutputError(f"{flag}={path}: that is an input of this command ({item}); "
                              "choose another output")
    if os.path.isdir(path):
        raise OutputError(f"{flag}={path}: a folder; expected a file name")
    if os.path.islink(path):
        raise OutputError(f"{flag}={path}: a symbolic link; name a plain file")
    kind = special_kind(path, follow_links=False)
    if kind:
        raise OutputError(f"{flag}={path}: {kind}, not a regular file; name a plain file")
    if os.path.exists(path) and not overwrite and not (owned and owned(path)):
        raise OutputError(f"{flag}={path}: the file exists; choose a new name or pass --overwrite")
    make_folder(os.path.dirname(os.path.abspath(path)), f"{flag}={path}", create=False)
    return path


def check_output_dir(path, *, marker, flag: str, inputs: Iterable = (), outside: Iterable = (),
                     create: bool = True) -> pathlib.Path:
    """`path` as an output folder this command may write into, created if new: it must be new,
    empty, or hold `marker` (a name, or a tuple of names or fnmatch patterns, the command
    writes there; None: new or empty only), not be one of `inputs` nor lie inside one of the
    folders `outside`. Anything else: OutputError. create=False checks without creating it (the
    writer creates it later, so that a command failing before then leaves nothing)."""
    refuse_url(path, flag, "folder")  # before pathlib makes "gs://b" the local "gs:/b"
    markers = () if marker is None else (marker,) if isinstance(marker, str) else tuple(marker)
    path = pathlib.Path(os.fspath(path))
    for item in inputs:
        if item and same_file(path, item):
            raise OutputError(f"{flag}={path}: that is an input of this command; choose another "
                              "folder")
    for item in outside:  # a user's hub folder had gained the imported checkpoint, a
        if _is_or_inside(path, item):  # checkpoint's checkpoints/ a step-named hub folder
            raise OutputError(f"{flag}={path}: inside the input {item}, which this command "
                              "reads and never writes into; choose a folder outside it")
    if path.is_symlink():
        raise OutputError(f"{flag}={path}: a symbolic link; name a plain folder")
    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag}={path}: a file, not a folder")
    if path.is_dir():
        entries = [p.name for p in path.iterdir()]
        ours = [e for e in entries if any(fnmatch.fnmatchcase(e, m) for m in markers)]
        if entries and not ours:
            shown = ", ".join(sorted(entries)[:3]) + (", ..." if len(entries) > 3 else "")
            raise OutputError(f"{flag}={path}: the folder holds files this command did not write "
                              f"({shown}); choose a new or empty folder")
        for m in ours:
            if (path / m).is_symlink():
                raise OutputError(f"{flag}={path}: {m} is a symbolic link")
            kind = special_kind(path / m, follow_links=False)
            if kind and not (path / m).is_dir():  # a marker may be a folder (checkpoints/)
                raise OutputError(f"{flag}={path}: {m} is {kind}, not a regular file")
    return make_folder(path, f"{flag}={path}", create=create)


def own_folder(path: str) -> None:
    """Makes the folder `path` (mode 0700) unless it exists; PermissionError unless it is a
    folder (not a link) of this user's."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    found = os.lstat(path)
    if not stat.S_ISDIR(found.st_mode):
        raise PermissionError(f"{path} is not a folder")
    if found.st_uid != os.getuid():
        raise PermissionError(f"{path} belongs to uid {found.st_uid}, not to this user (uid "
                              f"{os.getuid()})")


def make_folder(path, label: str, *, create: bool = True) -> pathlib.Path:
    """`path` created as a folder (parents too), or an OutputError starting with `label` that
    says why: it or a parent is a file ('[Errno 17] File exists' had been all a run said), or
    the nearest existing folder is not writable. create=False only checks."""
    if is_url(path):
        raise OutputError(f"{label}: {os.fspath(path)} is a URL; expected a local folder")
    path = pathlib.Path(os.fspath(path))
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise OutputError(f"{label}: {existing} is a file, not a folder")
    if existing is not None and not os.access(existing, os.W_OK):
        raise OutputError(f"{label}: {existing} is not writable")
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise OutputError(f"{label}: cannot create the folder ({err.strerror})") from None
    return path


def load_json(read: Callable[[], str], where, kind: type, error: type[Exception],
              remedy: str = ""):
    """json.loads(read()) when it parses to a `kind`; otherwise `error` naming `where` as
    damaged (and saying `remedy`): a file that does not read, is not JSON or holds another type."""
    try:
        value = json.loads(read())
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError included
        raise error(f"{where}: damaged ({err}){remedy}") from None
    except RecursionError:
        raise error(f"{where}: damaged (JSON nested too deeply){remedy}") from None
    if not isinstance(value, kind):
        raise error(f"{where}: damaged (a {type(value).__name__}, expected a {kind.__name__})"
                    f"{remedy}")
    return value


def folder_name(text: str) -> str:
    """`text` as one file or folder name: itself when made of letters, digits and "-_.=";
    otherwise those kept, every other character "_", and 8 hex digits of its SHA-256, so that
    two names never share a folder ("rhythm a" and "rhythm_a", "random:m" and "random_m").
    Never "", "." or "..": a model or task named ".." wrote beside the workdir."""
    safe = "".join(ch if ch.isalnum() or ch in "-_.=" else "_" for ch in text)
    if safe == text and text.strip(".") != "":
        return safe
    return f"{safe}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def sha256_of(path) -> str:
    """The SHA-256 (hex) of all the bytes of the local file at `path`, read 1 MiB at a time."""
    whole = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            whole.update(chunk)
    return whole.hexdigest()


def write_atomic(path, write: Callable[[str], Any]) -> None:
    """write(temporary path) then rename it to `path` (see the module docstring)."""
    write_atomic_group([(path, write)])


def write_error(err: OSError, path: str) -> OSError:
    """`err` naming the output `path`, not the temporary file it was written to."""
    if err.filename == path:
        return err
    if err.errno is None:  # e.g. numpy's "N requested and M written"
        return OSError(f"cannot write {path}: {err}")
    return OSError(err.errno, f"cannot write {path}: {err.strerror or err}")


def write_atomic_group(writes: Iterable[tuple[Any, Callable[[str], Any]]]) -> None:
    """Several files that belong together (Y.npy and Y.records.txt, weights and their config):
    every (path, write) writes a temporary file beside its output first, and only when all of
    them are written are they renamed over the outputs, one right after the other. A failure
    while writing (a full disk, a Ctrl-C) removes the temporaries and leaves every old file as
    it was: never new weights beside the old config."""
    writes = [(os.fspath(path), write) for path, write in writes]
    for path, _ in writes:  # storage.write_atomic_group writes URLs
        if is_url(path):
            raise OutputError(f"{path}: a URL, written here as a local path; expected a local "
                              "path (runtime/storage.py writes URLs)")
    temps: list[tuple[str, str]] = []
    try:
        for path, write in writes:
            folder = os.path.dirname(os.path.abspath(path))
            try:
                os.makedirs(folder, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.",
                                           suffix=f".{os.getpid()}.tmp")
                os.close(fd)
                temps.append((tmp, path))
                write(tmp)
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the result is an ordinary file
            except OSError as err:  # a full disk, a read-only folder: name the output
                raise write_error(err, path) from None
        for tmp, path in temps:
            try:
                os.replace(tmp, path)
            except OSError as err:
                raise write_error(err, path) from None
    finally:
        for tmp, _ in temps:
            if os.path.lexists(tmp):
                os.remove(tmp)


def write_bytes_atomic(path, data: bytes) -> None:
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
    write_atomic(path, write)


def write_text_atomic(path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_npz_atomic(path, arrays: dict) -> None:
    """{name: array} as an uncompressed .npz (np.savez) at `path`, written atomically."""
    import numpy as np  # here: the rest of this module needs only the standard library

    def write(tmp):
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
            np.savez(f, **arrays)
    write_atomic(path, write)


def write_json_atomic(path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def _nested_json(value: Any, depth: int) -> str:
    """json.dumps(value, indent=1, sort_keys=True) as it reads nested `depth` levels deep (JSON
    escapes newlines inside strings, so every raw newline is one of the layout's)."""
    return json.dumps(value, indent=1, sort_keys=True).replace("\n", "\n" + " " * depth)


def write_json_streamed(path, obj: dict, key: str, items: Iterable) -> int:
    """Writes (not atomically: inside a `write_atomic` callback) the bytes write_json_atomic
    writes for `{**obj, key: list(items)}`, taking `items` one at a time, so a list larger than
    memory never is in memory. Returns the number of items written."""
    whole = dict(obj, **{key: None})
    count = 0
    with open(path, "w", encoding="utf-8") as f:
        f.write("{")
        for i, name in enumerate(sorted(whole)):
            f.write(("," if i else "") + "\n " + json.dumps(name) + ": ")
            if name != key:
                f.write(_nested_json(whole[name], 1))
                continue
            for item in items:
                f.write(("," if count else "[") + "\n  " + _nested_json(item, 2))
                count += 1
            f.write("\n ]" if count else "[]")
        f.write("\n}\n" if whole else "}\n")
    return count


def remove_stale_temporaries(folder, names: Iterable[str] | None = None, *,
                             older_than_s: float = 0.0) -> int:
    """Delete the temporary files `write_atomic` left in `folder` when its process died (their
    names carry the writer's pid; a live writer's are kept). `names`: only the temporaries of
    these output file names (a host sharing the folder with other hosts removes only its own:
    another machine's pids mean nothing here). `older_than_s`: only those not written to for
    that long as well (a folder other hosts may share, whose writers' pids are no one's here).
    Returns how many were removed."""
    removed = 0
    now = time.time()
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        return 0
    names = None if names is None else set(names)
    for path in folder.glob(".*.tmp"):
        parts = path.name[1:].rsplit(".", 3)   # <output name>.<random>.<pid>.tmp
        if len(parts) != 4 or not parts[2].isdigit() or path.is_symlink():
            continue
        if names is not None and parts[0] not in names:
            continue
        try:
            if now - path.stat().st_mtime < older_than_s:
                continue                   # maybe another host's copy, being written
        except FileNotFoundError:
            continue
        try:
            os.kill(int(parts[2]), 0)
            continue                       # the writer is alive: its file, not ours to touch
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        path.unlink()
        removed += 1
    return removed
