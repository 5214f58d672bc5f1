"""A cache's index.json (record_format.py) parsed and checked to hold every key and value a
reader uses: anything else is a DamagedCacheError naming the file, what is wrong and the rerun
of prepare that rebuilds it from the shards' sidecars (source.py reads the cache through it).
"""
from __future__ import annotations

import json
import os

from crema_jax.data.cache import fingerprint
from crema_jax.data.cache.damage import DamagedCacheError

_INDEX_KEYS = {"settings": dict, "label_names": list, "shards": list, "records": list}
_SHARD_KEYS = ("file", "num_records")
_RECORD_KEYS = ("record_id", "path", "labels", "split", "source", "shard", "position")
_SETTINGS_KEYS = ("target_fs", "preprocess", "derive_limb_leads")  # what settings_check.py reads


def rebuild_index(path: str, problem: str) -> DamagedCacheError:
    """A damaged index.json's error: `problem`, and the rerun that writes it again."""
    cache_dir = os.path.dirname(path)
    return DamagedCacheError(f"{path}: {problem}; the cache index is damaged: rerun `crema-jax "
                             f"prepare` with the same flags and --out={cache_dir} (it rebuilds "
                             "index.json from the shards' sidecars)")


def parse_index(data: bytes, path: str) -> dict:
    """The index in `data` (index.json's bytes, read from `path`), checked."""
    try:
        index = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise rebuild_index(path, f"does not read ({err})") from None
    except json.JSONDecodeError as err:
        raise rebuild_index(path, f"not JSON ({err})") from None
    _check_index(index, path)
    return index


def _check_index(index, path: str) -> None:
    if not isinstance(index, dict):
        raise rebuild_index(path, f"holds a {type(index).__name__}, expected an object")
    for key, kind in _INDEX_KEYS.items():
        if not isinstance(index.get(key), kind):
            raise rebuild_index(path, f"no {key!r} {kind.__name__} (keys: {sorted(index)})")
    for what, rows, keys in (("shard", index["shards"], _SHARD_KEYS),
                             ("record", index["records"], _RECORD_KEYS)):
        for i, row in enumerate(rows):
            missing = [k for k in keys if not isinstance(row, dict) or k not in row]
            if missing:
                raise rebuild_index(path, f"{what} {i} lacks {missing}")
    for i, shard in enumerate(index["shards"]):
        name, count = shard["file"], shard["num_records"]
        if not isinstance(name, str) or os.path.basename(name) != name or name in ("", ".", ".."):
            raise rebuild_index(path, f"shard {i} is {name!r}, expected a file name in the cache")
        if type(count) is not int or count < 0:  # noqa: E721 - bool is no count
            raise rebuild_index(path, f"shard {i} holds {count!r} records, expected a count")
        problem = fingerprint.fields_problem(shard)
        if problem:
            raise rebuild_index(path, f"shard {i}: {problem}")
    missing = [k for k in _SETTINGS_KEYS if k not in index["settings"]]
    if missing:
        raise rebuild_index(path, f"its settings lack {missing}")
    target_fs = index["settings"]["target_fs"]
    if not isinstance(target_fs, (int, float)) or isinstance(target_fs, bool) \
            or not 0 < target_fs < float("inf"):
        raise rebuild_index(path, f"its settings' target_fs is {target_fs!r}, expected a rate "
                             "in Hz")
    if not all(isinstance(name, str) for name in index["label_names"]):
        raise rebuild_index(path, "its label_names are not all strings")
    counts = {s["file"]: s["num_records"] for s in index["shards"]}
    seen = set()
    for i, row in enumerate(index["records"]):
        if row["shard"] not in counts:
            raise rebuild_index(path, f"record {i} is in shard {row['shard']!r}, which the "
                                 "index does not list")
        position = row["position"]
        if type(position) is not int or not 0 <= position < counts[row["shard"]]:  # noqa: E721
            raise rebuild_index(path, f"record {i} at position {position!r} of shard "
                                 f"{row['shard']}, expected 0 to {counts[row['shard']] - 1}")
        if (row["shard"], position) in seen:  # one ECG had been read for 50 records
            raise rebuild_index(path, f"record {i} at position {position} of shard "
                                 f"{row['shard']}, where an earlier record is")
        seen.add((row["shard"], position))
        if not isinstance(row.get("meta", {}), dict):
            raise rebuild_index(path, f"record {i}: meta is {row['meta']!r}, expected an "
                                 "object")
        texts = (row["record_id"], row["path"], row["split"], row["source"])
        if not all(isinstance(t, str) for t in texts) or not isinstance(row["labels"], list) \
                or not all(isinstance(label, str) for label in row["labels"]):
            raise rebuild_index(path, f"record {i}: record_id, path, split and source must "
                                 "be strings and labels a list of strings")
