"""Local copies of remote folders: a cache on gs:// or s3:// is read from one (ArrayRecord's
reader opens local files only; data/cache/source.py). `staging_dir` is where a URL's copy lives,
`mirror` copies a remote folder's files there.

A copied file is reused by a later run only as mirror left it: beside each file it fetched,
mirror keeps a copy record, .NAME.copied, holding the SHA-256 of the bytes it fetched and the
file's size, modification time and inode right then. A file whose record is missing (a copy
interrupted before the record was written, a file put there by hand) or no longer matches it (the
file was edited, cut short or replaced since) is fetched again; so is one whose SHA-256 differs
from what the caller expects (`sha256`: a cache's index.json records its shards'), as when the
remote was rebuilt since. `copied_sha256` tells a reader whether a damaged copy holds the bytes
the remote had (the remote's damage) or not (the copy's own, since it was fetched), and
`forget_copy` makes the next run fetch a damaged copy again.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from typing import Mapping

from crema_jax.runtime import files
from crema_jax.runtime.storage import fs_is, get_file_atomic, join, listdir, named_error, reach


# A shared CREMA_JAX_STAGING (one folder that several hosts see): a temporary file of a dead
# pid may be another host's copy in progress (pids are per host), so only one untouched this
# long is taken for a killed copy's and removed. The per-user default folder is host-local.
SHARED_STALE_AFTER_S = 24 * 3600.0


def _default_base() -> str:
    """This user's own folder of the system's temporary folder: on this host only."""
    return os.path.join(tempfile.gettempdir(), f"crema_jax-{os.getuid()}")


def staging_dir(url: str, purpose: str) -> str:
    """The local folder standing for `url`, made when absent (the same one on every call, so an
    interrupted copy or build resumes): in $CREMA_JAX_STAGING, else in this user's folder of
    the system's temporary folder (crema_jax-UID, mode 0700: a remote cache two users read is
    copied once for each, and no one else can plant or change their copies),
    crema_jax-PURPOSE-<hash of url>. PermissionError, one line naming CREMA_JAX_STAGING, when
    it cannot be written there."""
    chosen = os.environ.get("CREMA_JAX_STAGING")
    base = chosen or _default_base()
    digest = hashlib.sha1(url.encode()).hexdigest()[:16]
    folder = os.path.join(base, f"crema_jax-{purpose}-{digest}")
    try:
        if not chosen:
            files.own_folder(base)
        os.makedirs(folder, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(f"not writable by uid {os.getuid()}")
    except PermissionError as err:
        raise PermissionError(f"{folder}: cannot hold the local copy of {url} ({err}); set "
                              "CREMA_JAX_STAGING to a folder you can write") from None
    return folder


MIRROR_THREADS = 8  # files copied at once: object stores serve each stream at a fraction of a
#                     host's bandwidth, and each small request waits a round trip
# Stores whose clients take requests from several threads at once (each its own HTTP request);
# any other (ftp://, sftp://: one shared connection) copies one file at a time.
_CONCURRENT_PROTOCOLS = {"gs", "gcs", "s3", "s3a", "az", "abfs", "abfss", "adl", "http", "https",
                         "memory"}


def _record_path(local_path: str) -> str:
    folder, name = os.path.split(local_path)
    return os.path.join(folder, f".{name}.copied")


def _state(found: os.stat_result) -> list[int]:
    """What changes when a file is edited, cut short or replaced: size, mtime, inode."""
    return [found.st_size, found.st_mtime_ns, found.st_ino]


def copied_sha256(local_path: str) -> str | None:
    """The SHA-256 of the bytes `mirror` fetched into `local_path`; None when mirror did not
    write the file there or it changed since (see the module docstring)."""
    try:
        with open(_record_path(local_path), encoding="utf-8") as f:
            record = json.load(f)
        state = _state(os.stat(local_path))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("state") != state:
        return None
    digest = record.get("sha256")
    return digest if isinstance(digest, str) else None


def forget_copy(local_path: str) -> None:
    """Makes the next `mirror` fetch `local_path` again (a copy found damaged); the file itself
    stays, for readers that have it open."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(_record_path(local_path))


def _fetch(fs, remote: str, local: str) -> None:
    """The remote file copied to `local` whole (storage.get_file_atomic: a failed transfer is
    raised as the store raised it; `mirror` names the file's URL and local path), then its
    copy record."""
    record = {}

    def note(tmp: str) -> None:
        record.update(sha256=files.sha256_of(tmp), state=_state(os.stat(tmp)))

    forget_copy(local)
    get_file_atomic(fs, remote, local, then=note)  # a rename keeps size, mtime, inode
    files.write_json_atomic(_record_path(local), record)


def mirror(url: str, local_dir: str, *, names: list[str] | None = None, resume: bool = True,
           threads: int = MIRROR_THREADS, sha256: Mapping[str, str] | None = None) -> str:
    """Copy the files directly in the remote folder `url` (or only `names`) into `local_dir`,
    up to `threads` at a time on a store whose client takes concurrent requests
    (_CONCURRENT_PROTOCOLS; any other, e.g. ftp://, sftp://, hf://, one file at a time). A file
    an earlier mirror fetched there and that is unchanged since (its copy record: the module
    docstring) is kept when `sha256` gives its name and the digest of its fetched bytes equals
    it, or else, with `resume`, when it has the remote size; any other is fetched again. Each
    file lands whole or not at all (files.write_atomic; the temporary files of a mirror that was
    killed are removed first: in the per-user default folder, those whose process is gone; in
    any other, which hosts may share, only those untouched for SHARED_STALE_AFTER_S as well);
    on the first error the copies not begun are dropped and it is raised in one line naming the
    file's URL and its local path (storage.named_error keeps its type or makes it an OSError).
    Returns local_dir."""
    from concurrent import futures

    os.makedirs(local_dir, exist_ok=True)
    # A killed mirror's temporaries; a running one's are kept (SHARED_STALE_AFTER_S).
    host_local = os.path.dirname(os.path.realpath(local_dir)) == \
        os.path.realpath(_default_base())
    files.remove_stale_temporaries(local_dir,
                                   older_than_s=0.0 if host_local else SHARED_STALE_AFTER_S)
    sha256 = dict(sha256 or {})
    with reach(url) as (fs, inner):
        def copy(name: str) -> None:
            remote, local = f"{inner.rstrip('/')}/{name}", os.path.join(local_dir, name)
            try:
                if not fs_is(fs, remote, "isfile"):
                    return
                fetched = copied_sha256(local)
                if fetched is not None and (fetched == sha256[name] if name in sha256 else
                                            resume and os.path.getsize(local) == fs.size(remote)):
                    return
                _fetch(fs, remote, local)
            except Exception as err:  # noqa: BLE001 - the store's own types too: named
                raise named_error(err, f"{join(url, name)} (copying to {local})") from err

        wanted = list(names if names is not None else listdir(url))
        protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
        if not _CONCURRENT_PROTOCOLS & set(protocols):
            threads = 1
        pool = futures.ThreadPoolExecutor(max(1, min(threads, len(wanted))))
        try:
            for done in [pool.submit(copy, name) for name in wanted]:
                done.result()
        except BaseException as err:
            # The first failure ends the copy: the files not begun are dropped, the ones running
            # finish (each whole or not at all: write_atomic) before it is raised. On Ctrl-C the
            # function returns at once; the running copies still finish before the process
            # exits.
            pool.shutdown(wait=not isinstance(err, KeyboardInterrupt), cancel_futures=True)
            raise
        pool.shutdown()
        return local_dir
