"""Safe loading: bad files give clear errors and write nothing; dtypes; no torch for safetensors."""
import os
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


def test_pickle_with_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": _small_state_dict(), "extra": CodePayload(str(marker))}, path)
    assert not marker.exists()
    out = tmp_path / "imported"
    with pytest.raises(safe_load.UnsafeCheckpointError, match="weights_only=True"):
        import_torch.run_import(str(path), "ecgfounder", str(out))
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
    assert "missing keys (1)" in message and "dense.weight\n" in message
    assert "unexpected keys (1)" in message and "dense.weights" in message
    _assert_nothing_written(out)


def test_every_problem_is_listed_at_once():
    sd = {"a": np.zeros((2, 3)), "b": np.zeros(4), "extra": np.zeros(1)}
    with pytest.raises(safe_load.CheckpointFileError) as err:
        safe_load.check_state_dict(sd, {"a": (3, 2), "b": (4,), "c": (5,)}, path="f.pth",
                                   layout="x")
    message = str(err.value)
    assert "missing keys (1):\n    c" in message
    assert "unexpected keys (1):\n    extra" in message
    assert "a: file (2, 3), expected (3, 2)" in message


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
    with pytest.raises(ValueError, match="holds files this command did not write"):
        import_torch.run_import(str(path), "ecgfounder", str(out))   # never into a used folder
    pth, side = export_torch.run_export(str(out), str(tmp_path / "back.pth"))
    back = torch.load(pth, weights_only=True)["state_dict"]
    assert sorted(back) == sorted(sd)
    for key, value in sd.items():
        if ".bn" not in key and "first_bn" not in key:
            assert torch.equal(back[key], value), key
    assert os.path.isfile(side)
