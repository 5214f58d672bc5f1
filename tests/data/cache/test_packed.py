"""Packed per-record columns (data/cache/packed.py) against plain Python lists, and a cache
source's columns against its index.json read here with json."""
import json
import os
import pickle
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

from crema_jax.data.cache.packed import PackedLabels, PackedStrings
from crema_jax.data.cache.source import CacheSource

TEXTS = ["/data/a/E1", "", "été/ü/ß", "x" * 300, "name\udcffbad", "/data/a/E1"]


def test_packed_strings_give_back_each_text():
    packed = PackedStrings(TEXTS)
    assert len(packed) == len(TEXTS) and list(packed) == TEXTS
    assert [packed[i] for i in range(-len(TEXTS), 0)] == TEXTS
    assert list(packed.take([5, 0, 3, 3])) == [TEXTS[5], TEXTS[0], TEXTS[3], TEXTS[3]]
    assert list(pickle.loads(pickle.dumps(packed))) == TEXTS
    assert list(PackedStrings([])) == []
    with pytest.raises(IndexError):
        packed[len(TEXTS)]


def test_packed_labels_match_a_multi_hot_written_here():
    vocabulary = ["AF", "SB", "RBBB", "LBBB"]
    labels = [["SB", "AF"], [], ["not in vocabulary"], ["LBBB", "RBBB", "AF"], ["SB"]]
    expected = np.zeros((5, 4), np.float32)
    for row, names in enumerate(labels):
        for name in names:
            if name in vocabulary:
                expected[row, vocabulary.index(name)] = 1
    packed = PackedLabels(labels, vocabulary)
    np.testing.assert_array_equal(packed.dense(), expected)
    for row in range(5):
        np.testing.assert_array_equal(packed.multi_hot(row), expected[row])
    assert packed.names(3) == ["LBBB", "RBBB", "AF"]
    kept = packed.take([3, 0, 1], ["RBBB", "AF"])
    np.testing.assert_array_equal(kept.dense(), [[1, 1], [0, 1], [0, 0]])
    assert PackedLabels([[], []], ["AF"]).dense().shape == (2, 1)


def test_a_million_paths_would_cost_their_bytes_not_a_python_object_each():
    paths = [f"/data/mimic-iv-ecg/files/p{i:08d}/s{i:08d}/{i:08d}" for i in range(20_000)]
    tracemalloc.start()
    packed = PackedStrings(paths)
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    text = sum(len(p) for p in paths)
    # A list of str holds ~49 bytes of header + 8 of pointer per path on top of the text.
    assert held < text + 10 * len(paths), (held, text)
    assert packed[12_345] == paths[12_345]


@pytest.mark.slow
def test_cache_source_columns_are_its_index(tmp_path, cinc_sample_dir):
    out = tmp_path / "cache"
    cli = os.path.join(os.path.dirname(sys.executable), "crema-jax")
    done = subprocess.run([cli, "prepare", f"--root={cinc_sample_dir}", f"--out={out}",
                           "--records_per_shard=16", "--workers=1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    index = json.loads((out / "index.json").read_text())
    rows = [r for r in index["records"] if r["split"] == "train"]
    source = CacheSource(str(out), split="train")
    assert list(source.record_ids) == [r["record_id"] for r in rows]
    assert list(source.paths) == [r["path"] for r in rows]
    names = index["label_names"]
    for i, r in enumerate(rows):
        assert [names[j] for j in np.flatnonzero(source[i]["labels"])] == \
            [n for n in names if n in r["labels"]]
    picked, vocabulary = [4, 0, 2], names[::3]
    subset = source.subset(picked, vocabulary)
    assert list(subset.paths) == [rows[i]["path"] for i in picked]
    np.testing.assert_array_equal(
        subset.labels, [[float(n in rows[i]["labels"]) for n in vocabulary] for i in picked])
    again = pickle.loads(pickle.dumps(subset))
    assert [again.record_bytes(i) for i in range(3)] == [source.record_bytes(i) for i in picked]
