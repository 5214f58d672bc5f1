"""Records read and a cache written through a non-local file system (fsspec's memory://, which
works offline like gs:// and s3:// do online), then pretraining from that cache."""
import dataclasses
import hashlib
import json
import uuid

import fsspec
import jax
import numpy as np
import pytest

from crema_jax.data.cache import beam_pipeline, prepare, source
from crema_jax.data.index import duplicates, wfdb_folder
from crema_jax.runtime import storage
from crema_jax.train import trainer
from tests.configs import tiny_config

NUM_RECORDS = 16


@pytest.fixture
def memory_records(cinc_sample_dir, tmp_path, monkeypatch):
    """The first NUM_RECORDS bundled records under memory://, and the same files on disk."""
    monkeypatch.setenv("CREMA_JAX_STAGING", str(tmp_path / "staging"))
    fs = fsspec.filesystem("memory")
    base = f"memory://crema-test-{uuid.uuid4().hex}"
    names = sorted(p.stem for p in cinc_sample_dir.glob("*.hea"))[:NUM_RECORDS]
    local = tmp_path / "records"
    local.mkdir()
    for name in names:
        for ext in (".hea", ".mat"):
            data = (cinc_sample_dir / (name + ext)).read_bytes()
            fs.pipe(f"{base}/records/{name}{ext}", data)
            (local / (name + ext)).write_bytes(data)
    yield fs, base, local, names
    fs.rm(base, recursive=True)


def test_a_cache_of_url_records_keeps_their_content_keys(memory_records, tmp_path):
    """content_key (the duplicate check's) of a record read from a URL: the SHA-256 of its
    signal file, as for the same file on disk, not its URL."""
    fs, base, local, names = memory_records
    flags = dict(layout="wfdb_folder", workers=1, records_per_shard=8)
    prepare.prepare(root=f"{base}/records", out=str(tmp_path / "remote"), **flags)
    prepare.prepare(root=str(local), out=str(tmp_path / "local"), **flags)
    expected = []
    for name in names:
        data = (local / f"{name}.mat").read_bytes()
        expected.append(f"sha256:{hashlib.sha256(f'{len(data)}:'.encode() + data).hexdigest()}")
    for cache in ("remote", "local"):
        rows = json.loads((tmp_path / cache / "index.json").read_text())["records"]
        assert [r["content_key"] for r in rows] == expected, cache
    # An evaluation on the bucket's cache finds the byte-identical pair by the stored keys.
    found = duplicates.find(source.cache_index(str(tmp_path / "remote")).records)
    assert found.groups == [["E07509", "E07510"]] and expected[9] == expected[10]


def test_indexing_a_url_root_asks_no_store_about_each_record(memory_records, monkeypatch):
    """Duplicate keys of a memory:// root's records (as of gs://, s3://) are their URLs: not
    one store call per record (each had cost ~4 round trips). A URL listed twice still merges;
    the byte-identical E07509/E07510 are found only on a cache prepared from the root."""
    fs, base, _, names = memory_records
    records = wfdb_folder.wfdb_folder(f"{base}/records").records
    calls = []
    reach = storage._fs
    monkeypatch.setattr(storage, "_fs", lambda url: calls.append(url) or reach(url))
    again = dataclasses.replace(records[3], record_id="again")
    keys = duplicates.content_keys([*records, again])
    found = duplicates.find([*records, again])
    assert calls == []
    assert keys == [f"path:{base}/records/{n}" for n in names] + [keys[3]]
    assert found.groups == [[names[3], "again"]] and found.merged == 1


@pytest.mark.slow
def test_prepare_reads_and_writes_urls_then_pretrains_from_them(memory_records, tmp_path):
    fs, base, local, names = memory_records
    flags = dict(layout="wfdb_folder", workers=1, records_per_shard=6)
    remote = prepare.prepare(root=f"{base}/records", out=f"{base}/cache", **flags)
    prepare.prepare(root=str(local), out=str(tmp_path / "local"), **flags)
    assert remote["records"] == NUM_RECORDS and remote["merged"]

    # The shards hold the bytes the local path writes; the index names the records by URL.
    shards = sorted(p.name for p in (tmp_path / "local").glob("shard-*.arrayrecord"))
    assert len(shards) == -(-NUM_RECORDS // 6)
    for name in shards:
        assert fs.cat_file(f"{base}/cache/{name}") == (tmp_path / "local" / name).read_bytes()
    index = json.loads(fs.cat_file(f"{base}/cache/index.json"))
    assert [r["path"] for r in index["records"]] == [f"{base}/records/{n}" for n in names]
    assert index["settings"]["root"] == f"{base}/records"
    uploaded = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{base}/cache", detail=False))
    assert uploaded == sorted(shards + [s.replace(".arrayrecord", ".json") for s in shards] +
                              ["index.json", "settings.json", "summary.json"])  # no temporary

    config = tiny_config(**{"train.num_steps": 2, "data.synthetic_records": 0,
                            "data.cache_dir": f"{base}/cache"})
    trainer.train(config, tmp_path / "run", devices=jax.devices()[:1])
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text()
            .splitlines()]
    losses = {r["step"]: r["loss"] for r in rows if "loss" in r}
    assert sorted(losses) == [1, 2] and np.isfinite(list(losses.values())).all()


@pytest.mark.slow
def test_beam_in_one_process_writes_the_local_paths_cache_to_a_url(memory_records):
    """The Beam path's own remote writes (settings, shards from its workers, the merge), on the
    DirectRunner in this process (memory:// lives in one process)."""
    fs, base, _, _ = memory_records
    flags = dict(layout="wfdb_folder", root=f"{base}/records", records_per_shard=6)
    prepare.prepare(out=f"{base}/local", workers=1, **flags)
    beam_pipeline.prepare_on_beam(out=f"{base}/beam", runner="DirectRunner",
                                  beam_options={"direct_running_mode": "in_memory"}, **flags)
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{base}/local", detail=False))
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{base}/beam", detail=False)) == names
    assert len(names) == 2 * -(-NUM_RECORDS // 6) + 3
    for name in names:
        assert fs.cat_file(f"{base}/beam/{name}") == fs.cat_file(f"{base}/local/{name}"), name


def test_an_unknown_url_scheme_is_named_in_one_line(tmp_path):
    with pytest.raises(ValueError, match=r"^nosuchfs://bucket/records: .*nosuchfs.*expected a "
                                         r"local path or a URL"):
        prepare.prepare(layout="wfdb_folder", root="nosuchfs://bucket/records",
                        out=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def _holder(**fields) -> bytes:
    return json.dumps({"pid": 1, "host": "other-host", "started": "2026-12-05 09:00:00 UTC",
                       "id": "0" * 32, **fields}).encode()


def test_a_remote_out_is_locked_per_host_like_a_local_one(memory_records, capsys):
    """A live run's lock object (another host's, fresh) stops a second prepare, naming it, and
    nothing is written; a dead run's lock on this host (its pid gone) is taken over; a finished
    run leaves no lock behind."""
    import socket
    import subprocess
    import sys

    from crema_jax.runtime import workdir
    fs, base, _, _ = memory_records
    flags = dict(layout="wfdb_folder", workers=1, records_per_shard=6)
    lock = f"{base}/cache/{prepare.lock_name(0)}"
    fs.pipe(lock, _holder())
    with pytest.raises(workdir.WorkdirLockedError, match="other-host"):
        prepare.prepare(root=f"{base}/records", out=f"{base}/cache", **flags)
    assert fs.cat_file(lock) == _holder()
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{base}/cache", detail=False)) == [
        prepare.lock_name(0)]

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    fs.pipe(lock, _holder(pid=int(gone.stdout), host=socket.gethostname()))
    done = prepare.prepare(root=f"{base}/records", out=f"{base}/cache", **flags)
    assert done["records"] == NUM_RECORDS and "took over the stale lock" in capsys.readouterr().out
    assert not fs.exists(lock)


def test_remote_lock_create_is_exclusive_and_its_heartbeat_keeps_it_fresh(memory_records,
                                                                          monkeypatch):
    from crema_jax.runtime import storage, workdir
    fs, base, _, _ = memory_records
    path = f"{base}/locks/a.lock"
    assert storage.create_exclusive(path, b"first") and not storage.create_exclusive(path, b"x")
    assert fs.cat_file(path) == b"first"

    lock = workdir.WorkdirLock(f"{base}/run", stale_seconds=600)
    assert lock.acquire() is None and json.loads(fs.cat_file(lock.path)) == lock.info
    other = workdir.WorkdirLock(f"{base}/run", stale_seconds=600)
    other.info["host"] = "other-host"  # a second machine: its pid cannot be checked here
    with pytest.raises(workdir.WorkdirLockedError):
        other.acquire()
    before = storage.modified(lock.path)
    lock.refresh(every_seconds=0)
    assert storage.modified(lock.path) > before
    # Ten minutes without a heartbeat: the other machine takes the lock over.
    modified = storage.modified
    monkeypatch.setattr(storage, "modified", lambda p: before - 601)
    assert "took over the stale lock" in other.acquire()
    monkeypatch.setattr(storage, "modified", modified)
    taken = fs.cat_file(lock.path)
    lock.refresh(every_seconds=0)  # the stalled run wakes up: it must not renew the other's lock
    assert fs.cat_file(lock.path) == taken and not lock.held
    lock.release()  # no longer its lock: left alone
    assert json.loads(fs.cat_file(lock.path))["id"] == other.info["id"]
    other.release()
    assert not fs.exists(lock.path)
