"""Records told apart by the bytes of their signal files (hashlib here), not by name."""
import hashlib

from crema_jax.data.index import duplicates
from crema_jax.data.index.dataset_index import RecordInfo


def _record(folder, name, signal: bytes, header: str = "") -> RecordInfo:
    (folder / f"{name}.dat").write_bytes(signal)
    (folder / f"{name}.hea").write_text(header or f"{name} 12 500 5000\n")
    return RecordInfo(name, str(folder / name), ("AF",), "train", "s")


def test_same_bytes_merge_and_a_late_difference_keeps_two_records(tmp_path):
    body = bytes(range(256)) * 64                 # 16 KiB: longer than the 4 KiB fingerprint
    late = body[:-1] + b"\x00"                    # the same first 16383 bytes
    infos = [_record(tmp_path, "A1", body), _record(tmp_path, "B7", body),   # headers differ
             _record(tmp_path, "C2", late)]
    infos.append(RecordInfo("A1-again", infos[0].path, ("AF",), "test", "s"))
    keys = duplicates.content_keys(infos)
    whole = hashlib.sha256(f"{len(body)}:".encode() + body).hexdigest()
    assert keys[0] == keys[1] == keys[3] == f"sha256:{whole}"
    assert keys[2] != keys[0]
    found = duplicates.find(infos)
    assert [i.record_id for i in found.kept] == ["A1", "C2"]
    assert found.groups == [["A1", "B7", "A1-again"]] and found.merged == 2


def test_rows_of_an_array_file_are_told_apart_by_their_locator(tmp_path):
    (tmp_path / "x.npy").write_bytes(b"\x93NUMPY")
    infos = [RecordInfo(str(i), f"{tmp_path / 'x.npy'}#{row}", (), "train", "s")
             for i, row in enumerate((0, 1, 0))]
    found = duplicates.find(infos)
    assert [i.record_id for i in found.kept] == ["0", "1"] and found.groups == [["0", "2"]]


def test_records_under_a_url_have_the_keys_of_their_local_copies(tmp_path):
    """The same bytes under memory:// (as under gs://) and on disk: one content_key (what
    prepare stores), the SHA-256 of the signal file's size and bytes (read a range at a time:
    longer than one 1 MiB range)."""
    import uuid

    import fsspec
    body = bytes(range(256)) * (10 * 1024 + 7)          # 2.5 MiB: three ranged reads
    other = body[:-1] + b"\x01"
    fs, base = fsspec.filesystem("memory"), f"memory://dups-{uuid.uuid4().hex}"
    try:
        for name, signal in (("A1", body), ("B7", body), ("C2", other)):
            fs.pipe(f"{base}/{name}.dat", signal)
            fs.pipe(f"{base}/{name}.hea", f"{name} 12 500 5000\n".encode())
        local = [_record(tmp_path, name, signal) for name, signal in
                 (("A1", body), ("B7", body), ("C2", other))]
        remote = [RecordInfo(i.record_id, f"{base}/{i.record_id}", i.labels, i.split, i.source)
                  for i in local]
        whole = [f"sha256:{hashlib.sha256(f'{len(b)}:'.encode() + b).hexdigest()}"
                 for b in (body, body, other)]
        assert [duplicates.content_key(i.path) for i in remote] == whole
        assert [duplicates.content_key(i.path) for i in local] == whole
        # Indexing for evaluation keys a URL by itself: the copy B7 is not found, a URL listed
        # twice is (no store is asked about each record).
        again = RecordInfo("A1-again", remote[0].path, ("AF",), "test", "s")
        assert duplicates.content_keys(remote) == [f"path:{i.path}" for i in remote]
        assert duplicates.find([*remote, again]).groups == [["A1", "A1-again"]]
        assert duplicates.content_key(f"{base}/none") == f"path:{base}/none"  # no files
    finally:
        fs.rm(base, recursive=True)
