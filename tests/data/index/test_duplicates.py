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
