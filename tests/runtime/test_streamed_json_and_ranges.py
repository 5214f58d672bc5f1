"""files.write_json_streamed writes json.dumps's bytes without the list in memory; storage's
ranged reads and removal, on a local path and on fsspec's memory:// file system."""
import json
import uuid

import fsspec
import pytest

from crema_jax.runtime import files, storage

ROWS = [{"record_id": "E1", "labels": ["426783006"], "lead_present": [True, False],
         "repairs": {}, "path": "a/b \"quoted\"\nline", "length": 2500},
        {"record_id": "E2", "labels": [], "lead_present": [], "repairs": {"nan": 3}},
        {}, [], 7, "x", None, 1.5e-7]


@pytest.mark.parametrize("obj,items", [
    ({"settings": {"b": [1, {"c": None}], "a": {}}, "label_names": ["z", "a"],
      "shards": [{"file": "s.arrayrecord", "num_records": 2}]}, ROWS),
    ({"settings": {"x": 1}}, []),                          # an empty streamed list
    ({}, ROWS[:2]),                                        # the streamed key alone
    ({}, []),
    ({"zzz": "after", "aaa": "before"}, [{"é": "ü"}]),     # the key sorted among the others
])
def test_streamed_json_has_the_bytes_of_json_dumps(tmp_path, obj, items):
    path = tmp_path / "index.json"
    consumed = []

    def rows():  # a generator: the writer must take the items one at a time
        for item in items:
            consumed.append(item)
            yield item
    count = files.write_json_streamed(path, obj, "records", rows())
    expected = json.dumps({**obj, "records": items}, indent=1, sort_keys=True) + "\n"
    assert path.read_text(encoding="utf-8") == expected
    assert count == len(items) == len(consumed)
    assert json.loads(path.read_text())["records"] == items


def test_read_range_and_remove_on_a_local_path(tmp_path):
    data = bytes(range(256)) * 4
    path = tmp_path / "plan.jsonl"
    path.write_bytes(data)
    assert storage.read_range(path, 0, 5) == data[:5]
    assert storage.read_range(path, 300, 17) == data[300:317]
    assert storage.read_range(path, 1020, 100) == data[1020:]      # past the end: what is there
    storage.remove(path)
    assert not path.exists()
    storage.remove(path)                                            # absent: nothing to do


def test_read_range_and_remove_through_an_fsspec_url():
    fs = fsspec.filesystem("memory")
    url = f"memory://ranges-{uuid.uuid4().hex}/plan.jsonl"
    data = b"".join(b"line %d\n" % i for i in range(100))
    fs.pipe_file(url, data)
    try:
        assert storage.read_range(url, 0, 7) == data[:7]
        assert storage.read_range(url, 70, 8) == data[70:78]
        storage.remove(url)
        assert not fs.exists(url)
        storage.remove(url)
    finally:
        if fs.exists(url):
            fs.rm_file(url)
