"""Careless and hostile inputs, twelfth round: paired outputs written as a pair, damaged lock
files, JSON nested too deeply, crafted safetensors headers and sidecar configs, an interrupted
import, and messages that name the file. Each refusal is one line naming the file, with the
user's files as they were."""
import errno
import tempfile

import numpy as np

from crema_jax.cli import embed, export_torch
from crema_jax.runtime import files
from tests.cli.test_hostile import _fails, _hashes


def _full_disk_for(monkeypatch, name: str) -> None:
    """The disk is full when the temporary file of output `name` is created (the outputs before
    it in the same group already written to their temporaries)."""
    real = tempfile.mkstemp

    def mkstemp(*args, prefix="", **kwargs):
        if prefix == f".{name}.":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, prefix=prefix, **kwargs)
    monkeypatch.setattr(files.tempfile, "mkstemp", mkstemp)


def test_embed_writes_y_and_its_records_as_a_pair(sit_checkpoint, tmp_path, capsys,
                                                   monkeypatch):
    """A full disk while writing Y.records.txt had left the new Y.npy beside the old
    Y.records.txt; both stay as they were now."""
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(0).normal(size=(2, 12, 2250)).astype(np.float32))
    out = tmp_path / "y.npy"
    out.write_bytes(b"old y")
    (tmp_path / "y.records.txt").write_text("old\nnames\n")
    before = _hashes(tmp_path)
    _full_disk_for(monkeypatch, "y.records.txt")
    _fails(embed, [f"--checkpoint={sit_checkpoint}", f"--input={x}", f"--out={out}",
                   "--overwrite", "--raw"], capsys,
           f"cannot write {tmp_path / 'y.records.txt'}: No space left on device")
    assert _hashes(tmp_path) == before


def test_export_torch_writes_weights_and_config_as_a_pair(sit_checkpoint, tmp_path, capsys,
                                                          monkeypatch):
    """--out=F.safetensors --overwrite had replaced F.safetensors before F.json, and
    --hub_folder=DIR --overwrite model.safetensors before config.json: a failure between left
    new weights with the old config (import-torch of that folder then restored a wrong data
    path). Every file of the output is written before any replaces an old one."""
    hub = tmp_path / "hub"
    export_torch.COMMAND.run([f"--checkpoint={sit_checkpoint}", f"--hub_folder={hub}"])
    out = tmp_path / "f.safetensors"
    export_torch.COMMAND.run([f"--checkpoint={sit_checkpoint}", f"--out={out}"])
    for path in (hub / "model.safetensors", out):
        path.write_bytes(path.read_bytes()[:-4] + b"\1\2\3\4")  # "old" weights, told apart
    before = _hashes(tmp_path)
    capsys.readouterr()
    _full_disk_for(monkeypatch, "config.json")
    _fails(export_torch, [f"--checkpoint={sit_checkpoint}", f"--hub_folder={hub}",
                          "--overwrite"], capsys,
           f"cannot write {hub / 'config.json'}: No space left on device")
    _full_disk_for(monkeypatch, "f.json")
    _fails(export_torch, [f"--checkpoint={sit_checkpoint}", f"--out={out}", "--overwrite"],
           capsys, f"cannot write {tmp_path / 'f.json'}: No space left on device")
    assert _hashes(tmp_path) == before
    assert not [p for p in tmp_path.rglob(".*") if p.name.endswith(".tmp")]

