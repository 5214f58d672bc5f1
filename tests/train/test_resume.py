"""Preemption drills with the real CLI in subprocesses: `kill -9` after a checkpoint, then SIGTERM,
then a plain restart must log exactly the losses of one uninterrupted run."""
import signal
import time

import numpy as np
import pytest

from crema_jax import config as config_lib
from crema_jax.runtime import workdir as workdir_lib
from tests.train.helpers import losses_by_step, start_cli

pytestmark = pytest.mark.slow  # kill -9 and SIGTERM drills on `crema-jax pretrain` processes

STEPS = ("--config.train.num_steps=8", "--config.checkpoint.every_steps=2")


def _num_lines(workdir) -> int:
    path = workdir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def _wait_for(predicate, proc, timeout=240.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"process ended early (rc {proc.returncode}):\n"
                                 f"{proc.stdout.read()}")
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("timed out")


def _finish(proc, timeout=300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    return out


@pytest.fixture(scope="module")
def drills(tmp_path_factory, jax_cache_dir):
    # 1. The uninterrupted run.
    clean = tmp_path_factory.mktemp("clean")
    out = _finish(start_cli(clean, *STEPS, cache_dir=jax_cache_dir))
    assert "step 8/8" in out, out

    # 2. kill -9 right after the step-2 checkpoint is committed.
    work = tmp_path_factory.mktemp("drill")
    ckpts = work / "checkpoints"
    proc = start_cli(work, *STEPS, step_delay_seconds=1.0, cache_dir=jax_cache_dir)
    _wait_for(lambda: (workdir_lib.latest_step(ckpts) or 0) >= 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(losses_by_step(work))
    after_kill = workdir_lib.latest_step(ckpts)

    # 3. Restart; SIGTERM once it has trained past the restored step.
    proc = start_cli(work, *STEPS, step_delay_seconds=1.0, cache_dir=jax_cache_dir)
    lines_before = _num_lines(work)
    _wait_for(lambda: _num_lines(work) > lines_before, proc)
    proc.send_signal(signal.SIGTERM)
    term_out = _finish(proc)
    term_rc = proc.returncode
    after_term = workdir_lib.latest_step(ckpts)

    # 4. Restart to the end.
    final_out = _finish(start_cli(work, *STEPS, cache_dir=jax_cache_dir))
    return dict(clean=losses_by_step(clean), drill=losses_by_step(work), after_kill=after_kill,
                killed_at=killed_at, term_out=term_out, term_rc=term_rc, after_term=after_term,
                final_out=final_out, workdir=work)


def test_kill_minus_9_resumes_with_identicallosses_by_step(drills):
    assert drills["after_kill"] >= 2
    assert f"resumed from step {drills['after_kill']}" in drills["term_out"]
    clean, drill = drills["clean"], drills["drill"]
    assert sorted(drill) == sorted(clean) == list(range(1, 9))
    for step, values in drill.items():
        # Steps re-run after a restart log again: every copy equals the uninterrupted loss.
        np.testing.assert_array_equal(values, [clean[step][0]] * len(values), err_msg=f"step {step}")


def test_sigterm_saves_a_restorable_checkpoint_and_exits_143(drills):
    assert drills["term_rc"] == 143, drills["term_out"]   # unfinished: never exit 0
    assert drills["term_out"].strip().splitlines()[-1] == "crema-jax pretrain: terminated"
    step = drills["after_term"]
    assert f"SIGTERM: saved step {step}" in drills["term_out"]
    assert step > drills["after_kill"]
    assert f"resumed from step {step}" in drills["final_out"]
    assert "step 8/8" in drills["final_out"]
    params, config, saved = config_lib.load_checkpoint(drills["workdir"])
    assert saved == 8 and config.train.num_steps == 8
    assert all(np.isfinite(v).all() for v in _leaves(params))


def _leaves(tree):
    for v in tree.values():
        yield from (_leaves(v) if isinstance(v, dict) else [np.asarray(v)])
