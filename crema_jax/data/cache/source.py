"""Reading a prepared cache: its index (also as a layout's DatasetIndex) and CacheSource, the
Grain source over its records (file format: record_format.py), which checks that the cache was
built as the data path expects (settings_check.py).

A damaged cache is named, never trained on. index.json that does not parse or lacks its keys,
a shard listed but missing (or a FIFO, device, ...), a shard holding fewer records than its
index says (a truncated file), and a record that fails its checksum (Riegeli's chunk hashes:
a bit flip) or is not a crema_jax record raise DamagedCacheError, one line naming the file and
what to do; so does a shard that is not the file prepare wrote (its size, or the SHA-256 of
its first and last 256 KiB, differs from the fingerprint index.json keeps: fingerprint.py), as
when two shards were swapped or one was copied in from another cache, whose message is the
`prepare` rerun that rewrites it (a bit flip that changes the fingerprint stays a damaged
record, named and skipped alone). With data.skip_damaged_cache_records, the records of a
damaged shard and the records that fail to read are skipped instead, counted as
`damaged_cache_record` like any bad record (pipeline/skips.py); a damaged index.json is never
skipped: nothing says what it held. The messages: damage.py; index.json's checks:
index_file.py.

A remote cache (gs://, s3://) is read from a local copy (`local_cache_dir`). A damaged shard
of it is named as what it is: the remote shard, by its URL, when the bytes fetched from it are
not the ones index.json records (its SHA-256); else the local copy, damaged since it was
fetched, which is then forgotten (runtime/staging.py), so that the next run fetches it again.
"""
from __future__ import annotations

import functools
import os
import sys
from typing import Any, Mapping, Sequence

import numpy as np
from array_record.python.array_record_module import ArrayRecordReader

from crema_jax.data.cache import fingerprint
from crema_jax.data.cache.damage import (DamagedCacheError, damaged_copy, damaged_shard,
                                         replaced_shard)
from crema_jax.data.cache.index_file import parse_index, rebuild_index
from crema_jax.data.cache.packed import PackedLabels, PackedStrings
from crema_jax.data.cache.record_format import INDEX_FILE, decode_quantised
from crema_jax.data.cache.settings_check import UNCHECKED, check_settings
from crema_jax.data.index.dataset_index import DatasetIndex, RecordInfo
from crema_jax.data.reading import safe_files
from crema_jax.data.reading.ecg import RecordError
from crema_jax.runtime import files, staging, storage

DAMAGED = "damaged_cache_record"   # the skip reason


def local_cache_dir(cache_dir: str) -> str:
    """`cache_dir` itself, or for a URL (gs://, s3://; runtime/storage.py) a local copy of it:
    ArrayRecord's reader is C++ and opens local files only, and Grain reads records in random
    order, which local disk serves far better than an object store. The copy goes to
    staging.staging_dir (CREMA_JAX_STAGING or the user's own folder in the temporary folder;
    one per URL, so a later run reuses it). index.json is always fetched, and written there
    last, once every shard it lists is; a shard copied by an earlier run is kept when it is
    unchanged since and its SHA-256 is the one index.json records (runtime/staging.py; a cache
    written before fingerprints: when it has the remote size and index.json is unchanged), else
    fetched again."""
    if not storage.is_remote(cache_dir):
        return cache_dir
    local = staging.staging_dir(cache_dir, "cache")
    remote_index = storage.join(cache_dir, INDEX_FILE)
    if not storage.isfile(remote_index):
        raise FileNotFoundError(f"{remote_index}: no cache index; build the cache with "
                                f"`crema-jax prepare --out={cache_dir}`")
    data = storage.read_bytes(remote_index)
    index = parse_index(data, remote_index)
    old = os.path.join(local, INDEX_FILE)
    unchanged = os.path.isfile(old) and safe_files.read_bytes(old) == data
    sys.stderr.write(f"cache: reading {cache_dir} from a local copy in {local}\n")
    staging.mirror(cache_dir, local, names=[s["file"] for s in index["shards"]],
                   resume=unchanged,
                   sha256={s["file"]: s["sha256"] for s in index["shards"] if "sha256" in s})
    if not unchanged:
        files.write_bytes_atomic(old, data)
    return local


def load_index(cache_dir: str) -> dict:
    """index.json, checked to hold every key a reader uses (DamagedCacheError otherwise)."""
    cache_dir = local_cache_dir(cache_dir)
    path = os.path.join(cache_dir, INDEX_FILE)
    if os.path.exists(cache_dir) and not os.path.isdir(cache_dir):
        raise NotADirectoryError(f"{cache_dir}: a file, not a cache folder (the --out folder of "
                                 "`crema-jax prepare`)")
    if not os.path.lexists(path):
        raise FileNotFoundError(f"{path}: no cache index; build the cache with `crema-jax prepare "
                                f"--out={cache_dir}` (an interrupted run writes it only at the "
                                "end)")
    try:
        data = safe_files.read_bytes(path)
    except OSError as err:
        raise rebuild_index(path, f"does not read ({err})") from None
    return parse_index(data, path)


_NO_PATIENT_IDS = ("wfdb_folder",)   # no patient id in its index: an older cache is not noted
_NOTED: set[str] = set()             # the caches whose format /1 note this process printed


def cache_index(cache_dir: str) -> DatasetIndex:
    """A prepared cache's records as a layout index; each info's meta is its row's `meta`
    (record_format.ROW_META, as the layout's index had them), "content_key" and "cache_row",
    its row (what CacheSource.subset takes). A cache whose rows have no meta (format /1) reads
    with a printed line, once per process and cache: each of its records is then its own
    patient (protocols.patient_keys)."""
    index = load_index(cache_dir)
    infos = [RecordInfo(record_id=r["record_id"], path=r["path"], labels=tuple(r["labels"]),
                        split=r["split"], source=r["source"],
                        meta={**r.get("meta", {}), "cache_row": row,
                              **({"content_key": r["content_key"]} if r.get("content_key")
                                 else {})})
             for row, r in enumerate(index["records"])]
    settings = index["settings"]
    if settings.get("layout") not in _NO_PATIENT_IDS and cache_dir not in _NOTED \
            and any("meta" not in r for r in index["records"]):
        _NOTED.add(cache_dir)
        print(f"note: {cache_dir} was prepared before caches kept patient ids (format "
              f"{settings.get('format', '?')}): each of its records is taken as its own patient "
              "(patients-across-splits check, re-splits, folds, bootstrap); prepare it again "
              "into a new --out to keep them")
    return DatasetIndex(infos, list(index["label_names"]),
                        layout=index["settings"].get("layout", ""),
                        root=index["settings"].get("root", ""))


class CacheSource:
    """Grain random-access source over a prepared cache, optionally restricted to one split.

    Reads with one ArrayRecordReader per shard, opened lazily in each process (readers do not
    pickle): ~30 us per 60 kB record, against ~75 us through grain.sources.ArrayRecordDataSource
    (its small file buffer and per-call bookkeeping; measured on the bench cache). A record is
    read in `load`, where the pipeline names and counts bad records (transforms.ReadChunk);
    `__getitem__` only says which record. Damage: the module docstring. `expect_*`: the rate,
    preprocessing and limb-lead derivation the data path reads (settings_check.py; UNCHECKED:
    any).
    """

    def __init__(self, cache_dir: str, *, split: str = "", expect_target_fs: Any = UNCHECKED,
                 expect_preprocess: Any = UNCHECKED, expect_derive_limb_leads: Any = UNCHECKED,
                 skip_damaged_records: bool = False):
        self.cache_dir = os.path.abspath(local_cache_dir(cache_dir))
        index = load_index(self.cache_dir)
        check_settings(index, os.path.join(self.cache_dir, INDEX_FILE),
                       target_fs=expect_target_fs, preprocess=expect_preprocess,
                       derive_limb_leads=expect_derive_limb_leads)
        self.split = split
        self.skip_damaged = bool(skip_damaged_records)
        self.label_names = list(index["label_names"])
        self.settings = index["settings"]   # its format decides how a damaged shard is rebuilt
        self.shard_files = [os.path.join(self.cache_dir, s["file"]) for s in index["shards"]]
        shard_of = {s["file"]: i for i, s in enumerate(index["shards"])}
        records = [r for r in index["records"] if not split or r["split"] == split]
        self.shards = np.asarray([shard_of[r["shard"]] for r in records], np.int64)
        self.positions = np.asarray([r["position"] for r in records], np.int64)
        # Packed (packed.py): a source is held by the main process and every Grain worker.
        self.record_ids = PackedStrings(r["record_id"] for r in records)
        self.paths = PackedStrings(r["path"] for r in records)
        self.record_labels = PackedLabels((r["labels"] for r in records), self.label_names)
        self.record_rows = np.arange(len(records), dtype=np.int64)
        self._readers: dict[int, Any] = {}
        self.remote = cache_dir if storage.is_remote(cache_dir) else None  # copied from there
        self.shard_sha256 = [s.get("sha256") for s in index["shards"]]
        self.shard_damage = self._check_shards(index, self.remote or self.cache_dir)

    def _check_shards(self, index: Mapping, out: str) -> dict[int, str]:
        """{shard: what is wrong} for the shards this source reads that are missing, not regular
        files, hold fewer records than the index says or than its records' positions need (a
        truncated shard), or are not the files prepare wrote (their size, the digest of their
        ends: fingerprint.py; a shard swapped with another or copied in from another cache, not
        one whose record fails its hash: `_a_record_fails`);
        raises on the first unless skip_damaged. `out`: the cache as prepare's --out named it."""
        shards, damage = index["shards"], {}
        needed = np.full(len(shards), -1, np.int64)
        np.maximum.at(needed, self.shards, self.positions)
        for shard in np.flatnonzero(needed >= 0):
            path, row = self.shard_files[shard], shards[shard]
            problem = self._count_problem(int(shard), int(row["num_records"]), int(needed[shard]))
            advice = functools.partial(damaged_shard, settings=self.settings)
            if problem is None:
                problem = fingerprint.problem(path, row)
                if problem is None or self._a_record_fails(int(shard), int(row["num_records"])):
                    continue   # (damage inside a record: its read names it, `_read`)
                advice = functools.partial(replaced_shard, out=out, settings=index["settings"])
            message = self._advice(int(shard), problem, advice)
            if not self.skip_damaged:
                raise DamagedCacheError(message)
            damage[int(shard)] = f"{path}: {problem}"
        self._readers.clear()  # opened here to check; each process opens its own
        return damage

    def _advice(self, shard: int, problem: str, advice) -> str:
        """The message of shard `shard`'s `problem`: advice(path, problem) for a local cache's
        shard or a remote shard that is missing or whose bytes differ from what index.json
        records (named by its URL); for a damaged local copy of a remote shard, that it is one,
        and the copy is forgotten, so that the next run fetches it again (runtime/staging.py)."""
        path = self.shard_files[shard]
        if self.remote is None:
            return advice(path, problem)
        url = storage.join(self.remote, os.path.basename(path))
        expected, fetched = self.shard_sha256[shard], staging.copied_sha256(path)
        if not os.path.lexists(path):   # every shard the remote holds is copied
            return advice(url, problem)
        if expected is not None and fetched not in (None, expected):
            return advice(url, f"{problem} in its local copy {path}, whose bytes are the "
                               f"remote's: their SHA-256 is {fetched[:12]}..., not the "
                               f"{expected[:12]}... index.json records")
        staging.forget_copy(path)
        return damaged_copy(path, url, problem, settings=self.settings,
                            checked=expected is not None and fetched == expected)

    def _count_problem(self, shard: int, listed: int, needed: int) -> str | None:
        """What makes shard `shard` unreadable as the index lists it (None: it opens and holds
        the `listed` records, past position `needed`)."""
        path = self.shard_files[shard]
        kind = files.special_kind(path, follow_links=True)
        if kind is not None:
            return f"is {kind}, not a shard"
        if not os.path.isfile(path):
            return "listed in the index, missing"
        try:
            held = self._reader(shard).num_records()
        except Exception as err:  # noqa: BLE001 - Riegeli raises RuntimeError, OSError
            return f"does not open ({err})"
        if held != listed or needed >= held:
            return (f"holds {held} records, the index lists {listed} (records up to position "
                    f"{needed}): truncated or replaced")
        return None

    def _a_record_fails(self, shard: int, count: int) -> bool:
        """Whether a record of the shard fails its Riegeli chunk hash. For a shard whose
        fingerprint differs (read whole only then): damage inside records (a bit flip), which
        each record's read names and skips alone; a shard whose every record reads is another
        whole shard (swapped, copied in from another cache), none of whose records is right."""
        reader = self._reader(shard)
        for start in range(0, count, 64):
            try:
                reader.read(list(range(start, min(start + 64, count))))
            except Exception:  # noqa: BLE001 - Riegeli raises RuntimeError
                return True
        return False

    def __getstate__(self):
        return {**self.__dict__, "_readers": {}}

    def subset(self, rows: Sequence[int], label_names: Sequence[str]) -> "CacheSource":
        """The records at `rows` (positions in this source, in that order), with multi-hot
        labels over `label_names` (e.g. the classes an evaluation kept)."""
        out = CacheSource.__new__(CacheSource)
        out.__dict__.update(self.__getstate__())
        rows = np.asarray(rows, np.int64)
        out.shards, out.positions = self.shards[rows], self.positions[rows]
        out.record_ids, out.paths = self.record_ids.take(rows), self.paths.take(rows)
        out.record_rows = np.arange(len(rows), dtype=np.int64)
        out.label_names = list(label_names)
        out.record_labels = self.record_labels.take(rows, out.label_names)
        return out

    @property
    def labels(self) -> np.ndarray:
        """float32 (records, len(label_names)) multi-hot labels, built on each call."""
        return self.record_labels.dense()

    def _reader(self, shard: int):
        if shard not in self._readers:
            self._readers[shard] = ArrayRecordReader(self.shard_files[shard],
                                                     "readahead_buffer_size:0")
        return self._readers[shard]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        return {"index": np.int64(index), "path": self.paths[index],
                "labels": self.record_labels.multi_hot(index)}

    def __repr__(self) -> str:
        return f"CacheSource(dir={self.cache_dir!r}, split={self.split!r}, records={len(self)})"

    def record_bytes(self, index: int) -> bytes:
        """Record `index`'s stored bytes, checked (see `_read`)."""
        return self._read(index)[0]

    def load(self, element: Mapping) -> dict:
        return self._read(int(element["index"]))[1]

    def _read(self, index: int) -> tuple[bytes, dict]:
        """(stored bytes, decoded record) of record `index`, checked by Riegeli's hashes and the
        record header; DamagedCacheError (or, skipping, RecordError damaged_cache_record)
        naming the shard when either fails."""
        shard, position = int(self.shards[index]), int(self.positions[index])
        where = f"{self.shard_files[shard]}#{position}"
        if shard in self.shard_damage:
            raise RecordError(where, DAMAGED, f"{self.shard_damage[shard]} (record "
                              f"{self.paths[index]})")
        try:
            data = self._reader(shard).read([position])[0]
            return data, decode_quantised(data)
        except Exception as err:  # noqa: BLE001 - Riegeli raises RuntimeError; decode ValueError
            problem = f"record {position} ({self.paths[index]}) does not read: {err}"
            message = self._advice(shard, problem,
                                   functools.partial(damaged_shard, settings=self.settings))
            if not self.skip_damaged:
                raise DamagedCacheError(message) from None
            raise RecordError(where, DAMAGED, f"{self.shard_files[shard]}: {problem}") from None
