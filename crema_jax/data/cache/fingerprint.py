"""A cache shard's fingerprint: what `prepare` records of each shard file right after writing it,
so that a reader (source.py) and a rerun of prepare (sidecars.load_sidecar) tell a shard swapped
with another, copied in from another cache or cut short from the one written there, without
hashing the whole file on every read.

Kept in the shard's .json sidecar and in its row of index.json's "shards":

    size         the file's length in bytes
    sha256       the SHA-256 of all its bytes, computed once while the new file is still in the
                 page cache (an audit's or a copy's check, e.g. with sha256sum; never
                 recomputed on read: shards are tens to hundreds of MB)
    edge_sha256  the SHA-256 of its first and last EDGE_BYTES (the whole file when it is shorter
                 than 2 * EDGE_BYTES)

Checked on read and on a rerun: the size, then edge_sha256, so at most 2 * EDGE_BYTES (512 KiB)
are read per shard, whatever its size. Why 256 KiB a side: an ArrayRecord file ends with its
footer (the offsets of its records) in a last 64 KiB block padded with zeros, the same bytes in
two shards whose records have the same sizes (measured: the last 64 KiB of two 16-record shards
of the CinC sample are equal), so the window must reach past it into the records. A record is
one Riegeli chunk of about 60 kB (12 leads, 10 s at 250 Hz, int16): the first 256 KiB hold the
file header and the shard's first 4 records, the last 256 KiB its last 3 and the footer. Two
different shards, or a shard of another cache (other records, the same ones shifted by one,
other preprocessing, another dtype), differ there even when their sizes and record counts are
equal. A change inside a shard that keeps both ends and the size (a bit flip) is what Riegeli's
chunk hashes catch as each record is read. 1 MiB a side would read 2 GiB at each open of a
cache of 1,000 shards, for the same swaps.

A cache written before fingerprints existed has no such fields: it is read as before, unchecked
(rebuilding a cache takes hours, and its records are what they always were); a fresh `prepare`
gives it the check.
"""
from __future__ import annotations

import hashlib
import os
import re
from typing import Mapping

from crema_jax.runtime import files, storage

EDGE_BYTES = 256 * 1024
FIELDS = ("size", "sha256", "edge_sha256")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def of_file(path: str) -> dict:
    """{"size", "sha256", "edge_sha256"} of the local file at `path` (read once, then its ends)."""
    size = os.path.getsize(path)
    return {"size": size, "sha256": files.sha256_of(path), "edge_sha256": edge_sha256(path, size)}


def edge_sha256(path: str, size: int) -> str:
    """The SHA-256 of the first and last EDGE_BYTES of the file (local or URL) of `size` bytes."""
    head = storage.read_range(path, 0, min(size, EDGE_BYTES))
    start = max(EDGE_BYTES, size - EDGE_BYTES)
    tail = storage.read_range(path, start, size - start) if size > start else b""
    return hashlib.sha256(head + tail).hexdigest()


def fields_problem(row: Mapping) -> str | None:
    """What is wrong with the fingerprint fields of a sidecar or an index row (None: right, or
    none there: a cache written before them)."""
    present = [k for k in FIELDS if k in row]
    if not present:
        return None
    if len(present) < len(FIELDS):
        return f"it has {present} of the shard fingerprint {list(FIELDS)}"
    if type(row["size"]) is not int or row["size"] < 0:  # noqa: E721 - bool is no size
        return f"its size is {row['size']!r}, expected a byte count"
    for key in ("sha256", "edge_sha256"):
        if not isinstance(row[key], str) or not _HEX64.fullmatch(row[key]):
            return f"its {key} is {row[key]!r}, expected 64 hex digits"
    return None


def problem(path: str, recorded: Mapping) -> str | None:
    """How the shard file at `path` (local or URL) differs from the fingerprint `recorded` when
    prepare wrote it (words to follow "PATH: "); None when it matches or nothing was
    recorded (a cache written before fingerprints)."""
    if "size" not in recorded:
        return None
    size = storage.file_size(path)
    if size != recorded["size"]:
        return (f"is {size} bytes, not the {recorded['size']} prepare wrote (truncated, "
                "extended or replaced)")
    found = edge_sha256(path, size)
    if found != recorded["edge_sha256"]:
        return (f"does not hold the bytes prepare wrote there: the SHA-256 of its first and last "
                f"{EDGE_BYTES // 1024} KiB is {found[:12]}..., not {recorded['edge_sha256'][:12]}"
                "... (swapped with another shard, replaced by one of another cache, or damaged)")
    return None
