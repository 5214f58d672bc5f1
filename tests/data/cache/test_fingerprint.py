"""A shard's fingerprint (data/cache/fingerprint.py): what prepare records of each shard file,
against hashlib run here on the file's bytes, and what the bounded check on read sees: the size,
the first and last 256 KiB, not the records between."""
import hashlib

import numpy as np
import pytest

from crema_jax.data.cache import fingerprint, shard_writer

RECORD = 60_000   # about one 10 s, 12-lead record at 250 Hz, int16
WINDOW = 256 * 1024


def _payloads(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, RECORD, dtype=np.uint8).tobytes() for _ in range(n)]


def test_the_recorded_fingerprint_is_the_files_size_and_digests(tmp_path):
    path = tmp_path / "big.arrayrecord"
    made = shard_writer.write_arrayrecord_atomic(str(path), _payloads(12))
    data = path.read_bytes()
    assert len(data) > 2 * WINDOW   # the ends only, not the whole file
    assert made == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                    "edge_sha256": hashlib.sha256(data[:WINDOW] + data[-WINDOW:]).hexdigest()}
    small = tmp_path / "small.arrayrecord"
    made = shard_writer.write_arrayrecord_atomic(str(small), _payloads(2))
    whole = hashlib.sha256(small.read_bytes()).hexdigest()
    assert made["size"] == len(small.read_bytes()) < 2 * WINDOW
    assert made["sha256"] == made["edge_sha256"] == whole   # short: its ends are all of it
    assert fingerprint.problem(str(small), made) is None


@pytest.mark.parametrize("changed, seen", [(0, True), (11, True), (6, False)],
                         ids=["first_record", "last_record", "middle_record"])
def test_the_check_sees_the_first_and_last_records_at_the_same_size(tmp_path, changed, seen):
    """The last 64 KiB of an ArrayRecord file are its footer and padding (equal in two shards of
    equal record sizes): the window reaches the last records. A middle record is left to
    Riegeli's chunk hashes: the check reads 512 KiB, not the file."""
    path = str(tmp_path / "shard.arrayrecord")
    payloads = _payloads(12)
    written = shard_writer.write_arrayrecord_atomic(path, payloads)
    payloads[changed] = _payloads(1, seed=1)[0]
    rewritten = shard_writer.write_arrayrecord_atomic(path, payloads)
    assert rewritten["size"] == written["size"] and rewritten["sha256"] != written["sha256"]
    problem = fingerprint.problem(path, written)
    if not seen:
        assert problem is None
        return
    assert problem == (f"does not hold the bytes prepare wrote there: the SHA-256 of its first "
                       f"and last 256 KiB is {rewritten['edge_sha256'][:12]}..., not "
                       f"{written['edge_sha256'][:12]}... (swapped with another shard, "
                       "replaced by one of another cache, or damaged)")


def test_a_cut_or_grown_file_is_told_by_its_size(tmp_path):
    path = tmp_path / "shard.arrayrecord"
    made = shard_writer.write_arrayrecord_atomic(str(path), _payloads(3))
    path.write_bytes(path.read_bytes()[:1000])
    assert fingerprint.problem(str(path), made) == (
        f"is 1000 bytes, not the {made['size']} prepare wrote (truncated, extended or replaced)")
    assert fingerprint.problem(str(path), {}) is None   # a cache from before fingerprints


@pytest.mark.parametrize("row, said", [
    ({"size": 1}, "it has ['size'] of the shard fingerprint ['size', 'sha256', 'edge_sha256']"),
    ({"size": True, "sha256": "a" * 64, "edge_sha256": "b" * 64},
     "its size is True, expected a byte count"),
    ({"size": 5, "sha256": "A" * 64, "edge_sha256": "b" * 64},
     f"its sha256 is {'A' * 64!r}, expected 64 hex digits"),
    ({"size": 5, "sha256": "a" * 64, "edge_sha256": None},
     "its edge_sha256 is None, expected 64 hex digits"),
])
def test_fingerprint_fields_that_cannot_be_right_are_named(row, said):
    assert fingerprint.fields_problem(row) == said
    assert fingerprint.fields_problem({"size": 0, "sha256": "a" * 64,
                                       "edge_sha256": "b" * 64}) is None
