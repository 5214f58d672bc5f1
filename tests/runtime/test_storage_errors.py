"""A store that cannot be reached is named as such, with its URL: fsspec's isdir/isfile/exists
answer False on any OSError, so an unreachable store had read as a missing folder, and a refused
connection had said only "[Errno 111] Connection refused"."""
import socket

import fsspec
import pytest
from fsspec.spec import AbstractFileSystem

from crema_jax.runtime import storage
from tests.cli.conftest import run_in_process


class _ResetStore(AbstractFileSystem):
    """Every request fails as a dropped connection does."""
    protocol = "resetstore"

    def info(self, path, **kwargs):
        raise ConnectionResetError(104, "Connection reset by peer")

    def ls(self, path, detail=True, **kwargs):
        raise ConnectionResetError(104, "Connection reset by peer")


class _RefusingStore(AbstractFileSystem):
    """A store client whose errors are not OSErrors (as ftplib's and some object stores' are)."""
    protocol = "refusingstore"

    class StoreError(Exception):
        pass

    def info(self, path, **kwargs):
        raise self.StoreError("403 forbidden")

    def ls(self, path, detail=True, **kwargs):
        raise self.StoreError("403 forbidden")


@pytest.fixture(autouse=True)
def _stores():
    fsspec.register_implementation("resetstore", _ResetStore, clobber=True)
    fsspec.register_implementation("refusingstore", _RefusingStore, clobber=True)


@pytest.mark.parametrize("test", [storage.isdir, storage.isfile, storage.exists])
def test_an_unreachable_store_is_an_error_naming_the_url_not_a_missing_path(test):
    url = "resetstore://bucket/records"
    fs, inner = fsspec.core.url_to_fs(url)
    assert not getattr(fs, test.__name__)(inner)  # fsspec's own answer: a silent "absent"
    with pytest.raises(OSError, match=r"^resetstore://bucket/records: ConnectionResetError: "
                                      r"\[Errno 104\] Connection reset by peer$"):
        test(url)


def test_an_absent_path_on_a_reachable_store_is_still_false():
    fs = fsspec.filesystem("memory")
    fs.pipe("/storage-errors/a.hea", b"x")
    try:
        assert storage.isfile("memory://storage-errors/a.hea")
        assert not storage.isfile("memory://storage-errors/b.hea")
        assert not storage.isdir("memory://storage-errors/none")
        assert not storage.exists("memory://storage-errors/none")
        assert storage.isdir("memory://storage-errors")
    finally:
        fs.rm("/storage-errors", recursive=True)


def test_a_store_error_that_is_no_oserror_becomes_one_naming_the_url():
    with pytest.raises(OSError, match=r"^refusingstore://b/x\.hea: StoreError: 403 forbidden$"):
        storage.read_bytes("refusingstore://b/x.hea")
    with pytest.raises(OSError, match=r"^refusingstore://b/d: StoreError: 403 forbidden$"):
        storage.walk("refusingstore://b/d", (".hea",))


def test_a_missing_remote_file_stays_file_not_found_and_names_the_url():
    with pytest.raises(FileNotFoundError, match=r"^memory://storage-errors-none/x: "):
        storage.read_range("memory://storage-errors-none/x", 0, 4)


def _refused_port() -> int:
    """A local port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_prepare_from_an_unreachable_store_names_the_url_in_one_line(tmp_path, capsys):
    url = "resetstore://bucket/records"
    done = run_in_process(capsys, "prepare", "--layout=wfdb_folder", f"--root={url}",
                          f"--out={tmp_path / 'cache'}")
    assert done.returncode == 1
    err = done.stderr.strip()
    assert err == (f"crema-jax prepare: error: {url}: ConnectionResetError: [Errno 104] "
                   "Connection reset by peer")
    assert not (tmp_path / "cache").exists()


def test_a_refused_ftp_connection_names_the_url(tmp_path, capsys):
    url = f"ftp://127.0.0.1:{_refused_port()}/records"
    done = run_in_process(capsys, "prepare", "--layout=wfdb_folder", f"--root={url}",
                          f"--out={tmp_path / 'cache'}")
    assert done.returncode == 1
    err = done.stderr.strip()
    assert err.startswith(f"crema-jax prepare: error: {url}: ConnectionRefusedError: ")
    assert "\n" not in err


class _ResetOnGetStore(AbstractFileSystem):
    """A store that lists a file, then drops the connection while sending it."""
    protocol = "resetongetstore"

    def get_file(self, rpath, lpath, **kwargs):
        with open(lpath, "wb") as f:
            f.write(b"half")
        raise ConnectionResetError(104, "Connection reset by peer")


def test_a_failed_download_names_the_url_not_a_temporary_file(tmp_path):
    """It had said "cannot write /tmp/.../.E1.mat.XXXX.tmp: Connection reset by peer"."""
    fsspec.register_implementation("resetongetstore", _ResetOnGetStore, clobber=True)
    url = "resetongetstore://bucket/E1.mat"
    with pytest.raises(OSError) as err:
        storage.download(url, str(tmp_path / "E1.mat"), missing_ok=True)
    assert str(err.value) == (f"{url}: ConnectionResetError: [Errno 104] Connection reset by "
                              "peer")
    assert list(tmp_path.iterdir()) == []   # nothing half-written left
    fs = fsspec.filesystem("memory")
    fs.pipe("/storage-errors/E2.mat", b"abc")
    try:
        assert not storage.download("memory://storage-errors/none.mat", str(tmp_path / "n"),
                                    missing_ok=True)
        with pytest.raises(FileNotFoundError, match="^memory://storage-errors/none.mat: no such"):
            storage.download("memory://storage-errors/none.mat", str(tmp_path / "n"))
        assert storage.download("memory://storage-errors/E2.mat", str(tmp_path / "E2.mat"))
        assert (tmp_path / "E2.mat").read_bytes() == b"abc"
    finally:
        fs.rm("/storage-errors", recursive=True)
