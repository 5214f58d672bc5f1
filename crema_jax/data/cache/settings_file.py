"""A cache's settings.json: what it is built from (format, layout, root, preprocessing, dtype,
shard size, and a digest of the records' rows and files). Every host of a run writes the same
bytes or checks them; a rerun with other settings, of another format or over records changed
since is refused, naming the file or field, so a resumed cache never mixes two builds.
"""
from __future__ import annotations

import hashlib
import json

from crema_jax.data.cache import record_format
from crema_jax.data.cache import sidecars as sidecar_lib
from crema_jax.data.cache.sidecars import PrepareError
from crema_jax.data.index import duplicates
from crema_jax.data.reading import clinical
from crema_jax.data.reading.demographics import patient_id_of
from crema_jax.runtime import storage

# The salted hash of this fixed key: the same on every host and rerun of a build exactly when
# they hash patient ids with the same CREMA_JAX_PATIENT_SALT (record_format keeps ids only as
# such hashes). It tells no more about the salt than any hashed id in the cache does.
SALT_CHECK_KEY = "crema_jax.salt-check"


def _records_sha1(index) -> str:
    """What the cache's rows are made of: each record's path, id, labels, split, source, meta
    and (local files) their sizes and modification times: a record relabelled or rewritten
    since the cache was started changes it (a rerun kept the old labels and signals)."""
    digest = hashlib.sha1()
    for r in index.records:
        digest.update(json.dumps([r.path, r.record_id, list(r.labels), r.split, r.source,
                                  r.meta, duplicates.file_stats(r.path)], sort_keys=True,
                                 default=str).encode() + b"\n")
    return digest.hexdigest()


def cache_settings(index, opts: dict, preprocess_cfg) -> dict:
    """settings.json of a cache of `index` built with prepare's options `opts`."""
    paths = _records_sha1(index)
    return {"format": record_format.FORMAT, "layout": opts["layout"],
            "layout_options": opts["layout_options"],
            "root": storage.absolute(opts["root"]), "target_fs": float(opts["target_fs"]),
            "preprocess_preset": opts["preprocess"], "preprocess": preprocess_cfg,
            "derive_limb_leads": True, "dtype": opts["dtype"],
            "records_per_shard": int(opts["records_per_shard"]),
            "num_records": len(index.records), "records_sha1": paths,
            # Only where ids are hashed: a cache without them is the same under any salt.
            "patient_salt_check": (clinical.patient_hash(SALT_CHECK_KEY)
                                   if has_patient_ids(index) else None)}


def has_patient_ids(index) -> bool:
    """Whether any record of `index` has a patient id (which the cache keeps as its hash): ids
    that are blank or a missing-value word ("NaN", "N/A", ...) are none, as in the rows."""
    return any(patient_id_of(r.meta.get("patient_id")) is not None for r in index.records)


def _salt_problem(out: str, before, now, changed: list) -> tuple[str | None, list]:
    """(why patient_salt_check differs, where that is the cause; the `changed` keys left to
    name): ids that appear or vanish along with other changes (records_sha1: records added,
    removed or relabelled) are named by those, patient_salt_check dropped from the list."""
    if "patient_salt_check" not in changed:
        return None, changed
    if before and now:   # clinical exports' ids change records_sha1 too
        return (f"{out} holds a cache whose patient ids were hashed with another "
                f"{clinical.SALT_ENV} (patient_salt_check): resumed, one patient would get two "
                "ids; set the salt it was built with, or use a new --out folder"), changed
    if changed != ["patient_salt_check"]:
        return None, [key for key in changed if key != "patient_salt_check"]
    if before:
        return (f"{out} holds a cache of these records whose settings.json has a patient-id salt "
                "check (patient_salt_check) although none of them has a patient id (each is "
                "blank or a missing-value word: NaN, N/A, ...; an earlier version counted such "
                "words as ids): its rows hold no ids, but its shards were written for that "
                "settings.json; use a new --out folder"), changed
    return (f"{out} holds a cache whose settings.json records no patient ids "
            "(patient_salt_check null) but these records have some: resumed, its rows would "
            "lack the ids the new ones keep; use a new --out folder"), changed


def check_or_write(out: str, settings: dict, *, write: bool) -> None:
    """settings.json written (when absent and `write`) or checked to equal `settings`."""
    path = storage.join(out, record_format.SETTINGS_FILE)
    if storage.isfile(path):
        old = sidecar_lib.read_json(path, "use a new --out folder", dict)
        if str(old.get("format", "")).startswith("crema_jax.cache/") \
                and old["format"] != settings["format"]:
            raise PrepareError(f"{path}: a cache of format {old['format']}, not this "
                               f"version's {settings['format']} (resumed, it would mix the "
                               "two); use a new --out folder")
        if old.get("format") != settings["format"]:  # another program's settings.json
            raise PrepareError(f"{path}: not the settings of a crema_jax cache (no \"format\": "
                               f"\"{settings['format']}\"); use a new --out folder")
        changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        salt, changed = _salt_problem(out, old.get("patient_salt_check"),
                                      settings["patient_salt_check"], changed)
        if salt:
            raise PrepareError(salt)
        if changed == ["records_sha1"]:
            raise PrepareError(f"{out} holds a cache of these records as they were: one or more "
                               "was relabelled, rewritten, added or removed since (records_sha1)"
                               "; use a new --out folder")
        if changed:
            raise PrepareError(f"{out} holds a cache built with other settings (changed: "
                               f"{', '.join(changed)}); use a new --out folder")
    elif write:
        storage.write_json_atomic(path, settings)
    else:
        raise PrepareError(f"{out}: no {record_format.SETTINGS_FILE}; nothing to merge (run "
                           "prepare there first)")
