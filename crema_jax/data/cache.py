"""The preprocessed ECG cache: ArrayRecord shards + a JSON index, and its Grain source.

Layout of a cache folder (written by `crema-jax prepare`, see prepare.py):

    settings.json                      what the cache was built from (checked on restart and read)
    shard-00000-of-00007.arrayrecord   one serialised record per entry (format below)
    shard-00000-of-00007.json          sidecar: metadata of the shard's records and its skips
    index.json                         all sidecars merged, plus label_names and the settings
    summary.json                       records written, skipped counts by reason with paths

Record format (no pickle; decoding is one struct.unpack and two np.frombuffer calls):

    header  "<4sBBHIH2x" magic b"CRMA", version 1, dtype code, num_leads L, length T,
                        lead_present bitmask (bit l = row l)
    scales  float32 (L,)  per-lead quantisation step (dtype int16) or 1.0 (dtype float16)
    data    (L, T) int16 or float16, C order

Stored dtype: int16 with a per-lead scale = max|x_l| / 32767 (DEFAULT). Why: after the global
normalisation the signal is ~N(0, 1) with QRS peaks of ~10 (up to ~33 on the CinC sample). int16
spends its 16 bits uniformly over each lead's range: absolute error <= max|x_l| / 65534, the same
for small P waves as for R peaks, and the float32 scale round-trips exactly. float16 (11-bit
mantissa) has ~2^-11 relative error, i.e. up to ~1e-2 absolute on tall R peaks, and would overflow
above 65504 if a cache were built without normalisation (raw microvolts). Measured on the 50
records of the shared CinC sample (stmem preprocessing): int16 max abs error 5.0e-4, rms 5.5e-5;
float16 max abs error 1.5e-2, rms 2.1e-4 (tests/data/test_cache.py checks int16 wins). Both are
2 bytes a sample and decode equally fast (one np.frombuffer + astype).
"""
from __future__ import annotations

import json
import os
import struct
from typing import Any, Mapping, Sequence

import numpy as np

from crema_jax.runtime import files

from crema_jax.data.sources import multi_hot

MAGIC = b"CRMA"
VERSION = 1
_HEADER = struct.Struct("<4sBBHIH2x")  # 16 bytes: the arrays after it stay aligned.
DTYPES = {1: np.dtype("<i2"), 2: np.dtype("<f2")}
DTYPE_CODES = {"int16": 1, "float16": 2}
INDEX_FILE = "index.json"
SETTINGS_FILE = "settings.json"
SUMMARY_FILE = "summary.json"
# One record per chunk: Grain reads records in random order, so group_size 1 avoids decoding a
# whole group for each access; uncompressed because every epoch pays the decompression again
# (measured: ~3x faster random reads of 60 kB records than the default compressed groups).
WRITER_OPTIONS = "group_size:1,uncompressed"


def encode_record(signal: np.ndarray, lead_present: np.ndarray, dtype: str = "int16") -> bytes:
    """Serialise a preprocessed ECG (L, T) float32 + lead_present (L,) into record bytes."""
    signal = np.asarray(signal, dtype=np.float32)
    num_leads, length = signal.shape
    if dtype == "int16":
        peak = np.abs(signal).max(axis=1)
        scales = np.where(peak > 0, peak / 32767.0, 1.0).astype(np.float32)
        # float64 division: the rounding to the nearest step is then exact.
        data = np.clip(np.rint(signal / scales[:, None].astype(np.float64)), -32767,
                       32767).astype("<i2")
    elif dtype == "float16":
        scales = np.ones(num_leads, np.float32)
        data = signal.astype("<f2")
    else:
        raise ValueError(f"cache dtype: expected one of {sorted(DTYPE_CODES)}, got {dtype!r}")
    bits = int(np.dot(np.asarray(lead_present, bool).astype(np.int64), 1 << np.arange(num_leads)))
    header = _HEADER.pack(MAGIC, VERSION, DTYPE_CODES[dtype], num_leads, length, bits)
    return header + scales.astype("<f4").tobytes() + data.tobytes()


def decode_quantised(data: bytes) -> dict:
    """Record bytes -> {"signal": int16/float16 (L, T) view of `data`, "scale": float32 (L,) or
    None, "lead_present": bool (L,)}; the value is signal * scale[:, None]. No copy: the
    pipeline scales only the crop it keeps, straight into the batch."""
    magic, version, code, num_leads, length, bits = _HEADER.unpack_from(data, 0)
    if magic != MAGIC or version != VERSION or code not in DTYPES:
        raise ValueError(f"not a crema_jax cache record (magic={magic!r}, version={version}, "
                         f"dtype code={code}); expected {MAGIC!r} version {VERSION}")
    offset = _HEADER.size
    scales = np.frombuffer(data, "<f4", num_leads, offset)
    values = np.frombuffer(data, DTYPES[code], num_leads * length, offset + 4 * num_leads)
    lead_present = ((bits >> np.arange(num_leads)) & 1).astype(bool)
    return {"signal": values.reshape(num_leads, length), "scale": scales if code == 1 else None,
            "lead_present": lead_present}


def decode_record(data: bytes) -> dict:
    """Record bytes -> {"signal": float32 (L, T), "lead_present": bool (L,)}."""
    out = decode_quantised(data)
    signal = out["signal"].astype(np.float32)
    if out["scale"] is not None:
        signal *= out["scale"][:, None]
    return {"signal": signal, "lead_present": out["lead_present"]}


def shard_name(shard: int, num_shards: int) -> str:
    return f"shard-{shard:05d}-of-{num_shards:05d}"


def write_json_atomic(path: str, obj: Any) -> None:
    """A unique temporary file, then a rename (crema_jax/files.py): never half-written."""
    files.write_json_atomic(path, obj)


def write_arrayrecord_atomic(path: str, payloads: Sequence[bytes]) -> None:
    from array_record.python.array_record_module import ArrayRecordWriter

    def write(tmp):
        writer = ArrayRecordWriter(tmp, WRITER_OPTIONS)
        for payload in payloads:
            writer.write(payload)
        writer.close()
    files.write_atomic(path, write)


def _require_local(cache_dir: str) -> None:
    if "://" in cache_dir:
        raise ValueError(f"data.cache_dir={cache_dir}: the cache is read from a local folder; copy "
                         "it to each host's disk first (tpu_scripts/launch_pretrain.sh does this "
                         "with CACHE_GCS=gs://...)")


def load_index(cache_dir: str) -> dict:
    _require_local(cache_dir)
    path = os.path.join(cache_dir, INDEX_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no cache index; build the cache with `crema-jax prepare "
                                f"--out={cache_dir}` (an interrupted run writes it only at the end)")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def check_settings(index: Mapping, path: str, *, target_fs: float | None = None,
                   preprocess: Any = "unchecked", derive_limb_leads: bool | None = None) -> None:
    """Raise if the cache was built at another rate or with other preprocessing than expected."""
    settings = index["settings"]
    if derive_limb_leads is not None and bool(settings["derive_limb_leads"]) != derive_limb_leads:
        raise ValueError(f"{path}: cache built with derive_limb_leads="
                         f"{settings['derive_limb_leads']} but data.derive_limb_leads="
                         f"{derive_limb_leads}; rebuild it with `crema-jax prepare`")
    if target_fs is not None and float(settings["target_fs"]) != float(target_fs):
        raise ValueError(f"{path}: cache built at target_fs={settings['target_fs']} but "
                         f"data.target_fs={target_fs}; rebuild it with `crema-jax prepare`")
    if preprocess != "unchecked" and settings["preprocess"] != preprocess:
        raise ValueError(f"{path}: cache built with preprocess={settings['preprocess']} but "
                         f"data.preprocess={preprocess}; rebuild it with `crema-jax prepare`")


class CacheSource:
    """Grain random-access source over a prepared cache, optionally restricted to one split.

    Reads with one ArrayRecordReader per shard, opened lazily in each process (readers do not
    pickle): ~30 us per 60 kB record, against ~75 us through grain.sources.ArrayRecordDataSource
    (its small file buffer and per-call bookkeeping; measured on the bench cache).
    """

    def __init__(self, cache_dir: str, *, split: str = "", expect_target_fs: float | None = None,
                 expect_preprocess: Any = "unchecked",
                 expect_derive_limb_leads: bool | None = None):
        _require_local(cache_dir)
        self.cache_dir = os.path.abspath(cache_dir)
        index = load_index(self.cache_dir)
        check_settings(index, os.path.join(self.cache_dir, INDEX_FILE),
                       target_fs=expect_target_fs, preprocess=expect_preprocess,
                       derive_limb_leads=expect_derive_limb_leads)
        self.split = split
        self.label_names = list(index["label_names"])
        self.shard_files = [os.path.join(self.cache_dir, s["file"]) for s in index["shards"]]
        shard_of = {s["file"]: i for i, s in enumerate(index["shards"])}
        self.records = [r for r in index["records"] if not split or r["split"] == split]
        self.shards = np.asarray([shard_of[r["shard"]] for r in self.records], np.int64)
        self.positions = np.asarray([int(r["position"]) for r in self.records], np.int64)
        self.labels = multi_hot([tuple(r["labels"]) for r in self.records], self.label_names)
        self.paths = [r["path"] for r in self.records]
        self.record_rows = np.arange(len(self.records), dtype=np.int64)
        self._readers: dict[int, Any] = {}

    def __getstate__(self):
        return {**self.__dict__, "_readers": {}}

    def subset(self, rows: Sequence[int], label_names: Sequence[str]) -> "CacheSource":
        """The records at `rows` (positions in self.records, in that order), with multi-hot
        labels over `label_names` (e.g. the classes an evaluation kept)."""
        out = CacheSource.__new__(CacheSource)
        out.__dict__.update(self.__getstate__())
        rows = np.asarray(rows, np.int64)
        out.records = [self.records[i] for i in rows]
        out.shards, out.positions = self.shards[rows], self.positions[rows]
        out.paths = [self.paths[i] for i in rows]
        out.record_rows = np.arange(len(rows), dtype=np.int64)
        out.label_names = list(label_names)
        out.labels = multi_hot([tuple(r["labels"]) for r in out.records], out.label_names)
        return out

    def _reader(self, shard: int):
        if shard not in self._readers:
            from array_record.python.array_record_module import ArrayRecordReader

            self._readers[shard] = ArrayRecordReader(self.shard_files[shard],
                                                     "readahead_buffer_size:0")
        return self._readers[shard]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        data = self._reader(int(self.shards[index])).read([int(self.positions[index])])[0]
        return {"index": np.int64(index), "path": self.paths[index], "labels": self.labels[index],
                "data": data}

    def __repr__(self) -> str:
        return f"CacheSource(dir={self.cache_dir!r}, split={self.split!r}, records={len(self)})"

    def load(self, element: Mapping) -> dict:
        return decode_quantised(element["data"])


# ---------------------------------------------------------------- writing one shard (a worker task)

def build_shard(task: Mapping) -> dict:
    """Read, preprocess and write the records of one shard; return its sidecar metadata.

    `task`: out_dir, shard, num_shards, records (RecordInfo fields as dicts: record_id, path,
    labels, split, source, reader), target_fs, preprocess (dict or None), derive_limb_leads,
    dtype, strict. Runs in a worker process, so it
    returns plain data; a bad record under `strict` comes back as {"strict_error": message}
    (exceptions with custom constructors do not survive the trip between processes).
    """
    import ml_collections

    from crema_jax.data import preprocess as preprocess_lib
    from crema_jax.data import readers
    from crema_jax.data import records as records_lib

    name = shard_name(task["shard"], task["num_shards"])
    cfg = None if task["preprocess"] is None else ml_collections.ConfigDict(task["preprocess"])
    payloads, rows, skipped = [], [], []
    for info in task["records"]:
        reader = info.get("reader")
        info = {k: v for k, v in info.items() if k != "reader"}  # the index row: JSON only
        try:
            ecg = readers.read(info["path"], reader, target_fs=task["target_fs"],
                               derive_limb_leads=task["derive_limb_leads"])
            signal = ecg.signal if cfg is None else preprocess_lib.preprocess(
                ecg.signal, ecg.fs, cfg, lead_present=ecg.lead_present)
        except records_lib.RecordError as e:
            if task["strict"]:
                return {"strict_error": str(e)}
            skipped.append({"path": str(e.path), "reason": e.reason, "message": str(e)})
            continue
        except Exception as e:  # noqa: BLE001 - a new kind of broken file must not stop the run.
            message = f"{info['path']}: unexpected {type(e).__name__} while reading: {e}"
            if task["strict"]:
                return {"strict_error": message}
            skipped.append({"path": info["path"], "reason": "unexpected_error",
                            "message": message})
            continue
        payloads.append(encode_record(signal, ecg.lead_present, task["dtype"]))
        rows.append({**info, "shard": name + ".arrayrecord", "position": len(rows),
                     "length": int(signal.shape[1]),
                     "lead_present": [bool(b) for b in ecg.lead_present],
                     "repairs": {k: int(v) for k, v in sorted(ecg.repairs.items())}})
    write_arrayrecord_atomic(os.path.join(task["out_dir"], name + ".arrayrecord"), payloads)
    sidecar = {"file": name + ".arrayrecord", "num_records": len(rows), "records": rows,
               "skipped": skipped}
    # The sidecar is renamed into place last: its presence marks the shard complete.
    write_json_atomic(os.path.join(task["out_dir"], name + ".json"), sidecar)
    return sidecar
