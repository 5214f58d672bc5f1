"""One ECG, one record: duplicate rows of an index found by the content of their files.

A manifest may list one file twice (two rows, the same path), and a dataset may hold
byte-identical copies of a recording under two ids. Left as two records, one ECG can train a
head in one fold and test it in another. `content_key` names a record by what it holds:

- a WFDB record (path without extension): the SHA-256 of its signal files (`.dat`, `.mat`);
  the header is left out, since a copy's header names the copy's own record;
- a file read whole (a clinical export): the SHA-256 of the file;
- a row of an array file ("FILE#ROW") or anything else: its resolved path.

Hashing every byte of a large dataset is slow, so files are first told apart by their size and
the hash of their first 4 KiB (a few hundred samples of 12 leads); only records whose
fingerprints collide are hashed whole.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from collections import defaultdict

from crema_jax.data.reading import safe_files

SIGNAL_SUFFIXES = (".dat", ".mat")
_PREFIX = 4 * 1024
_CHUNK = 1 << 20


@dataclasses.dataclass
class Duplicates:
    """The records kept (the first row of each ECG, in index order) and what was merged."""
    kept: list
    groups: list[list[str]]     # record ids of each ECG listed more than once (kept id first)

    @property
    def merged(self) -> int:
        """Rows left out: every row of an ECG after its first."""
        return sum(len(g) - 1 for g in self.groups)


def record_files(path) -> list[str]:
    """The files whose bytes are the record at `path`'s signal ([] for a row of an array
    file)."""
    path = str(path)
    if os.path.isfile(path):
        return [path]
    return [path + s for s in SIGNAL_SUFFIXES if os.path.isfile(path + s)]


def _digest(files, *, limit: int | None) -> str:
    h = hashlib.sha256()
    for name in files:
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


def content_keys(infos) -> list[str]:
    """One key per record; two records share a key when their files hold the same bytes (or,
    without files, when they name the same path)."""
    files = [record_files(info.path) for info in infos]
    keys = [f"sha256-prefix:{_digest(f, limit=_PREFIX)}" if f
            else f"path:{os.path.realpath(info.path)}" for info, f in zip(infos, files)]
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
    first, groups = {}, defaultdict(list)
    for info, key in zip(infos, content_keys(infos)):
        if key in first:
            groups[key].append(info.record_id)
        else:
            first[key] = info
    kept_ids = {id(info) for info in first.values()}
    return Duplicates([info for info in infos if id(info) in kept_ids],
                      [[first[key].record_id] + ids for key, ids in groups.items()])
