"""SIGTERM (a job scheduler, `timeout`, `kill`) ends a command as Ctrl-C does: its `finally`
blocks run, one line says so, exit 143. Killed outright, a pretrain had left its workdir lock
behind and an export its full-size temporary file."""
import signal
import subprocess

import pytest

from tests.train.helpers import start_cli


@pytest.mark.slow
def test_sigterm_before_the_train_loop_releases_the_lock_and_exits_143(tmp_path):
    workdir = tmp_path / "run"
    proc = start_cli(workdir, "--config.train.num_steps=50", stderr=subprocess.PIPE)
    first = proc.stdout.readline()   # printed before the step compiles
    assert first.startswith("data: 16 ECGs from synthetic ECGs"), first
    assert (workdir / "crema_jax.lock").exists()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-3000:]
    assert err.strip().splitlines()[-1] == "crema-jax pretrain: terminated", err[-3000:]
    assert not (workdir / "crema_jax.lock").exists()   # released by train()'s finally
    assert not (workdir / "checkpoints").exists() or not any((workdir / "checkpoints").iterdir())
