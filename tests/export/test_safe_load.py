"""Safe loading: bad files give clear errors and write nothing; dtypes; no torch for safetensors."""
import json
import os
import re
import struct
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest
import safetensors.numpy
import safetensors.torch
import torch

from crema_jax import config as config_lib
from crema_jax.export import export_torch, import_torch, safe_load
from tests.references.ecgfounder_torch import Net1DRef

SMALL = dict(in_channels=1, filters=(16, 32), blocks=(1, 2), n_classes=3)


def _small_state_dict():
    torch.manual_seed(0)
    return Net1DRef(**SMALL).state_dict()


class CodePayload:
    """Unpickling this would create a marker file: a stand-in for arbitrary code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _assert_nothing_written(out):
    assert not out.exists() or not any(out.rglob("*")), sorted(out.rglob("*"))


def test_truncated_safetensors_is_refused_and_nothing_written(tmp_path):
    path = tmp_path / "net.safetensors"
    safetensors.torch.save_file(_small_state_dict(), str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    out = tmp_path / "imported"
    with pytest.raises(safe_load.CheckpointFileError, match="truncated"):
        import_torch.run_import(str(path), "ecgfounder", str(out))
    _assert_nothing_written(out)


class SystemPayload:
    """Unpickling calls os.system (torch's unpickler words this global "blocked")."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("payload, named", [  # as pickle names the functions
    (CodePayload, f"{open.__module__}.open"), (SystemPayload, f"{os.system.__module__}.system")])
def test_pickle_with_code_is_refused_without_running_it(tmp_path, payload, named):
    """A pickle calling os.system had been called bytes that "do not unpickle", with torch's
    advice to load it with weights_only=False passed on."""
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": _small_state_dict(), "extra": payload(str(marker))}, path)
    assert not marker.exists()
    out = tmp_path / "imported"
    with pytest.raises(safe_load.UnsafeCheckpointError) as refused:
        import_torch.run_import(str(path), "ecgfounder", str(out))
    assert str(refused.value) == (
        f"{path}: refused. This file needs arbitrary Python objects unpickled (it names "
        f"{named}), which can run code; only plain tensors, dicts, lists and numbers are loaded "
        "(torch.load with weights_only=True). Re-save the weights alone, e.g. "
        "torch.save({'model': model.state_dict()}, path), or as .safetensors")
    assert not marker.exists()
    _assert_nothing_written(out)


def test_renamed_key_is_listed_and_nothing_written(tmp_path):
    sd = _small_state_dict()
    sd["dense.weights"] = sd.pop("dense.weight")
    path = tmp_path / "renamed.pth"
    torch.save({"state_dict": sd}, path)
    out = tmp_path / "imported"
    with pytest.raises(safe_load.CheckpointFileError) as err:
        import_torch.run_import(str(path), "ecgfounder", str(out))
    message = str(err.value)
    assert "missing keys (1): dense.weight. " in message
    assert "unexpected keys (1): dense.weights" in message
    _assert_nothing_written(out)


def test_every_problem_is_listed_at_once():
    sd = {"a": np.zeros((2, 3)), "b": np.zeros((4, 5)), "extra": np.zeros(1)}
    with pytest.raises(safe_load.CheckpointFileError) as err:
        safe_load.check_state_dict(sd, {"a": (3, 2), "b": (4,), "c": (5,)}, path="f.pth",
                                   layout="x")
    assert str(err.value) == (
        "f.pth: does not match the 'x' layout of the configured model: missing keys (1): c. "
        "unexpected keys (1): extra. mis-shaped keys (2): a: file (2, 3), expected (3, 2); "
        "b: file (4, 5), expected (4,)")


def test_half_precision_weights_are_upcast(tmp_path):
    values = np.array([1.0, -2.5, 3.140625, 1e-3], np.float32)
    bf16 = values.astype(ml_dtypes.bfloat16)
    safetensors.torch.save_file({"w": torch.tensor(values).bfloat16(),
                                 "h": torch.tensor(values).half()}, str(tmp_path / "x.safetensors"))
    tensors, _ = safe_load.read_safetensors(str(tmp_path / "x.safetensors"))
    assert tensors["w"].dtype == np.float32 and tensors["h"].dtype == np.float32
    np.testing.assert_array_equal(tensors["w"], bf16.astype(np.float32))
    np.testing.assert_array_equal(tensors["h"], values.astype(np.float16).astype(np.float32))
    torch.save({"model": {"w": torch.tensor(values).bfloat16()}}, tmp_path / "x.pth")
    loaded = safe_load.read_torch_file(str(tmp_path / "x.pth"))
    assert loaded["model"]["w"].dtype == np.float32
    np.testing.assert_array_equal(loaded["model"]["w"], bf16.astype(np.float32))


def test_safetensors_reading_needs_no_torch(tmp_path):
    path = tmp_path / "x.safetensors"
    safetensors.numpy.save_file({"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, str(path))
    code = ("import sys; sys.modules['torch'] = None\n"
            "from crema_jax.export import safe_load\n"
            f"t, _ = safe_load.read_safetensors({str(path)!r}); print(t['w'].sum())\n"
            "try:\n    safe_load.import_torch('x')\nexcept ImportError as e:\n    print(e)\n"
            "try:\n    import crema_jax.export.torch_sit\nexcept ImportError as e:\n    print(e)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    lines = result.stdout.splitlines()
    assert lines[0] == "15.0"
    assert "pip install crema_jax[torch]" in lines[1]
    assert "torch_sit needs PyTorch" in lines[2] and "pip install crema_jax[torch]" in lines[2]


def test_import_then_export_through_the_checkpoint(tmp_path):
    """import-torch writes a checkpoint; export-torch reads it back to identical tensors."""
    sd = _small_state_dict()
    path = tmp_path / "small.pth"
    torch.save({"state_dict": sd, "epoch": 1}, path)
    out = tmp_path / "ckpt"
    import_torch.run_import(str(path), "ecgfounder", str(out))
    params, config, step = config_lib.load_checkpoint(str(out))
    assert config.model.name == "net1d" and config.model.in_channels == 1
    assert list(config.model.filters) == [16, 32] and list(config.model.blocks) == [1, 2]
    with pytest.raises(ValueError, match=r"already holds an import \(checkpoints/0\)"):
        import_torch.run_import(str(path), "ecgfounder", str(out))   # never into a used folder
    pth, side = export_torch.run_export(str(out), str(tmp_path / "back.pth"))
    back = torch.load(pth, weights_only=True)["state_dict"]
    assert sorted(back) == sorted(sd)
    for key, value in sd.items():
        if ".bn" not in key and "first_bn" not in key:
            assert torch.equal(back[key], value), key
    assert os.path.isfile(side)


def _nested(depth):
    x = torch.zeros(1)
    for _ in range(depth):
        x = [x]
    return x


@pytest.mark.parametrize("make,fragment", [
    (lambda: {"w": torch.eye(3).to_sparse()}, "tensor w (torch.sparse_coo"),
    (lambda: {"w": torch.zeros(3, device="meta")},
     "tensor w (torch.strided, torch.float32, on meta"),
    (lambda: {"w": torch.quantize_per_tensor(torch.zeros(4), 0.1, 0, torch.qint8)},
     "tensor w (torch.strided, torch.qint8"),
    (lambda: {1: torch.zeros(3)}, "key 1 (int) in the top; expected names"),
    (lambda: {"model": {"a": _nested(40)}}, "nested more than 32 deep at model.a[0]"),
])
def test_torch_objects_that_are_not_dense_named_tensors_are_refused(tmp_path, make, fragment):
    """Each passes torch.load(weights_only=True), then had ended in a traceback (TypeError,
    NotImplementedError, AttributeError, RecursionError)."""
    path = tmp_path / "weights.pth"
    torch.save(make(), path)
    out = tmp_path / "imported"
    with pytest.raises(safe_load.CheckpointFileError) as err:
        import_torch.run_import(str(path), "ecgfounder", str(out))
    assert str(err.value).startswith(f"{path}: ") and fragment in str(err.value)
    _assert_nothing_written(out)


def _stmem_state_dict():
    from tests.references.stmem_torch import StMemEncoder
    torch.manual_seed(0)
    return StMemEncoder(64, 2, 1).state_dict()


@pytest.mark.parametrize("fmt,change,fragment", [
    ("stmem", {"sep_embedding": torch.zeros(())}, "sep_embedding has shape ()"),
    ("stmem", {"sep_embedding": torch.zeros(0)}, "sep_embedding has shape (0,)"),
    ("stmem", {"head.weight": torch.zeros(0, 64), "head.bias": torch.zeros(0)},
     "head.weight has shape (0, 64)"),
    ("stmem", {"pos_embedding": torch.zeros(1, 1, 64)}, "model.num_patches=-1"),
    ("ecgfounder", {"first_conv.conv.weight": torch.zeros(3)},
     "first_conv.conv.weight has shape (3,)"),
    ("ecgfounder", {"first_conv.conv.weight": torch.zeros(16, 1, 0)},
     "first_conv.conv.weight has shape (16, 1, 0)"),
    ("ecgfounder", {"first_conv.conv.weight": torch.zeros(16, 3, 16)},
     "3 input leads; ECGFounder's Net1D takes 12 leads or lead I alone"),
])
def test_shapes_that_give_no_model_are_refused_by_name(tmp_path, fmt, change, fragment):
    """The model is inferred from the tensors' shapes: a scalar or empty tensor had ended in
    IndexError or ZeroDivisionError, num_patches=-1 had been written into a checkpoint nothing
    could run, and a 3-lead Net1D had been fed leads I, II and III by predict."""
    sd = {**(_stmem_state_dict() if fmt == "stmem" else _small_state_dict()), **change}
    path = tmp_path / "weights.pth"
    torch.save({"model" if fmt == "stmem" else "state_dict": sd}, path)
    out = tmp_path / "imported"
    with pytest.raises(safe_load.CheckpointFileError) as err:
        import_torch.run_import(str(path), fmt, str(out))
    assert str(err.value).startswith(f"{path}: ") and fragment in str(err.value)
    _assert_nothing_written(out)


@pytest.fixture(scope="module")
def crema_file(tmp_path_factory):
    """A tiny SiT encoder in the crema layout: (its tensors, its metadata's model config)."""
    from crema_jax.models import default_model_config
    from crema_jax.models import params as params_lib
    cfg = default_model_config()
    cfg.name, cfg.size, cfg.num_heads, cfg.head_dim = "sit_encoder", "tiny", 2, 32
    path = tmp_path_factory.mktemp("crema") / "tiny.safetensors"
    state = export_torch.build_state_dict(params_lib.init_params(cfg, 0), cfg, layout="crema",
                                          include_decoder=False)
    export_torch.write_files(state, str(path), layout="crema",
                             model_config=export_torch.resolved_model_config(cfg),
                             full_config={}, step=0, include_decoder=False)
    import_torch.import_weights(str(path), "crema")  # intact, it imports
    tensors, metadata = safe_load.read_safetensors(str(path))
    return tensors, json.loads(metadata["crema_model_config"])


@pytest.mark.parametrize("case,fragment", [
    ("deep", "is not readable JSON (nested too deeply)"),
    ("family", "names model 'net1d'; a crema-layout file holds a SiT"),
    ("huge_int", "num_classes"),
    ("side_without_model", "expected a JSON object with a 'model' object"),
    ("side_list", "expected a JSON object with a 'model' object"),
])
def test_crema_model_configs_that_describe_no_sit_are_refused(tmp_path, crema_file, case,
                                                             fragment):
    """Each had ended in a traceback: RecursionError, AttributeError, OverflowError, KeyError
    and TypeError."""
    tensors, model = crema_file
    path = tmp_path / "w.safetensors"
    metadata = {"deep": {"crema_model_config": "[" * 100_000},
                "family": {"crema_model_config": json.dumps({**model, "name": "net1d"})},
                "huge_int": {"crema_model_config": json.dumps({**model,
                                                               "num_classes": 10**30})},
                }.get(case)
    safetensors.numpy.save_file(tensors, str(path), metadata=metadata)
    if case.startswith("side"):
        (tmp_path / "w.json").write_text('{"layout": "crema"}' if case == "side_without_model"
                                         else "[1, 2]")
    out = tmp_path / "imported"
    with pytest.raises(safe_load.CheckpointFileError, match=re.escape(fragment)):
        import_torch.run_import(str(path), "crema", str(out))
    _assert_nothing_written(out)


def test_a_safetensors_shape_beyond_int64_is_a_listed_problem(tmp_path):
    header = json.dumps({"x": {"dtype": "F32", "shape": [2**70], "data_offsets": [0, 0]}})
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header.encode())
    with pytest.raises(safe_load.CheckpointFileError,
                       match=r"x: shape \[1180591620717411303424\]: expected at most 8 dim"):
        safe_load.read_safetensors(str(path))


def _raw_safetensors(path, entries: dict, data: bytes):
    header = json.dumps(entries).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)


@pytest.mark.parametrize("offsets, size, problem", [
    # b on a's bytes: every same-shaped tensor had been read as one tensor's weights
    ({"a": [0, 16], "b": [0, 16]}, 16,
     "tensor b starts at byte 0 and overlaps the tensor before it (after a, which ends at byte "
     "16)"),
    ({"a": [0, 16], "b": [24, 40]}, 40,
     "tensor b starts at byte 24 and leaves a gap (after a, which ends at byte 16)"),
    ({"a": [8, 24], "b": [24, 40]}, 40,
     "tensor a starts at byte 8 and leaves a gap (at the start)"),
    ({"a": [0, 16], "b": [16, 32]}, 48, "the tensors end at byte 32 of the 48 data bytes")])
def test_safetensors_offsets_that_do_not_tile_the_data_are_refused(tmp_path, offsets, size,
                                                                   problem):
    """The format's rule (safetensors' own reader refuses such files): the tensors' bytes tile
    the data in order."""
    path = tmp_path / "w.safetensors"
    _raw_safetensors(path, {k: {"dtype": "F32", "shape": [4], "data_offsets": v}
                            for k, v in offsets.items()}, bytes(size))
    with pytest.raises(Exception):  # the reference: safetensors' own reader refuses it too
        safetensors.numpy.load_file(str(path))
    with pytest.raises(safe_load.CheckpointFileError) as refused:
        safe_load.read_safetensors(str(path))
    assert str(refused.value) == (
        f"{path}: not a valid safetensors file: {problem} (the format's tensors tile the data "
        "bytes in order, with no overlap or gap)")
    _raw_safetensors(path, {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                            "b": {"dtype": "F32", "shape": [4], "data_offsets": [16, 32]}},
                     np.arange(8, dtype="<f4").tobytes())
    tensors, _ = safe_load.read_safetensors(str(path))   # a tiling file reads as its own reader
    for key, array in safetensors.numpy.load_file(str(path)).items():
        np.testing.assert_array_equal(tensors[key], array)
