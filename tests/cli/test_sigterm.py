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


@pytest.mark.slow
def test_sigterm_in_the_train_loop_saves_the_step_then_exits_143(tmp_path):
    """The loop saved the step and the run exited 0, so `pretrain && probe` (or a scheduler's
    dependency) went on with a model of 2 of its 50 steps. The step is saved, the run ends as
    any command's SIGTERM ends it."""
    from crema_jax.runtime import workdir as workdir_lib

    workdir = tmp_path / "run"
    proc = start_cli(workdir, "--config.train.num_steps=50", "--config.checkpoint.every_steps=100",
                     step_delay_seconds=0.5, stderr=subprocess.PIPE)
    lines = []
    while not any(line.startswith("step 2/50") for line in lines):
        line = proc.stdout.readline()
        assert line, (lines, proc.stderr.read()[-3000:])
        lines.append(line)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-3000:]
    assert err.strip().splitlines()[-1] == "crema-jax pretrain: terminated", err[-3000:]
    saved = workdir_lib.latest_step(workdir / "checkpoints")
    assert 2 <= saved < 50 and f"SIGTERM: saved step {saved}, exiting" in out, out
    assert not (workdir / "crema_jax.lock").exists()


_SWALLOWED = """
import gc, os, signal, sys
from crema_jax import main
from crema_jax.cli import command
main._terminate_as_interrupt()

class RaisesInDel:
    def __del__(self):  # a callback Python cannot raise from: its exception is dropped
        raise command.{name}()

try:
    RaisesInDel()
    gc.collect()
    import time
    for _ in range(100):  # the main thread's next steps (the command going on)
        time.sleep(0.05)
except KeyboardInterrupt as err:
    print("caught", type(err).__name__)
else:
    print("went on")
"""


@pytest.mark.parametrize("name", ["Terminated", "KeyboardInterrupt"])
def test_an_interrupt_dropped_inside_a_callback_is_sent_again(name):
    """A SIGTERM whose exception was raised inside XLA's garbage-collector callback was dropped
    ("Exception ignored in: <function _xla_gc_callback>") and the pretrain ran all its steps,
    exit 0. The dropped interrupt is sent again and reaches the command."""
    import sys
    source = _SWALLOWED.replace("command.{name}", "command.Terminated" if name == "Terminated"
                                else "KeyboardInterrupt")
    done = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.strip() == f"caught {name}", (done.stdout, done.stderr[-2000:])
    assert "Exception ignored" not in done.stderr, done.stderr[-2000:]
