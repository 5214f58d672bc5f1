"""A remote cache is read from a local copy (data/cache/source.local_cache_dir, runtime/staging.py):
a copy that is stale (the remote was rebuilt since) or damaged (edited, or its bytes rotted) is
fetched again, and a damaged shard is named as the local copy's damage (rerun to fetch it again)
or the remote's (rerun prepare), whichever it is. The remote is memory://, the reference the
same cache read from local disk."""
import json
import os
import shutil
import uuid

import fsspec
import pytest

from crema_jax.data.cache import fingerprint, prepare, source
from crema_jax.data.index import dataset_index
from crema_jax.runtime import staging

SHARD = "shard-00000-of-00002.arrayrecord"


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    """Two local caches of 4 records in 2 shards, of other records each (v1, v2)."""
    names = sorted({p.stem for p in dataset_index.sample_data_dir().glob("*.hea")})
    out = {}
    for version, chosen in (("v1", names[0:4]), ("v2", names[10:14])):
        root = tmp_path_factory.mktemp(f"records-{version}")
        for name in chosen:
            for ext in (".hea", ".mat"):
                shutil.copyfile(dataset_index.sample_data_dir() / (name + ext),
                                root / (name + ext))
        out[version] = tmp_path_factory.mktemp(f"cache-{version}") / "cache"
        prepare.prepare(layout="wfdb_folder", root=str(root), out=str(out[version]), workers=1,
                        records_per_shard=2)
    return out


@pytest.fixture
def remote(caches, tmp_path, monkeypatch):
    """(URL, publish(version, edit=None)): the cache `version` put at URL, replacing what was
    there; edit(name, bytes) -> bytes changes a file on the way."""
    monkeypatch.setenv("CREMA_JAX_STAGING", str(tmp_path / "staging"))
    fs = fsspec.filesystem("memory")
    url = f"memory://staged-{uuid.uuid4().hex}/cache"

    def publish(version, edit=lambda name, data: data):
        if fs.exists(url):
            fs.rm(url, recursive=True)
        for path in sorted(caches[version].iterdir()):
            fs.pipe(f"{url}/{path.name}", edit(path.name, path.read_bytes()))
    yield url, publish
    fs.rm(url.rsplit("/", 1)[0], recursive=True)


def _records(cache_dir) -> list[bytes]:
    src = source.CacheSource(str(cache_dir))
    return [src.record_bytes(i) for i in range(len(src))]


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]


def _flip_file(path, *, keep_times: bool) -> None:
    """A byte in the middle of the file flipped; with keep_times, its mtime as it was (a bit
    rotting on disk, which no edit time tells)."""
    before = os.stat(path)
    with open(path, "r+b") as f:
        data = f.read()
        f.seek(0)
        f.write(_flip(data, len(data) // 2))
    if keep_times:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_a_copy_interrupted_after_a_rebuilt_remote_s_index_is_fetched_again(caches, remote):
    """The remote cache rebuilt from other records in shards of the same sizes, and a run that
    stopped once the new index.json was staged (as one had staged it first): the next run
    reads the new records, not the old shards under the new index."""
    url, publish = remote
    for name in (SHARD, "shard-00001-of-00002.arrayrecord"):
        assert (caches["v1"] / name).stat().st_size == (caches["v2"] / name).stat().st_size
    publish("v1")
    assert _records(url) == _records(caches["v1"])
    publish("v2")
    local = staging.staging_dir(url, "cache")
    shutil.copyfile(caches["v2"] / "index.json", os.path.join(local, "index.json"))
    assert _records(url) == _records(caches["v2"]) != _records(caches["v1"])
    assert list(source.CacheSource(url).paths) == \
        [r["path"] for r in source.load_index(str(caches["v2"]))["records"]]


def test_a_staged_shard_edited_in_place_is_fetched_again(caches, remote):
    url, publish = remote
    publish("v1")
    src = source.CacheSource(url)
    _flip_file(os.path.join(src.cache_dir, SHARD), keep_times=False)
    assert _records(url) == _records(caches["v1"])


@pytest.mark.parametrize("fingerprinted", [True, False])
def test_a_damaged_copy_is_named_as_the_local_copy_and_fetched_on_the_next_run(
        caches, remote, fingerprinted):
    """A bit rotted in a staged shard (its size and times kept): the read names the local copy,
    says the remote is fine when index.json's SHA-256 says so (a cache written before
    fingerprints: that a fresh copy will tell), and that a rerun fetches it again, which it
    does; it does not send the user to rerun prepare, which would change nothing."""
    url, publish = remote

    def strip(name, data):   # a cache written before shard fingerprints
        if fingerprinted or name != "index.json":
            return data
        index = json.loads(data)
        index["shards"] = [{k: v for k, v in s.items() if k not in fingerprint.FIELDS}
                           for s in index["shards"]]
        return json.dumps(index).encode()
    publish("v1", strip)
    src = source.CacheSource(url)
    staged = os.path.join(src.cache_dir, SHARD)
    _flip_file(staged, keep_times=True)
    with pytest.raises(source.DamagedCacheError) as caught:
        _records(url)
    message = str(caught.value)
    assert message.startswith(f"{staged}: record ")
    assert f"this is the local copy of {url}/{SHARD}, damaged since it was fetched" in message
    assert f"rerun to fetch it again (or delete {staged})" in message
    assert ("the remote shard is as prepare wrote it" in message) == fingerprinted
    assert ("if the fresh copy fails alike, the remote shard is damaged" in message) \
        != fingerprinted
    assert ("rerun `crema-jax prepare`" in message) != fingerprinted
    assert "\n" not in message
    assert _records(url) == _records(caches["v1"])


def test_a_copy_changed_after_this_run_fetched_it_does_not_vouch_for_the_remote(caches,
                                                                                  remote):
    """The copy edited (its times changed) after this source fetched and checked it: its copy
    record no longer holds, so what the remote holds is unknown; the message had still said
    the remote shard is as prepare wrote it."""
    url, publish = remote
    publish("v1")
    src = source.CacheSource(url)
    staged = os.path.join(src.cache_dir, SHARD)
    _flip_file(staged, keep_times=False)
    assert staging.copied_sha256(staged) is None
    with pytest.raises(source.DamagedCacheError) as caught:
        [src.record_bytes(i) for i in range(len(src))]
    message = str(caught.value)
    assert f"this is the local copy of {url}/{SHARD}, damaged since it was fetched" in message
    assert "the remote shard is as prepare wrote it" not in message
    assert "if the fresh copy fails alike, the remote shard is damaged" in message
    assert _records(url) == _records(caches["v1"])


def test_a_damaged_remote_shard_is_named_as_the_remote_s_and_a_repair_is_fetched(caches,
                                                                                 remote):
    url, publish = remote
    size = (caches["v1"] / SHARD).stat().st_size
    publish("v1", lambda name, data: _flip(data, size // 2) if name == SHARD else data)
    with pytest.raises(source.DamagedCacheError) as caught:
        _records(url)
    message = str(caught.value)
    staged = os.path.join(source.CacheSource(url).cache_dir, SHARD)
    expected = source.load_index(str(caches["v1"]))["shards"][0]["sha256"]
    assert message.startswith(f"{url}/{SHARD}: record ")
    assert (f"in its local copy {staged}, whose bytes are the remote's: their SHA-256 is "
            f"{fingerprint.of_file(staged)['sha256'][:12]}..., not the {expected[:12]}... "
            "index.json records; the cache is damaged: delete this shard and its .json sidecar "
            "and rerun `crema-jax prepare` into the same --out") in message
    assert "\n" not in message
    publish("v1")            # the remote repaired, its index.json unchanged
    assert _records(url) == _records(caches["v1"])
