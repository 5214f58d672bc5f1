"""prepare on an http:// root (a local http.server that counts the requests it answers): each
record's files are fetched once, read and hashed (content_key) from the one local copy."""
import collections
import functools
import hashlib
import http.server
import json
import threading

import pytest

from crema_jax.data.cache import prepare

NAMES = ("E07500", "E07501", "E07502")


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    def log_request(self, code="-", size="-"):
        self.server.requests[(self.command, self.path)] += 1

    def log_message(self, format, *args):  # no lines on the test's stderr
        pass


@pytest.fixture
def http_root(cinc_sample_dir, tmp_path):
    """(the root URL of a folder of NAMES served over HTTP, that folder, its request counter)."""
    folder = tmp_path / "served"
    folder.mkdir()
    for name in NAMES:
        for ext in (".hea", ".mat"):
            (folder / (name + ext)).write_bytes((cinc_sample_dir / (name + ext)).read_bytes())
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_CountingHandler, directory=str(folder)))
    server.requests = collections.Counter()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", folder, server.requests
    finally:
        server.shutdown()
        server.server_close()


def test_prepare_fetches_each_signal_file_of_a_url_record_once(http_root, tmp_path):
    """A record's signal file had been fetched twice (staged to be read, then read again
    through the store to hash it for content_key); its header three times."""
    url, folder, requests = http_root
    summary = prepare.prepare(layout="wfdb_folder", root=url, out=str(tmp_path / "cache"),
                              workers=1, records_per_shard=8)
    assert summary["records"] == len(NAMES)
    for name in NAMES:
        assert requests[("GET", f"/{name}.mat")] == 1, (name, dict(requests))
    rows = json.loads((tmp_path / "cache" / "index.json").read_text())["records"]
    expected = []
    for name in NAMES:
        data = (folder / f"{name}.mat").read_bytes()
        expected.append(f"sha256:{hashlib.sha256(f'{len(data)}:'.encode() + data).hexdigest()}")
    assert [r["content_key"] for r in rows] == expected
    assert [r["path"] for r in rows] == [url + name for name in NAMES]


def test_a_url_record_without_its_header_fetches_no_signal_file(http_root):
    """Its NAME.dat / NAME.mat had been downloaded whole, only for the record to be skipped
    as missing_header."""
    from crema_jax.data.reading import read
    from crema_jax.data.reading.ecg import RecordError
    url, folder, requests = http_root
    (folder / "E07500.hea").unlink()
    with pytest.raises(RecordError) as err:
        read.read(url + "E07500")
    assert err.value.reason == "missing_header"
    assert not [k for k in requests if k[1].startswith("/E07500.") and k[1] != "/E07500.hea"], \
        dict(requests)
    read.read(url + "E07501")   # a record with its header still fetches its signal file
    assert requests[("GET", "/E07501.mat")] == 1, dict(requests)
