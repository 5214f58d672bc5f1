"""Array digests: the documented formula, computed here in plain Python from each array's bytes,
equals what the host (numpy) and device (jit) paths give; and a checkpoint whose data files
changed after saving (same size, one byte or a block) is refused by name, not read as weights."""
import pathlib
import shutil
import struct

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from crema_jax.runtime import checkpoint, digests

M = 1 << 32


def _reference(x: np.ndarray) -> list[int]:
    """The module docstring's sums, in Python integers from the array's little-endian bytes."""
    raw = np.ascontiguousarray(x).astype(np.uint8 if x.dtype == np.bool_ else x.dtype).tobytes()
    size = 1 if x.dtype == np.bool_ else x.dtype.itemsize
    if size == 8:
        raw, size = raw, 4   # an 8-byte element is two words
    fmt = {1: "B", 2: "H", 4: "I"}[size]
    words = struct.unpack(f"<{len(raw) // size}{fmt}", raw)
    first = sum(w * (2 * i + 1) for i, w in enumerate(words)) % M
    second = sum((w ^ (i * 0x9E3779B9 % M)) * ((2 * i * i + 1) % M)
                 for i, w in enumerate(words)) % M
    return [first, second]


def _arrays():
    rng = np.random.default_rng(3)
    return {"w": rng.standard_normal((13, 7)).astype(np.float32),
            "half": rng.standard_normal(9).astype(ml_dtypes.bfloat16),
            "ids": rng.integers(-5, 2**31 - 1, 6).astype(np.int32),
            "mask": np.array([True, False, True]),
            "scalar": np.float32(-0.0),
            "empty": np.zeros((0, 4), np.float32),
            "blocks": {0: {"b": rng.standard_normal(5).astype(np.float32)}}}


@pytest.mark.parametrize("host_digest_bytes", [0, digests.HOST_DIGEST_BYTES])
def test_host_and_device_digests_equal_the_formula_from_the_bytes(host_digest_bytes,
                                                                   monkeypatch):
    """jax arrays through the jitted program (0: none digested in numpy) and through numpy (a
    little state on CPU, the default)."""
    monkeypatch.setattr(digests, "HOST_DIGEST_BYTES", host_digest_bytes)
    programs = []
    jitted = digests._device_digests
    monkeypatch.setattr(digests, "_device_digests", lambda leaves: programs.append(1) or
                        jitted(leaves))
    tree = _arrays()
    expected = {"w": _reference(tree["w"]), "half": _reference(tree["half"]),
                "ids": _reference(tree["ids"]), "mask": _reference(tree["mask"]),
                "scalar": _reference(np.asarray(tree["scalar"])), "empty": [0, 0],
                "blocks/0/b": _reference(tree["blocks"][0]["b"])}
    host = digests.of_tree(tree)
    device = digests.of_tree({k: (jnp.asarray(v) if not isinstance(v, dict) else
                                  {0: {"b": jnp.asarray(v[0]["b"])}}) for k, v in tree.items()})
    assert {name: entry["sums"] for name, entry in host.items()} == expected
    assert device == host
    assert len(programs) == (1 if host_digest_bytes == 0 else 0)
    assert host["half"]["dtype"] == "bfloat16" and host["w"]["shape"] == [13, 7]
    assert _reference(np.float32(-0.0).reshape(1)) == [2**31, (2**31 * 1) % M]   # by hand


def test_a_float64_host_array_counts_two_words_per_element():
    x = np.array([1.0, -2.5], np.float64)
    assert digests.of_tree({"x": x})["x"]["sums"] == _reference(x)


def test_host_chunks_continue_the_positions(monkeypatch):
    x = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    monkeypatch.setattr(digests, "_CHUNK", 64)
    assert digests.of_tree({"x": x})["x"]["sums"] == _reference(x)


def test_one_changed_word_or_two_swapped_words_change_the_digest():
    x = np.random.default_rng(1).standard_normal(50).astype(np.float32)
    flipped = x.copy()
    flipped.view(np.uint32)[17] ^= 1 << 30
    swapped = x.copy()
    swapped[[3, 40]] = swapped[[40, 3]]
    base = digests.of_tree({"x": x})["x"]
    assert digests.of_tree({"x": flipped})["x"] != base
    assert digests.of_tree({"x": swapped})["x"] != base
    assert digests.mismatches({"x": flipped, "y": swapped, "z": x},
                              {"x": base, "y": base, "z": base}) == ["x", "y"]
    assert digests.mismatches({"x": x, "new": x}, {"x": base}) == []   # no saved digest: unjudged


@pytest.fixture()
def saved(tmp_path):
    rng = np.random.default_rng(4)
    params = {"encoder": {"w": rng.standard_normal((200, 300)).astype(np.float32)},
              "blocks": {0: {"b": rng.standard_normal(8).astype(np.float32)}}}
    step_dir = pathlib.Path(str(checkpoint.save_model_checkpoint(tmp_path / "run", params,
                                                                 {"model": {}}, step=3)))
    return tmp_path / "run", step_dir, params


def _largest_data_file(step_dir):
    return max((p for p in (step_dir / "params").rglob("*") if p.is_file()
                and p.parent.name == "d"), key=lambda p: p.stat().st_size)


def test_a_checkpoint_reads_back_with_its_digests(saved):
    run, step_dir, params = saved
    written = (step_dir / "digests" / "metadata").read_text()
    assert '"encoder/w"' in written and '"blocks/0/b"' in written
    loaded, _, step = checkpoint.load_model_checkpoint(run)
    assert step == 3 and np.array_equal(loaded["encoder"]["w"], params["encoder"]["w"])


@pytest.mark.parametrize("where", [0.3, 0.5, 0.9])
@pytest.mark.parametrize("how", ["bit", "block"])
def test_data_changed_after_saving_is_refused_by_name(saved, where, how):
    run, step_dir, _ = saved
    data = _largest_data_file(step_dir)
    raw = bytearray(data.read_bytes())
    at = int(len(raw) * where)
    if how == "bit":
        raw[at] ^= 0x04
    else:   # 64 bytes of the array copied over another 64 (a misdirected write)
        raw[at:at + 64] = raw[at - 4096:at - 4096 + 64]
    data.write_bytes(bytes(raw))
    with pytest.raises(checkpoint.DamagedCheckpointError) as raised:
        checkpoint.load_model_checkpoint(run)
    message = str(raised.value)
    assert message.startswith(f"{step_dir / 'params'}: damaged, 1 saved array differs from the "
                              f"digests in {step_dir / 'digests' / 'metadata'} (first: encoder/w)")
    assert "\n" not in message


def test_a_step_saved_without_digests_still_reads(saved):
    run, step_dir, params = saved
    shutil.rmtree(step_dir / "digests")
    loaded, _, _ = checkpoint.load_model_checkpoint(run)
    assert np.array_equal(loaded["blocks"][0]["b"], params["blocks"][0]["b"])


def test_a_damaged_digests_file_is_named(saved):
    run, step_dir, _ = saved
    file = step_dir / "digests" / "metadata"
    file.write_text(file.read_text()[:-10])
    with pytest.raises(checkpoint.DamagedCheckpointError, match=f"^{file}: damaged \\("):
        checkpoint.load_model_checkpoint(run)
    file.write_text('{"format": "%s", "params": [1, 2]}' % digests.FORMAT)
    with pytest.raises(checkpoint.DamagedCheckpointError,
                       match=f"^{file}: damaged \\('params' holds a list, expected a mapping\\)"):
        checkpoint.load_model_checkpoint(run)
