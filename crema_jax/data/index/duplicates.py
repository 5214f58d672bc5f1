"""One ECG, one record: duplicate rows of an index found by the content of their files.

A manifest may list one file twice (two rows, the same path), and a dataset may hold
byte-identical copies of a recording under two ids. Left as two records, one ECG can train a
head in one fold and test it in another. `content_key` names a record by what it holds:

- a WFDB record (path without extension): the SHA-256 of its signal files (`.dat`, `.mat`);
  the header is left out, since a copy's header names the copy's own record;
- a file read whole (a clinical export): the SHA-256 of the file;
- a row of an array file ("FILE#ROW") or anything else: its resolved path;
- a record of a prepared cache: the key `prepare` stored for it (`content_key`, the same
  SHA-256 of its source files when they were read), so that the source need not be there.

A record under a URL (gs://, s3://, memory://) is keyed two ways. `content_keys`, which indexes
a raw root for evaluation, gives it its URL ("path:URL": one URL listed twice is one ECG, a
byte-identical copy under another name is not found), so indexing asks no store about each
record. `content_key`, which `prepare` stores with each cached record, hashes its files (the
local copy `prepare` read them from: fetched once), so a cache built from a bucket holds the
keys of the local records and an evaluation on that cache finds their duplicates.

Hashing every byte of a large dataset is slow, so files are first told apart by their size and
the hash of their first 4 KiB (a few hundred samples of 12 leads); only records whose
fingerprints collide are hashed whole.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from collections import defaultdict

from crema_jax.data.reading import safe_files, wfdb_header
from crema_jax.runtime import storage

_PREFIX = 4 * 1024
_CHUNK = 1 << 20


@dataclasses.dataclass
class Duplicates:
    """The records kept (the first row of each ECG, in index order) and what was merged."""
    kept: list
    groups: list[list[str]]     # record ids of each ECG listed more than once (kept id first)
    # Merged rows whose labels differ from their kept row's (the kept row's are used).
    conflicts: list[str] = dataclasses.field(default_factory=list)

    @property
    def merged(self) -> int:
        """Rows left out: every row of an ECG after its first."""
        return sum(len(g) - 1 for g in self.groups)


def record_files(path) -> list[str]:
    """The files whose bytes are the record at `path`'s signal ([] for a row of an array
    file); a URL's are looked up through runtime/storage.py."""
    path = str(path)
    if storage.isfile(path):
        return [path]
    return [path + s for s in wfdb_header.SIGNAL_SUFFIXES if storage.isfile(path + s)]


def file_stats(path) -> list:
    """[size, modification time in ns] (None when it cannot be seen) of each file the record at
    `path` is read from (a WFDB header and signal files, a file read whole, the array file of
    "FILE#ROW"): a record rewritten since is told apart from the one read before. A URL's
    files are not looked at ([None]): indexing asks no store about each record."""
    file = str(path)
    if storage.is_remote(file):
        return [None]
    base, sep, row = file.rpartition("#")
    file = base if sep and row.isdigit() and os.path.isfile(base) else file
    stats = []
    for name in [file + ".hea", *record_files(file)]:
        try:
            found = os.stat(name)
            stats.append([found.st_size, found.st_mtime_ns])
        except (OSError, ValueError):
            stats.append(None)
    return stats


def _digest(files, *, limit: int | None) -> str:
    """SHA-256 of each file's size and its first `limit` bytes (None: all); a local file opened
    as a regular file only, a URL read a range at a time through runtime/storage.py (the same
    bytes give the same digest, wherever they are)."""
    h = hashlib.sha256()
    for name in files:
        if storage.is_remote(name):
            size = storage.file_size(name)
            h.update(f"{size}:".encode())
            end = size if limit is None else min(size, limit)
            for offset in range(0, end, _CHUNK):
                h.update(storage.read_range(name, offset, min(_CHUNK, end - offset)))
            continue
        with safe_files.open_regular(name) as f:
            size = os.fstat(f.fileno()).st_size
            h.update(f"{size}:".encode())
            left = size if limit is None else min(size, limit)
            while left > 0:
                chunk = f.read(min(_CHUNK, left))
                if not chunk:
                    break
                h.update(chunk)
                left -= len(chunk)
    return h.hexdigest()


def content_key(path, *, copy_of=None) -> str:
    """The whole-file key of the record at `path` (what content_keys gives a local record whose
    fingerprint is shared), computed now: `prepare` stores it with each cached record. A URL's
    files are read through runtime/storage.py: the same bytes give the same key anywhere.
    `copy_of`: the record `path` is a local copy of (a URL's record staged to be read,
    read.read_keyed): its files are hashed here, and a record without files is keyed by
    `copy_of`."""
    files = record_files(path)
    return f"sha256:{_digest(files, limit=None)}" if files else _path_key(copy_of or path)


def _path_key(path) -> str:
    """The key of a record without files of its own: its resolved path (a URL as spelled)."""
    path = str(path)
    return f"path:{path if storage.is_remote(path) else os.path.realpath(path)}"


def content_keys(infos) -> list[str]:
    """One key per record; two records share a key when their files hold the same bytes (or,
    without files, when they name the same path). A record under a URL without a stored key is
    keyed by its URL: no store is asked about it (one round trip or more per record)."""
    stored = [(info.meta or {}).get("content_key") for info in infos]
    files = [[] if key or storage.is_remote(info.path) else record_files(info.path)
             for info, key in zip(infos, stored)]
    keys = [key or (f"sha256-prefix:{_digest(f, limit=_PREFIX)}" if f else _path_key(info.path))
            for info, f, key in zip(infos, files, stored)]
    rows = defaultdict(list)
    for i, key in enumerate(keys):
        rows[key].append(i)
    for key, members in rows.items():
        if len(members) > 1 and key.startswith("sha256-prefix:"):
            for i in members:  # a shared fingerprint: the whole files decide
                keys[i] = f"sha256:{_digest(files[i], limit=None)}"
    return keys


def find(infos) -> Duplicates:
    """The index's records with every ECG once (its first row) and the groups merged."""
    first, groups, conflicts = {}, defaultdict(list), []
    for info, key in zip(infos, content_keys(infos)):
        if key in first:
            groups[key].append(info.record_id)
            kept = first[key]
            if sorted(info.labels) != sorted(kept.labels):
                conflicts.append(info.record_id)
        else:
            first[key] = info
    kept_ids = {id(info) for info in first.values()}
    return Duplicates([info for info in infos if id(info) in kept_ids],
                      [[first[key].record_id] + ids for key, ids in groups.items()], conflicts)
