"""runtime/files.py's judgements of paths: what kind a file is (special_kind), whether a path
lies inside a folder (inside); the .npz writer (write_npz_atomic)."""
import os
import socket
import stat

import numpy as np
import pytest

from crema_jax.runtime import files


@pytest.fixture
def kinds(tmp_path):
    """One path of every kind, and links to some of them."""
    (tmp_path / "plain").write_bytes(b"x")
    (tmp_path / "folder").mkdir()
    os.mkfifo(tmp_path / "fifo")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "sock"))
    for name in ("plain", "folder", "fifo"):
        os.symlink(tmp_path / name, tmp_path / f"to_{name}")
    os.symlink(tmp_path / "nothing", tmp_path / "dangling")
    yield tmp_path
    listener.close()


@pytest.mark.parametrize("name, followed, not_followed", [
    ("plain", None, None), ("missing", None, None), ("folder", "a folder", "a folder"),
    ("fifo", "a FIFO", "a FIFO"), ("sock", "a socket", "a socket"),
    ("to_plain", None, None), ("to_folder", "a folder", None), ("to_fifo", "a FIFO", None),
    ("dangling", None, None)])
def test_special_kind_follows_links_only_when_asked(kinds, name, followed, not_followed):
    assert files.special_kind(kinds / name, follow_links=True) == followed
    assert files.special_kind(kinds / name, follow_links=False) == not_followed


def test_a_device_is_named_as_one():
    assert files.special_kind("/dev/null", follow_links=False) == "a character device"
    assert files.kind_of(stat.S_IFBLK | 0o600) == "a block device"
    assert files.kind_of(stat.S_IFREG | 0o644) is None
    assert files.kind_of(stat.S_IFLNK | 0o777) is None
    assert files.kind_of(0o644) == "a special file"   # no type bits: none of the known kinds


@pytest.fixture
def tree(tmp_path):
    """tmp_path/data (the folder), tmp_path/data2 (a sibling sharing its name's start), links
    in data/ to a file outside, to data2, to a file inside, and a folder linked to data itself."""
    data, data2 = tmp_path / "data", tmp_path / "data2"
    (data / "sub").mkdir(parents=True)
    data2.mkdir()
    (data / "sub" / "r.dat").write_bytes(b"x")
    (data2 / "r.dat").write_bytes(b"x")
    (tmp_path / "secret").write_bytes(b"x")
    os.symlink(tmp_path / "secret", data / "out_link")
    os.symlink(data2, data / "to_data2")
    os.symlink("sub/r.dat", data / "in_link")
    os.symlink(data, tmp_path / "data_link")
    return tmp_path


@pytest.mark.parametrize("path, expected", [
    ("sub/r.dat", True), ("sub", True), ("not_there_yet.dat", True), ("in_link", True),
    ("sub/../sub/r.dat", True),
    ("", False), (".", False), ("sub/..", False),           # the folder itself
    ("..", False), ("../secret", False), ("sub/../../secret", False),
    ("../data2/r.dat", False),                              # a sibling named data2
    ("out_link", False), ("to_data2/r.dat", False),         # links that lead out
    ("/etc/passwd", False), ("bad\0name", False)])   # a NUL byte: no path
def test_inside_resolves_dots_and_links_before_judging(tree, path, expected):
    assert files.inside(tree / "data")(path) is expected


def test_inside_takes_absolute_paths_and_a_linked_folder_as_what_they_lead_to(tree):
    data = tree / "data"
    assert files.inside(data)(data / "sub" / "r.dat") and not files.inside(data)(tree / "data2")
    assert files.inside(tree / "data_link")(data / "sub" / "r.dat")   # the folder a link
    assert files.inside(tree / "data_link")("sub/r.dat")
    assert not files.inside(tree / "data_link")(tree / "data2" / "r.dat")
    assert files.inside("/")("/etc") and not files.inside("/")("/")


def test_write_npz_atomic_writes_the_arrays_under_the_name_given(tmp_path):
    """np.savez given a name appends ".npz" to one without it; the arrays read back whole."""
    path = tmp_path / "cell.part"
    files.write_npz_atomic(path, {"values": np.arange(6.0).reshape(2, 3),
                                  "ids": np.asarray(["a", "b"])})
    assert sorted(os.listdir(tmp_path)) == ["cell.part"]
    with np.load(path) as saved:
        assert saved["values"].tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
        assert saved["ids"].tolist() == ["a", "b"]


def test_write_npz_atomic_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):

    class Broken:
        def __array__(self, dtype=None, copy=None):
            raise RuntimeError("disk full")

    path = tmp_path / "features.npz"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        files.write_npz_atomic(path, {"ok": np.zeros(3), "bad": Broken()})
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["features.npz"]
