"""Outputs named by a URL: runtime/files.py refuses them (its writers had made the local folders
gs:/bucket/... under the current one), runtime/storage.py checks them on the store and writes
them through local temporary files, uploaded as a group (fsspec's memory:// as the store)."""
import errno
import os
import uuid

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from crema_jax.runtime import files, made_folders, storage


@pytest.fixture
def bucket():
    """A fresh memory:// folder and its file system; removed after the test."""
    fs = fsspec.filesystem("memory")
    base = f"memory://url-outputs-{uuid.uuid4().hex}"
    yield fs, base
    if fs.exists(base):
        fs.rm(base, recursive=True)


def _text_writer(text: str):
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    return write


def test_the_local_writers_refuse_a_url_and_make_no_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(files.OutputError) as raised:
        files.check_output_file("gs://bucket/x.safetensors", flag="--out")
    assert str(raised.value) == (
        "--out=gs://bucket/x.safetensors: a URL, but this output is written as a local file "
        "only; name a local path (and copy it to the store after)")
    with pytest.raises(files.OutputError, match=r"^--workdir=s3://bucket/cmp: a URL, but this "
                                                r"output is written as a local folder only; "):
        files.check_output_dir("s3://bucket/cmp", marker=None, flag="--workdir")
    with pytest.raises(files.OutputError, match=r"^gs://bucket/e\.npy: a URL, written here as "
                                                r"a local path; "):
        files.write_atomic_group([("gs://bucket/e.npy", _text_writer("x"))])
    with pytest.raises(files.OutputError, match=r"^--hub_folder: gs://bucket/hub is a URL; "):
        files.make_folder("gs://bucket/hub", "--hub_folder")
    assert made_folders.note("gs://bucket/new/p.png") == ""
    assert list(tmp_path.iterdir()) == []   # no "gs:" nor "s3:" folder


def test_a_url_output_is_checked_on_its_store(bucket):
    fs, base = bucket
    fs.pipe(f"{base}/old.npy", b"old")
    fs.pipe(f"{base}/folder/inside.npy", b"x")
    assert storage.check_output_file(f"{base}/new.npy") == f"{base}/new.npy"
    assert storage.check_output_file(f"{base}/old.npy", overwrite=True) == f"{base}/old.npy"
    assert storage.check_output_file(f"{base}/old.npy", owned=lambda p: p.endswith("old.npy"))
    for path, kwargs, said in (
            (f"{base}/old.npy", {}, f"--out={base}/old.npy: the file exists; choose a new name "
                                    "or pass --overwrite"),
            (f"{base}/folder", {"flag": "--embed"}, f"--embed={base}/folder: a folder; "
                                                    "expected a file name"),
            (f"{base}/folder/y.npy", {"inputs": ["/local/x", f"{base}/folder/"]},
             f"--out={base}/folder/y.npy: that is an input of this command ({base}/folder/); "
             "choose another output")):
        with pytest.raises(files.OutputError) as raised:
            storage.check_output_file(path, **kwargs)
        assert str(raised.value) == said
    with pytest.raises(ValueError, match=r"^--out=nosuch://bucket/y\.npy: Protocol not known: "
                                         r"nosuch; expected a local path or a URL"):
        storage.check_output_file("nosuch://bucket/y.npy")
    assert fs.cat(f"{base}/old.npy") == b"old"


def test_a_group_of_urls_is_uploaded_whole(bucket):
    fs, base = bucket
    fs.pipe(f"{base}/out/Y.records.txt", b"an earlier run's names\n")
    storage.write_atomic_group([(f"{base}/out/Y.npy", _text_writer("rows")),
                                (f"{base}/out/Y.records.txt", _text_writer("0\n1\n"))])
    assert fs.cat(f"{base}/out/Y.npy") == b"rows"
    assert fs.cat(f"{base}/out/Y.records.txt") == b"0\n1\n"
    assert sorted(os.path.basename(p) for p in fs.ls(f"{base}/out", detail=False)) == [
        "Y.npy", "Y.records.txt"]   # no temporary left beside them
    storage.write_atomic(f"{base}/one.png", _text_writer("png"))
    assert fs.cat(f"{base}/one.png") == b"png"


def test_a_write_that_fails_leaves_every_old_object(bucket):
    """A full local disk while the second file is written: the error names its URL, not the
    local temporary file, and neither object is replaced."""
    fs, base = bucket
    fs.pipe(f"{base}/x.safetensors", b"old weights")
    fs.pipe(f"{base}/x.json", b"old config")

    def full(tmp):
        raise OSError(errno.ENOSPC, "No space left on device", tmp)

    with pytest.raises(OSError) as raised:
        storage.write_atomic_group([(f"{base}/x.safetensors", _text_writer("new weights")),
                                    (f"{base}/x.json", full)])
    assert str(raised.value) == (f"[Errno 28] cannot write {base}/x.json: No space left on "
                                 "device")
    assert (fs.cat(f"{base}/x.safetensors"), fs.cat(f"{base}/x.json")) == (b"old weights",
                                                                          b"old config")
    assert sorted(os.path.basename(p) for p in fs.ls(base, detail=False)) == [
        "x.json", "x.safetensors"]


def test_an_upload_that_fails_leaves_every_old_object(bucket, monkeypatch):
    """The store drops the connection on the second upload: the first file, uploaded, is not
    put in place either, and its temporary is removed."""
    fs, base = bucket
    fs.pipe(f"{base}/x.safetensors", b"old weights")
    fs.pipe(f"{base}/x.json", b"old config")
    put = MemoryFileSystem.put_file
    calls = []

    def put_file(self, lpath, rpath, **kwargs):
        calls.append(rpath)
        if len(calls) == 2:
            raise ConnectionResetError("reset by peer")
        return put(self, lpath, rpath, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, "put_file", put_file)
    with pytest.raises(OSError, match=rf"^{base}/x\.json: ConnectionResetError: reset by peer$"):
        storage.write_atomic_group([(f"{base}/x.safetensors", _text_writer("new weights")),
                                    (f"{base}/x.json", _text_writer("new config"))])
    assert len(calls) == 2
    assert (fs.cat(f"{base}/x.safetensors"), fs.cat(f"{base}/x.json")) == (b"old weights",
                                                                          b"old config")
    assert sorted(os.path.basename(p) for p in fs.ls(base, detail=False)) == [
        "x.json", "x.safetensors"]


def test_one_group_never_mixes_local_paths_and_urls(bucket, tmp_path):
    fs, base = bucket
    with pytest.raises(ValueError, match="mixes local paths and URLs"):
        storage.write_atomic_group([(str(tmp_path / "a"), _text_writer("a")),
                                    (f"{base}/b", _text_writer("b"))])
    assert list(tmp_path.iterdir()) == [] and not fs.exists(f"{base}/b")

