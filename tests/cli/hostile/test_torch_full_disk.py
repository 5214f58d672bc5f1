"""import-torch and export-torch on a full disk, with the real CLI in child processes: one line
naming the output and the OS's reason, and the user's folders as they were (nothing half
written, no folder the command made). The full disk is helpers._cli's RLIMIT_FSIZE: the kernel
fails every write past the limit with EFBIG ("File too large"), inside TensorStore's and
safetensors' native writers too, as a full disk fails them with ENOSPC (a tmpfs needs root)."""
import pytest

from tests.cli.hostile.helpers import _cli, _hashes, _one_line

LIMIT = 4096   # bytes a file may hold: the tiny models' weights need more


def _tree(root) -> tuple[dict, list]:
    """The files' hashes and every path (folders too) under `root`."""
    return _hashes(root), sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture(scope="module")
def net1d_file(tmp_path_factory):
    import torch

    from tests.references.ecgfounder_torch import Net1DRef
    path = tmp_path_factory.mktemp("weights") / "n.pth"
    torch.save({"state_dict": Net1DRef(in_channels=12, filters=(16, 32),
                                       blocks=(1, 2)).state_dict()}, path)
    return path


def test_a_full_disk_under_import_torch_is_one_line_and_leaves_nothing(net1d_file, tmp_path):
    """It had printed ~100 lines of Orbax tracebacks and a 3 KB line holding a TensorStore spec,
    and left DIR/checkpoints/0.orbax-checkpoint-tmp/, which a rerun then called "an unfinished
    import from an interrupted run". A new --out (and the folder above it), or an empty one,
    is as it was."""
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "new" / "out", tmp_path / "empty"):
        before = _tree(tmp_path)
        done = _cli("import-torch", "--format=ecgfounder", str(net1d_file), f"--out={out}",
                    file_size_limit=LIMIT)
        line = _one_line(done, "import-torch", f"cannot write {out}: File too large (errno 27)")
        assert len(line) < 200 and "tensorstore" not in line, line
        assert _tree(tmp_path) == before


@pytest.fixture(scope="module")
def net1d_checkpoint(net1d_file, tmp_path_factory):
    from crema_jax.cli import import_torch
    out = tmp_path_factory.mktemp("ckpt") / "net1d"
    import_torch.COMMAND.run(["--format=ecgfounder", str(net1d_file), f"--out={out}"])
    return out


@pytest.mark.parametrize("flag, name", [("--out", "new/e.safetensors"), ("--out", "e.pth"),
                                        ("--hub_folder", "new/hub")])
def test_a_full_disk_under_export_torch_is_one_line_and_leaves_nothing(net1d_checkpoint,
                                                                        tmp_path, flag, name):
    """safetensors' SafetensorError and torch.save's RuntimeError ("unexpected pos 10176 vs
    10070") are no OSErrors: each had ended in a traceback, and --hub_folder had left its empty
    folder. The weights are the first file written, the one the disk cannot hold."""
    target = tmp_path / name
    written = target / "model.safetensors" if flag == "--hub_folder" else target
    before = _tree(tmp_path)
    done = _cli("export-torch", f"--checkpoint={net1d_checkpoint}", f"{flag}={target}",
                file_size_limit=LIMIT)
    _one_line(done, "export-torch", f"cannot write {written}: File too large")
    assert _tree(tmp_path) == before
