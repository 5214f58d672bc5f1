"""runtime/files.py's judgements of paths: what kind a file is (special_kind)."""
import os
import socket
import stat

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
