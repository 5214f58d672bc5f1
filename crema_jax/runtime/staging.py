"""Local copies of remote folders: a cache on gs:// or s3:// is read from one (ArrayRecord's
reader opens local files only; data/cache/source.py). `staging_dir` is where a URL's copy lives,
`mirror` copies a remote folder's files there.
"""
from __future__ import annotations

import hashlib
import os
import tempfile

from crema_jax.runtime import files
from crema_jax.runtime.storage import _is, _reach, listdir


def staging_dir(url: str, purpose: str) -> str:
    """A local folder standing for `url` (the same one on every call, so an interrupted copy or
    build resumes): $CREMA_JAX_STAGING, else the system's temporary folder, then
    crema_jax-PURPOSE-<hash of url>."""
    base = os.environ.get("CREMA_JAX_STAGING") or tempfile.gettempdir()
    digest = hashlib.sha1(url.encode()).hexdigest()[:16]
    return os.path.join(base, f"crema_jax-{purpose}-{digest}")


MIRROR_THREADS = 8  # files copied at once: object stores serve each stream at a fraction of a
#                     host's bandwidth, and each small request waits a round trip
# Stores whose clients take requests from several threads at once (each its own HTTP request);
# any other (ftp://, sftp://: one shared connection) copies one file at a time.
_CONCURRENT_PROTOCOLS = {"gs", "gcs", "s3", "s3a", "az", "abfs", "abfss", "adl", "http", "https",
                         "memory"}


def mirror(url: str, local_dir: str, *, names: list[str] | None = None,
           resume: bool = True, threads: int = MIRROR_THREADS) -> str:
    """Copy the files directly in the remote folder `url` (or only `names`) into `local_dir`,
    up to `threads` at a time on a store whose client takes concurrent requests
    (_CONCURRENT_PROTOCOLS; any other, e.g. ftp://, sftp://, hf://, one file at a time); with
    `resume`, a file already there with the remote size is kept (files that never change once
    written: a resumed copy). Each file lands whole or not at all
    (files.write_atomic); on the first error the copies not begun are dropped and it is raised,
    naming `url`. Returns local_dir."""
    from concurrent import futures

    os.makedirs(local_dir, exist_ok=True)
    with _reach(url) as (fs, inner):
        def copy(name: str) -> None:
            remote = f"{inner.rstrip('/')}/{name}"
            if not _is(fs, remote, "isfile"):
                return
            local = os.path.join(local_dir, name)
            if resume and os.path.isfile(local) and os.path.getsize(local) == fs.size(remote):
                return
            files.write_atomic(local, lambda tmp: fs.get_file(remote, tmp))

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
