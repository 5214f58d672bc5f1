"""The JSON files of a cache being written (record_format.py has their names): each shard's
sidecar (its records and skips, for the settings whose digest it names, and its shard file's
fingerprint), checked, with the shard file against that fingerprint, when a rerun or the merge
reads it; the merge of the sidecars into index.json and summary.json (`finish`,
streamed one shard at a time); the skip table. Used by prepare.py and beam_pipeline.py."""
from __future__ import annotations

import hashlib
import json

from crema_jax.data.cache import fingerprint, record_format
from crema_jax.data.pipeline import skips
from crema_jax.data.reading import safe_files
from crema_jax.runtime import files, storage


class PrepareError(ValueError):
    """A cache that cannot be built as asked; the message says why."""


def settings_digest(settings: dict) -> str:
    """What a shard's sidecar keeps of the settings.json it was built for: a shard copied in
    from another cache or another run (other settings, other records) is told apart (a merge
    had mixed such shards into a cache that still claimed its own settings)."""
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _sidecar_problem(sidecar: dict, name: str, digest: str) -> str | None:
    file, records = sidecar.get("file"), sidecar.get("records")
    count, skipped = sidecar.get("num_records"), sidecar.get("skipped")
    if file != name + ".arrayrecord":
        return f"it names the shard {file!r}, not {name}.arrayrecord"
    if not isinstance(records, list) or not all(
            isinstance(r, dict) and r.get("shard") == file and r.get("position") == i
            for i, r in enumerate(records)):
        return "its records are not this shard's rows, in order"
    if type(count) is not int or count != len(records):
        return f"num_records={count!r} for {len(records)} records"
    if not isinstance(skipped, list) or not all(
            isinstance(k, dict) and isinstance(k.get("reason"), str)
            and isinstance(k.get("path"), str) for k in skipped):
        return "its skipped entries are not {reason, path, message} objects"
    fields = fingerprint.fields_problem(sidecar)
    if fields:
        return fields
    if sidecar.get("settings_digest", digest) != digest:  # (none: a shard of an older version)
        return ("it was built for other settings than this folder's settings.json (a shard "
                "copied from another cache or run)")
    return None


def load_sidecar(out: str, name: str, digest: str) -> dict | None:
    """Shard `name`'s sidecar when the shard is complete (its .json and .arrayrecord there),
    checked to be this shard's, built for the settings whose settings_digest is `digest`.
    A shard file that is not the one its sidecar's fingerprint describes (fingerprint.py:
    truncated, swapped, replaced since) counts as not written, said in one line: a rerun of
    its host rebuilds it, and a merge names it among the shards still to write."""
    path = storage.join(out, name + ".json")
    shard = storage.join(out, name + ".arrayrecord")
    if not (storage.isfile(path) and storage.isfile(shard)):
        return None
    remedy = f"delete it and {name}.arrayrecord, then rerun prepare (it rewrites that shard)"
    sidecar = read_json(path, remedy, dict)
    problem = _sidecar_problem(sidecar, name, digest)
    if problem:
        raise PrepareError(f"{path}: {problem}; {remedy}")
    mismatch = fingerprint.problem(shard, sidecar)
    if mismatch:
        print(f"prepare: {shard}: {mismatch}; it counts as not written (the run of the host "
              "that writes it rewrites it)")
        return None
    return sidecar


def worth_rebuilding(sidecar: dict | None) -> bool:
    """Whether a written shard skipped a record for an unexpected error (a MemoryError, an I/O
    fault, an interrupted import: not the record's own damage, a RecordError): a rerun builds
    such a shard again rather than keep those records lost."""
    return sidecar is not None and any(skip.get("reason") == "unexpected_error"
                                       for skip in sidecar["skipped"])


def light_sidecar(out: str, name: str, digest: str) -> dict | None:
    sidecar = load_sidecar(out, name, digest)
    return None if sidecar is None else light(sidecar)


def read_json(path: str, remedy: str, kind: type):
    """A JSON file of the cache; PrepareError naming it (and `remedy`) when it is damaged."""
    return files.load_json(lambda: safe_files.read_text(path, encoding="utf-8"), path, kind,
                           PrepareError, f"; {remedy}")


def read_summary(out: str) -> dict:
    """summary.json of a finished cache."""
    return read_json(storage.join(out, record_format.SUMMARY_FILE), "rerun prepare", dict)


def skip_table(sidecars) -> dict:
    """The skip table (skips.skip_table) of the records these shards skipped."""
    return skips.skip_table((skip["reason"], skip["path"]) for sidecar in sidecars
                            for skip in sidecar["skipped"])


def print_table(skipped: dict, title: str = "") -> None:
    if skipped:
        width = max(len("reason"), *(len(r) for r in skipped))
        print(f"{'reason'.ljust(width)}  skipped{title}")
        for reason, entry in skipped.items():
            print(f"{reason.ljust(width)}  {entry['count']}")


def light(sidecar: dict) -> dict:
    """A shard's sidecar without its record rows: what progress, skip tables and the merge keep
    of each shard (the rows are read back from the folder, one shard at a time, by `finish`)."""
    return {k: v for k, v in sidecar.items() if k != "records"}


def finish(out: str, label_names, settings: dict, sidecars: list[dict]) -> tuple[int, dict]:
    """Merge every shard's sidecar (in shard order; light ones will do) into index.json and
    summary.json; returns (records written, skip table). The record rows are streamed from the
    sidecar files in `out`, one shard at a time: no step holds the whole index."""
    digest = settings_digest(settings)

    def rows():
        for s in sidecars:
            full = load_sidecar(out, s["file"][:-len(".arrayrecord")], digest)
            if full is None or full["num_records"] != s["num_records"]:
                raise PrepareError(f"{out}: shard {s['file']} changed or went missing during "
                                   "the merge; rerun prepare")
            yield from full["records"]

    head = {"settings": settings, "label_names": list(label_names),
            "shards": [{"file": s["file"], "num_records": s["num_records"],
                        **{k: s[k] for k in fingerprint.FIELDS if k in s}} for s in sidecars]}
    written = []
    storage.write_atomic(storage.join(out, record_format.INDEX_FILE), lambda tmp: written.append(
        files.write_json_streamed(tmp, head, "records", rows())))
    skipped = skip_table(sidecars)
    storage.write_json_atomic(storage.join(out, record_format.SUMMARY_FILE),
                              {"records_written": written[0], "skipped": skipped})
    return written[0], skipped
