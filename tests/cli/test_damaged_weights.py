"""A model checkpoint whose saved weights were damaged on disk (a disk fault, a copy cut short, a
file lost) is refused by every reader in one line naming the file and what is wrong with it:
it was TensorStore's ~1 KB spec dump, followed by a dozen "Event loop is closed" tracebacks."""
import os
import shutil
import subprocess
import sys

import pytest

from crema_jax.runtime import checkpoint
from tests.cli.conftest import assert_one_error_line

CLI = [os.path.join(os.path.dirname(sys.executable), "crema-jax")]


def _array_files(step_dir):
    return sorted(p for p in (step_dir / "params" / "d").iterdir() if p.is_file())


def _damage(step_dir, how):
    """Damages the step's weights `how`; returns (file named, what the message says of it)."""
    params, files = step_dir / "params", _array_files(step_dir)
    if how == "overwritten":
        for f in files:
            size = f.stat().st_size
            f.write_bytes(b"\0garbage" * 2)
            assert size > 16
        return "d/", "is not valid for value of size 16"
    if how == "emptied":
        for f in files:
            f.write_bytes(b"")
        return "d/", "is not valid for value of size 0"
    if how == "lost":
        for f in files:
            f.unlink()
        return "d/", ": not found"
    if how == "manifest":
        (params / "manifest.ocdbt").write_bytes(b"xx")
        return "manifest.ocdbt", "Error decoding manifest"
    if how == "metadata":
        (params / "_METADATA").write_text("{bad")
        return "_METADATA", "not JSON"
    raise AssertionError(how)


@pytest.fixture()
def damaged_copy(sit_checkpoint, tmp_path):
    copy = tmp_path / "ckpt"
    shutil.copytree(sit_checkpoint, copy)
    return copy


@pytest.mark.parametrize("how", ["overwritten", "emptied", "lost", "manifest", "metadata"])
def test_damaged_weights_are_named_with_their_file(damaged_copy, how):
    step_dir = damaged_copy / "checkpoints" / "0"
    file, what = _damage(step_dir, how)
    with pytest.raises(checkpoint.DamagedCheckpointError) as raised:
        checkpoint.load_model_checkpoint(damaged_copy)
    message = str(raised.value)
    assert message.startswith(f"{step_dir / 'params'}: damaged, the saved weights do not read (")
    assert f"{step_dir / 'params' / file}" in message and what in message, message
    assert "tensorstore_spec" not in message and len(message) < 400, message


def test_the_command_prints_one_line_and_no_late_tracebacks(damaged_copy, tmp_path):
    step_dir = damaged_copy / "checkpoints" / "0"
    _damage(step_dir, "overwritten")
    before = {p: p.read_bytes() for p in step_dir.rglob("*") if p.is_file()}
    out = tmp_path / "weights.safetensors"
    done = subprocess.run(CLI + ["export-torch", f"--checkpoint={damaged_copy}", f"--out={out}"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 1
    assert_one_error_line("export-torch", done.stdout, done.stderr,
                          f"{step_dir / 'params' / 'd'}", "is not valid for value of size 16")
    assert "Event loop is closed" not in done.stderr
    assert not out.exists() and not out.with_suffix(".json").exists()
    assert {p: p.read_bytes() for p in step_dir.rglob("*") if p.is_file()} == before


def test_a_damaged_saved_config_is_named_as_the_config(damaged_copy):
    metadata = damaged_copy / "checkpoints" / "0" / "config" / "metadata"
    metadata.write_text("{bad")
    with pytest.raises(checkpoint.DamagedConfigError, match=f"^{metadata}: damaged"):
        checkpoint.load_model_checkpoint(damaged_copy)


_UNRETRIEVED = """
import asyncio, gc, sys
from crema_jax.cli import command
if sys.argv[1] == "quiet":
    command._ignore_closed_event_loop_callbacks()
async def read():
    raise ValueError("OUT_OF_RANGE: another read of the damaged step")
async def main():
    asyncio.ensure_future(read())
    await asyncio.sleep(0.01)
asyncio.run(main())
gc.collect()
print("done")
"""


@pytest.mark.parametrize("mode", ["quiet", "verbose"])
def test_unawaited_failed_reads_print_nothing_after_the_one_line(mode):
    """After one read of a damaged step fails, TensorStore's other reads fail unawaited, and
    asyncio printed each with a traceback when it was collected ("Task exception was never
    retrieved"), after the command's one line (seen once in export-torch). A command drops them
    unless --verbose (which skips the hook: the control)."""
    proc = subprocess.run([sys.executable, "-c", _UNRETRIEVED, mode], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "done", proc.stderr
    if mode == "quiet":
        assert proc.stderr == "", proc.stderr
    else:
        assert "Task exception was never retrieved" in proc.stderr
