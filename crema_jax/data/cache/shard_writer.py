"""Writing one shard of the cache: read, preprocess and encode its records, write the ArrayRecord
file and its JSON sidecar, atomically. The one function that writes a shard, whoever runs it: a
`crema-jax prepare` worker process, one host of an array job, or a Beam worker
(beam_pipeline.py); the output folder may be a URL (runtime/storage.py)."""
from __future__ import annotations

import errno
import os
import re
import signal
import threading
from typing import Mapping, Sequence

import ml_collections
from array_record.python.array_record_module import ArrayRecordWriter

from crema_jax.data.cache import fingerprint
from crema_jax.data.cache.record_format import WRITER_OPTIONS, encode_record, shard_name
from crema_jax.data.index import duplicates
from crema_jax.data.reading import read as read_lib
from crema_jax.data.reading.ecg import read_failure
from crema_jax.data.signal.preprocess import preprocess_record
from crema_jax.runtime import storage


def write_arrayrecord_atomic(path: str, payloads: Sequence[bytes]) -> dict:
    """Writes the shard file (local or URL) atomically; returns its fingerprint
    (fingerprint.py), taken from the new file before it is renamed into place or uploaded. A
    write the OS refused (a full disk) is an OSError naming `path` and the reason, its temporary
    file removed."""
    made = {}

    def write(tmp):
        try:
            writer = ArrayRecordWriter(tmp, WRITER_OPTIONS)
            for payload in payloads:
                writer.write(payload)
            writer.close()
        except RuntimeError as err:
            raise os_error(err, tmp) from None
        made.update(fingerprint.of_file(tmp))
    storage.write_atomic(path, write)
    return made


# strerror -> errno: array_record reports a failed system call by its text alone.
_ERRNO_OF = {os.strerror(code): code for code in errno.errorcode}
_FAILED_CALL = re.compile(r"\b\w+\(\) failed: ([^;]+)")


def os_error(err: RuntimeError, tmp: str) -> Exception:
    """array_record's RuntimeError for a system call that failed while it wrote `tmp` ("write()
    failed: No space left on device; writing TMP; at byte N; Failed to close chunk_writer"), as
    the OSError it stands for (files.write_atomic then names the output); `err` itself when it
    reports no failed call (a bug keeps its traceback)."""
    match = _FAILED_CALL.search(str(err))
    if match is None:
        return err
    reason = match.group(1).strip()
    code = _ERRNO_OF.get(reason)
    return OSError(code, reason, tmp) if code is not None else OSError(f"{reason}: {tmp}")


# Set in a prepare worker process by Ctrl-C (its SIGINT handler, `finish_record_on_interrupt`).
_INTERRUPTED = threading.Event()


def finish_record_on_interrupt() -> None:
    """A worker process's initializer: Ctrl-C (SIGINT, sent to the whole process group) lets
    the record being read finish, and `build_shard` then stops without writing its shard.
    Raised inside a record's read instead, the KeyboardInterrupt could cut an import short (the
    next records then fail, say with numba's "duplicate registration") or a file read (EBADF),
    and those records were skipped and committed in a shard as broken: lost for every rerun."""
    signal.signal(signal.SIGINT, lambda signum, frame: _INTERRUPTED.set())


def build_shard(task: Mapping) -> dict:
    """Read, preprocess and write the records of one shard; return its sidecar metadata.

    `task` (JSON data): out_dir, shard, num_shards, records (RecordInfo fields as dicts:
    record_id, path, labels, split, source, meta as record_format.row_meta, reader as
    read.reader_to_json; all but the reader make the record's index row), target_fs,
    preprocess (dict or None), derive_limb_leads, dtype, strict, settings_digest (of the
    cache's settings.json: kept in the sidecar, sidecars.load_sidecar). The sidecar also keeps
    the shard file's fingerprint (fingerprint.py: size, sha256, edge_sha256). Runs in a worker
    process, so it returns plain data; a bad record under `strict` comes back as
    {"strict_error": message} (exceptions with custom constructors do not survive the trip
    between processes).
    """
    name = shard_name(task["shard"], task["num_shards"])
    cfg = None if task["preprocess"] is None else ml_collections.ConfigDict(task["preprocess"])
    payloads, rows, skipped = [], [], []
    for info in task["records"]:
        if _INTERRUPTED.is_set():  # nothing written: the rerun builds this shard
            raise KeyboardInterrupt(f"shard {name} interrupted")
        reader = read_lib.reader_from_json(info.get("reader"))
        info = {k: v for k, v in info.items() if k != "reader"}  # the index row: JSON only
        try:
            ecg, key = read_lib.read_keyed(info["path"], reader, duplicates.content_key,
                                           target_fs=task["target_fs"],
                                           derive_limb_leads=task["derive_limb_leads"])
            signal = preprocess_record(ecg.signal, ecg.fs, cfg, ecg.lead_present)
        except Exception as e:  # noqa: BLE001 - a new kind of broken file must not stop the run.
            reason, path, message = read_failure(e, info["path"])
            if task["strict"]:
                return {"strict_error": message}
            skipped.append({"path": path, "reason": reason, "message": message})
            continue
        payloads.append(encode_record(signal, ecg.lead_present, task["dtype"]))
        rows.append({**info, "content_key": key,
                     "shard": name + ".arrayrecord", "position": len(rows),
                     "length": int(signal.shape[1]),
                     "lead_present": [bool(b) for b in ecg.lead_present],
                     "repairs": {k: int(v) for k, v in sorted(ecg.repairs.items())}})
    if _INTERRUPTED.is_set():
        raise KeyboardInterrupt(f"shard {name} interrupted")
    made = write_arrayrecord_atomic(storage.join(task["out_dir"], name + ".arrayrecord"), payloads)
    sidecar = {"file": name + ".arrayrecord", "num_records": len(rows), **made, "records": rows,
               "skipped": skipped, "settings_digest": task["settings_digest"]}
    # The sidecar is renamed into place last: its presence marks the shard complete.
    storage.write_json_atomic(storage.join(task["out_dir"], name + ".json"), sidecar)
    return sidecar
