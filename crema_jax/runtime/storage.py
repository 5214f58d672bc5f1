"""The one file-system abstraction for paths that may be URLs: records read, the cache written,
the cache read. A path with a scheme (gs://, s3://, memory://, ...) goes through fsspec; any other
path is a local (or mounted) one and goes through the os module as before.

Why fsspec: one interface for every object store (gcsfs for gs://, s3fs for s3://, installed with
the store), an in-memory implementation (memory://) that lets the remote code paths run offline
in tests, and byte-range file objects. Beam's own FileSystems only run inside Beam, and etils'
epath reaches gs:// and s3:// through fsspec (or TensorFlow) anyway.

ArrayRecord's writer and reader are C++ and open local paths only, as do wfdb and h5py, so:
- writing a remote file = writing a local temporary file, then uploading it under a temporary
  name beside the target and renaming it into place (`write_atomic`): the target is either
  absent or complete, as with local files (object stores publish an object whole; a rename there
  is a copy of the complete object, then a delete of the temporary one);
- reading remote files that a C++ reader opens = a local copy first (`download`);
- a command's output file given as a URL: checked on the store before any work
  (`check_output_file`), then written locally and uploaded with its side files as one group
  (`write_atomic_group`: every file uploaded under its temporary name before any is renamed).
Nothing here deletes or overwrites anything but the temporaries it made and the target it was
asked to write.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from typing import Any, Callable

import fsspec

from crema_jax.runtime import files


def is_remote(path) -> bool:
    """Whether `path` is a URL with a scheme (gs://bucket/x); file:// and plain paths are local."""
    text = os.fspath(path) if not isinstance(path, str) else path
    return "://" in text and not text.startswith("file://")


def _fs(url: str):
    """(fsspec file system, path inside it) of a URL; one line naming the URL and the fix when
    its scheme is unknown or its implementation is not installed."""
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as err:
        raise ImportError(f"{url}: {err} (gs:// needs `pip install \".[gcs]\"`, s3:// "
                          "`pip install \".[s3]\"`)") from None
    except ValueError as err:
        raise ValueError(f"{url}: {err}; expected a local path or a URL of an fsspec file "
                         "system (gs://, s3://, ...)") from None
    except Exception as err:  # noqa: BLE001 - a file system that connects when made (ftp://)
        raise OSError(f"{url}: {type(err).__name__}: {err}") from err


@contextlib.contextmanager
def reach(url: str):
    """(file system, path inside it) of `url`, for a block whose errors name `url`: a refused
    or reset connection had said only "[Errno 111] Connection refused", and an FTP or object
    store error that is no OSError had been a traceback. FileNotFoundError, ValueError and
    ImportError keep their type; any other error of the store becomes an OSError."""
    fs, inner = _fs(url)
    try:
        yield fs, inner
    except Exception as err:  # noqa: BLE001 - every store's own error types, named
        if url in str(err):
            raise
        raise named_error(err, url) from err


def named_error(err: Exception, where: str) -> Exception:
    """`err` as one line beginning with `where` (a URL, or what was being done with one):
    FileNotFoundError, ValueError and ImportError keep their type, any other error becomes an
    OSError naming its type."""
    text = str(err)
    for kind in (FileNotFoundError, ValueError, ImportError):
        if isinstance(err, kind):
            return kind(f"{where}: {text or type(err).__name__}")
    return OSError(f"{where}: {type(err).__name__}: {text}")


def fs_is(fs, inner: str, test: str) -> bool:
    """fs.isdir/isfile/exists(inner), raising what they swallow when they answer False (they
    do on any error, so an unreachable store had read as a missing folder): asked again with
    `info`, an absent path raises FileNotFoundError (False), a failure raises itself."""
    if getattr(fs, test)(inner):
        return True
    try:
        fs.info(inner)
    except FileNotFoundError:
        pass
    return False


def check_url(url: str) -> None:
    """ValueError (or ImportError) naming `url` when no installed fsspec file system reads its
    scheme (abc://x had failed deep inside a writer with KeyError: 'abc://')."""
    _fs(url)


def join(base, *names: str) -> str:
    """os.path.join for local paths; '/'-joined names for URLs (keeping the URL's spelling)."""
    base = os.fspath(base)
    if not is_remote(base):
        return os.path.join(base, *names)
    return "/".join([base.rstrip("/"), *names])


def absolute(path) -> str:
    """os.path.abspath for local paths; URLs unchanged."""
    path = os.fspath(path)
    return path if is_remote(path) else os.path.abspath(path)


def _remote_test(path, test: str) -> bool:
    with reach(path) as (fs, inner):
        return fs_is(fs, inner, test)


def exists(path) -> bool:
    return os.path.exists(path) if not is_remote(path) else _remote_test(path, "exists")


def isfile(path) -> bool:
    return os.path.isfile(path) if not is_remote(path) else _remote_test(path, "isfile")


def isdir(path) -> bool:
    return os.path.isdir(path) if not is_remote(path) else _remote_test(path, "isdir")


def listdir(url: str) -> list[str]:
    """The names (not paths) directly in a remote folder, sorted; [] when it does not exist."""
    with reach(url) as (fs, inner):
        if not fs_is(fs, inner, "isdir"):
            return []
        return sorted(os.path.basename(p.rstrip("/")) for p in fs.ls(inner, detail=False))


def read_bytes(url: str, *, limit: int | None = None) -> bytes:
    """A remote file's bytes; ValueError when it is larger than `limit` (nothing read)."""
    with reach(url) as (fs, inner):
        if not fs_is(fs, inner, "isfile"):
            raise FileNotFoundError(f"{url}: no such file")
        size = fs.size(inner)
        if limit is not None and size > limit:
            raise ValueError(f"{url} is {size} bytes, expected at most {limit}")
        return fs.cat_file(inner)


def read_range(path, offset: int, length: int) -> bytes:
    """`length` bytes of a local file or URL from byte `offset` (a ranged read: an object
    store sends only those bytes)."""
    path = os.fspath(path)
    if not is_remote(path):
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(length)
    with reach(path) as (fs, inner):
        return fs.cat_file(inner, start=offset, end=offset + length)


def file_size(path) -> int:
    """The length in bytes of a local file or URL."""
    path = os.fspath(path)
    if not is_remote(path):
        return os.path.getsize(path)
    with reach(path) as (fs, inner):
        return int(fs.size(inner))


def remove(path) -> None:
    """Delete a file this program wrote (a local path or a URL); absent is fine."""
    path = os.fspath(path)
    if not is_remote(path):
        if os.path.lexists(path):
            os.remove(path)
        return
    with reach(path) as (fs, inner):
        if fs_is(fs, inner, "exists"):
            fs.rm_file(inner)


def create_exclusive(path, data: bytes) -> bool:
    """Writes `data` to a file that does not exist yet; False (nothing written) when it exists.
    Local: O_CREAT | O_EXCL. A URL: fsspec's exclusive mode "xb", which an object store's
    implementation turns into a conditional write (memory://, and s3fs, gcsfs and adlfs
    releases since 2024-12); an implementation that ignores the mode may replace the object,
    so a caller that must win alone reads its own bytes back (runtime/workdir.WorkdirLock)."""
    path = os.fspath(path)
    if not is_remote(path):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True
    with reach(path) as (fs, inner):
        if fs.exists(inner):
            return False
        try:
            with fs.open(inner, "xb") as f:
                f.write(data)
        except FileExistsError:
            return False
        return True


def replace_bytes(path, data: bytes) -> None:
    """Overwrites a file this program owns (a local path or a URL) with `data` in one write."""
    path = os.fspath(path)
    if not is_remote(path):
        with open(path, "wb") as f:
            f.write(data)
        return
    with reach(path) as (fs, inner):
        fs.pipe_file(inner, data)


def modified(path) -> float | None:
    """The file's last-modified time (seconds since the epoch); None when the file system cannot
    say (an fsspec implementation without `modified`) or the file is gone."""
    path = os.fspath(path)
    try:
        if not is_remote(path):
            return os.path.getmtime(path)
        with reach(path) as (fs, inner):
            return fs.modified(inner).timestamp()
    except (OSError, NotImplementedError, AttributeError, ValueError):
        return None


def walk(url: str, suffixes: tuple[str, ...]) -> list[str]:
    """Every file below the remote folder `url` whose name ends with one of `suffixes`, in the
    order of safe_files.walk (each folder's files sorted, then its sub-folders in sorted order),
    as URLs spelled from `url`."""
    with reach(url) as (fs, inner):
        prefix = inner.rstrip("/") + "/"
        relative = [p[len(prefix):] for p in fs.find(inner) if p.startswith(prefix)]
        relative = [r for r in relative if r.endswith(suffixes)]

        def order(rel: str):
            parts = rel.split("/")
            return [(1, d) for d in parts[:-1]] + [(0, parts[-1])]
        return [join(url, r) for r in sorted(relative, key=order)]


def get_file_atomic(fs, inner: str, local_path: str, then=None) -> None:
    """fs.get_file(inner) into `local_path`, written atomically (files.write_atomic), then
    `then(temporary path)` before the rename. A failed transfer raises the store's own error
    (FileNotFoundError for a missing file, ConnectionResetError, ...): write_atomic would word
    it "cannot write LOCAL", naming a temporary file no longer there."""
    failed = []

    def get(tmp: str) -> None:
        try:
            fs.get_file(inner, tmp)
        except Exception as err:
            failed.append(err)
            raise
        if then is not None:
            then(tmp)

    try:
        files.write_atomic(local_path, get)
    except OSError:
        if failed:
            raise failed[0] from None
        raise


def download(url: str, local_path: str, *, missing_ok: bool = False) -> bool:
    """Copy a remote file to `local_path` (written atomically): True, in one request (asking
    first, isfile, then fetching took two or more). A `url` that is no file: False with
    `missing_ok`, else FileNotFoundError naming it; a failed transfer: one line naming `url`
    (named_error), never the local temporary file."""
    with reach(url) as (fs, inner):
        try:
            get_file_atomic(fs, inner, local_path)
        except FileNotFoundError:
            if missing_ok:
                return False
            raise FileNotFoundError(f"{url}: no such file") from None
        except Exception as err:  # noqa: BLE001 - a store's errors are of its own kinds
            raise named_error(err, url) from None
    return True


def check_output_file(path, *, inputs=(), flag: str = "--out", overwrite: bool = False,
                      owned: Callable[[str], bool] | None = None) -> str:
    """files.check_output_file for a local path. A URL (written by `write_atomic_group`): its
    scheme one an installed file system reads, not one of the URL `inputs` nor inside one, not
    a folder in the store, and an existing object replaced only with `overwrite` or when
    `owned`. Every refusal is one line beginning "FLAG=URL: "; the store is asked before any
    work, so that a command does not find out after it."""
    path = os.fspath(path)
    if not is_remote(path):
        return files.check_output_file(path, inputs=inputs, flag=flag, overwrite=overwrite,
                                       owned=owned)
    try:
        check_url(path)
    except (ValueError, ImportError) as err:  # they begin with the URL
        raise type(err)(f"{flag}={err}") from None
    for item in inputs:
        item = os.fspath(item) if item else ""
        base = item.rstrip("/")
        if is_remote(item) and (path.rstrip("/") == base or path.startswith(base + "/")):
            raise files.OutputError(f"{flag}={path}: that is an input of this command ({item}); "
                                    "choose another output")
    with reach(path) as (fs, inner):
        folder = fs_is(fs, inner, "isdir")
        exists = not folder and fs_is(fs, inner, "exists")
    if folder:
        raise files.OutputError(f"{flag}={path}: a folder; expected a file name")
    if exists and not overwrite and not (owned and owned(path)):
        raise files.OutputError(f"{flag}={path}: the file exists; choose a new name or pass "
                                "--overwrite")
    return path


def _upload_group(pairs: list[tuple[str, str]]) -> None:
    """Every (complete local file, URL): each uploaded under a unique temporary name beside its
    URL, then, once all are, each renamed into place, one right after the other. A failed upload
    leaves every old object as it was; the temporaries are removed whatever happens."""
    placed = []
    try:
        for local, url in pairs:
            with reach(url) as (fs, inner):
                folder, _, name = inner.rpartition("/")
                tmp = f"{folder}/.{name}.{uuid.uuid4().hex}.tmp"
                placed.append((fs, tmp))  # before the upload: half of one is removed too
                fs.put_file(local, tmp)
        for (fs, tmp), (_, url) in zip(placed, pairs):
            with reach(url) as (_, inner):
                fs.mv(tmp, inner)
    finally:
        for fs, tmp in placed:
            with contextlib.suppress(Exception):  # noqa: BLE001 - never hides the error above
                if fs.exists(tmp):
                    fs.rm_file(tmp)


def write_atomic_group(writes) -> None:
    """files.write_atomic_group, also to URLs: every write(local temporary file) first, in a
    temporary folder, then all uploaded together (`_upload_group`): a failure while writing or
    uploading any of them leaves every old object as it was (see the module docstring). The
    local temporary file has its output's name (a writer may read its extension). One group is
    all local paths or all URLs."""
    writes = [(os.fspath(path), write) for path, write in writes]
    remote = [is_remote(path) for path, _ in writes]
    if not any(remote):
        files.write_atomic_group(writes)
        return
    if not all(remote):
        raise ValueError("one group of outputs mixes local paths and URLs: "
                         + ", ".join(path for path, _ in writes))
    with tempfile.TemporaryDirectory(prefix="crema_jax-upload-") as tmp_dir:
        pairs = []
        for i, (path, write) in enumerate(writes):
            local = os.path.join(tmp_dir, str(i), path.rsplit("/", 1)[-1])
            os.mkdir(os.path.dirname(local))
            try:
                write(local)
            except OSError as err:  # a full local disk: named by the output, not the temporary
                raise files.write_error(err, path) from None
            pairs.append((local, path))
        _upload_group(pairs)


def write_atomic(path, write: Callable[[str], Any]) -> None:
    """files.write_atomic, also to a URL (`write_atomic_group` of one file)."""
    write_atomic_group([(path, write)])


def write_json_atomic(path, obj: Any) -> None:
    """files.write_json_atomic, also to a URL (the same bytes either way)."""
    write_atomic(path, lambda tmp: files.write_json_atomic(tmp, obj))
