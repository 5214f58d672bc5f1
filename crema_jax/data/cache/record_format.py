"""The preprocessed ECG cache's files: ArrayRecord shards of encoded records + a JSON index.

Layout of a cache folder (written by `crema-jax prepare`: prepare.py, shard_writer.py;
read by source.py):

    settings.json                      what the cache was built from (checked on restart and read)
    shard-00000-of-00007.arrayrecord   one serialised record per entry (format below)
    shard-00000-of-00007.json          sidecar: metadata of the shard's records and its skips,
                                       and the shard file's fingerprint (fingerprint.py)
    index.json                         all sidecars merged, plus label_names and the settings
    summary.json                       records written, skipped counts by reason with paths

A record's row (in its sidecar and index.json) keeps what the evaluation reads of it without the
source files: record_id, path, labels, split, source, content_key and `meta`, the record's
ROW_META (patient id, age, sex) where the layout's index had them (`row_meta`). The patient id
is kept as its salted hash (clinical.patient_hash, the one clinical exports use; a clinical
export's id, a hash already, is hashed again), never as written: a cache is handed around and
put in shared buckets. Equal ids give equal hashes, so a cache groups patients as the raw
records do. settings.json's "format" is FORMAT; a cache of an earlier format still reads:
crema_jax.cache/1 has rows without `meta` (source.cache_index), /2 rows with the layout's
patient id as written.

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
float16 max abs error 1.5e-2, rms 2.1e-4 (tests/data/cache/test_cache.py checks int16 wins).
Both are 2 bytes a sample and decode equally fast (one np.frombuffer + astype).
"""
from __future__ import annotations

import struct

import numpy as np

MAGIC = b"CRMA"
VERSION = 1
_HEADER = struct.Struct("<4sBBHIH2x")  # 16 bytes: the arrays after it stay aligned.
DTYPES = {1: np.dtype("<i2"), 2: np.dtype("<f2")}
DTYPE_CODES = {"int16": 1, "float16": 2}
FORMAT = "crema_jax.cache/3"   # /1: rows without `meta`; /2: patient ids as written
ROW_META = ("patient_id", "age", "sex")
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


def row_meta(meta: dict) -> dict:
    """What a cache row keeps of a record's meta: its ROW_META that are set (JSON data), the
    patient id as its salted hash (the module docstring)."""
    from crema_jax.data.reading.clinical import patient_hash   # only prepare writes rows

    kept = {k: meta[k] for k in ROW_META if meta.get(k) not in (None, "")}
    if "patient_id" in kept:
        kept["patient_id"] = patient_hash(str(kept["patient_id"]))
        if not kept["patient_id"]:   # a missing-value word: no patient id
            del kept["patient_id"]
    return kept


def shard_name(shard: int, num_shards: int) -> str:
    return f"shard-{shard:05d}-of-{num_shards:05d}"
