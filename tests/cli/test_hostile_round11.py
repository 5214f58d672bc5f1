"""Careless and hostile inputs, eleventh round: a pretraining workdir that holds a user's files
or is one of the run's inputs. Each is one line naming the folder, with nothing written."""
import pathlib
import shutil
import time

import pytest

from crema_jax.cli import pretrain
from tests.cli.conftest import _fails
from tests.cli.test_hostile import REPO, _hashes

# The demo's mesh (data 1) on the test process's 8 devices: data -1 takes them all.
DEMO = f"--config={REPO / 'configs' / 'demo.py'}"
MESH = "--config.mesh.data=-1"


def test_a_workdir_holding_a_users_files_is_refused(tmp_path, capsys):
    """A run had replaced a user's reconstruction.png and moved their metrics.jsonl into
    metrics.superseded.jsonl, exit 0."""
    workdir = tmp_path / "notes"
    workdir.mkdir()
    (workdir / "metrics.jsonl").write_text("my precious notes\n")
    (workdir / "reconstruction.png").write_text("my image")
    before = _hashes(workdir)
    _fails(pretrain, [DEMO, MESH, f"--workdir={workdir}", "--config.train.num_steps=2"], capsys,
           f"--workdir={workdir}: the folder holds files this command did not write "
           "(metrics.jsonl, reconstruction.png); choose a new or empty folder")
    assert _hashes(workdir) == before and sorted(p.name for p in workdir.iterdir()) == [
        "metrics.jsonl", "reconstruction.png"]


@pytest.mark.parametrize("field", ["root", "cache_dir"])
def test_a_workdir_that_is_or_lies_in_an_input_folder_is_refused(tmp_path, capsys, field,
                                                                 cinc_sample_dir):
    """The dataset root or the cache as --workdir had gained checkpoints/, metrics.jsonl,
    tensorboard/ and reconstruction.png, exit 0."""
    data = tmp_path / "data"
    shutil.copytree(cinc_sample_dir, data)
    before = _hashes(data)
    source = ([f"--config.data.root={data}"] if field == "root" else
              ["--config.data.root=", "--config.data.layout=", f"--config.data.cache_dir={data}"])
    _fails(pretrain, [DEMO, MESH, f"--workdir={data}", *source], capsys,
           f"--workdir={data}: that is an input of this command")
    _fails(pretrain, [DEMO, MESH, f"--workdir={data / 'run'}", *source], capsys,
           f"--workdir={data / 'run'}: inside the input {data}")
    assert _hashes(data) == before and not (data / "run").exists()


_INTERRUPTED_COMMAND = """
import multiprocessing, sys, threading, time, types
from crema_jax import cli, main

class Command:
    def run(self, argv):
        import jax
        jax.devices()  # a JAX backend started, as in every command that compiles
        # Left running at the Ctrl-C, as XLA's compiler threads were: the interpreter's
        # shutdown waits for a thread like this one for ever (and crashed on XLA's).
        threading.Thread(target=time.sleep, args=(600,)).start()
        child = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(600,))
        child.start()
        print(child.pid, flush=True)
        raise KeyboardInterrupt

module = types.ModuleType("interrupted_command")
module.COMMAND = Command()
sys.modules["interrupted_command"] = module
cli.COMMANDS["interrupted"] = ("interrupted_command", "a command Ctrl-C stops", False)
sys.argv = ["crema-jax", "interrupted"]
main.run()
"""


def test_ctrl_c_ends_the_process_at_once_whatever_threads_are_left(tmp_path):
    """A Ctrl-C during pretrain's compile had ended in a segmentation fault (exit 139) in the
    interpreter's shutdown. A process that started a JAX backend now ends with exit 130 and
    its one line, without that shutdown, and stops the worker processes left."""
    import os
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", _INTERRUPTED_COMMAND], capture_output=True,
                          text=True, timeout=120, cwd=str(REPO),
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 130, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == "crema-jax interrupted: interrupted"
    child = int(done.stdout.split()[0])
    status = pathlib.Path(f"/proc/{child}/status")
    for _ in range(50):  # terminated: gone, or a zombie no one has reaped yet
        if not status.exists() or "\nState:\tZ" in status.read_text():
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"worker process {child} still runs")


def test_folds_below_three_and_unknown_augmentations_are_flag_errors(tmp_path, capsys,
                                                                    cinc_sample_dir):
    """--folds=2 had been refused with exit 1 after the whole dataset was indexed, and
    --augment=bogus with exit 1 naming a config field (data.augment.names)."""
    from crema_jax.cli import finetune, probe
    common = ["--checkpoint=random", f"--root={cinc_sample_dir}", f"--workdir={tmp_path / 'w'}"]
    for k in (1, 2):
        _fails(probe, [*common, f"--folds={k}"], capsys, f"--folds={k}: expected 0 (the "
               "layout's splits) or at least 3 (a test, a validation and a training fold)",
               code=2)
    names = "amplitude_scale, baseline_wander, gaussian_noise, time_shift, lead_drop"
    _fails(finetune, [*common, "--augment=gaussian_noise,bogus"], capsys,
           "--augment=gaussian_noise,bogus: unknown augmentation 'bogus'; expected 'config', "
           f"'none', or names among {names}", code=2)
    _fails(finetune, [*common, "--augment=none,lead_drop"], capsys,
           "--augment=none,lead_drop: 'config' and 'none' stand alone", code=2)
    assert not (tmp_path / "w").exists()
