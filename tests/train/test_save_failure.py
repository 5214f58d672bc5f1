"""A checkpoint save that fails for want of disk space, with the real CLI in subprocesses: the run
stops with one line naming the step, its path and the cause, the last complete step stays as it
was, and a rerun resumes from it with exactly the losses of an uninterrupted run.

The full disk is the FaultDrill of crema_jax/train/hooks.py (CREMA_JAX_DRILL_FULL_DISK_AT_STEP):
before the step-4 checkpoint is written, the process's RLIMIT_FSIZE drops to 64 KiB with SIGXFSZ
ignored, so the kernel itself fails every write past that size with EFBIG inside Orbax's and
TensorStore's background threads, as a full disk fails them with ENOSPC (a tmpfs needs root).
"""
import hashlib
import subprocess

import numpy as np
import pytest

from crema_jax.runtime import workdir as workdir_lib
from crema_jax.train.hooks import FaultDrill
from tests.train.helpers import losses_by_step, start_cli

STEPS = ("--config.train.num_steps=8", "--config.checkpoint.every_steps=2",
         "--config.checkpoint.max_to_keep=10")   # keep step 2, to compare it afterwards
TIMEOUT = 300


def _run(workdir, cache_dir, **env):
    proc = start_cli(workdir, *STEPS, cache_dir=cache_dir, env_extra=env,
                     stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=TIMEOUT)
    return proc.returncode, out, err


def _hashes(root) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, jax_cache_dir):
    clean = tmp_path_factory.mktemp("clean")
    rc, out, err = _run(clean, jax_cache_dir)
    assert rc == 0 and "step 8/8" in out, out + err

    work = tmp_path_factory.mktemp("full_disk")
    failed = _run(work, jax_cache_dir, **{FaultDrill.ENV_FULL_DISK: "4",
                                          FaultDrill.ENV_FULL_DISK_BYTES: str(64 * 1024)})
    ckpts = work / "checkpoints"
    after_failure = workdir_lib.complete_steps(ckpts)
    step2 = _hashes(ckpts / "2")
    rerun = _run(work, jax_cache_dir)
    return dict(clean=losses_by_step(clean), failed=failed, rerun=rerun, work=work,
                after_failure=after_failure, step2=step2)


def test_a_failed_save_stops_the_run_with_one_line(runs):
    rc, out, err = runs["failed"]
    ckpts = runs["work"] / "checkpoints"
    assert rc == 1, out + err
    assert err.splitlines() == [
        f"crema-jax pretrain: error: saving checkpoint step 4 to {ckpts / '4'} failed: File too "
        "large (errno 27); step 2 is the last complete checkpoint; a rerun resumes from it"], err
    assert "Traceback" not in out + err
    assert runs["after_failure"] == [2]
    # Checked before every step is dispatched: the run stops within a few steps of step 4's
    # save, never reaching the next boundary's save (step 8 is the last).
    assert "step 8/8" not in out


def test_the_rerun_resumes_from_the_last_complete_step_with_identicallosses_by_step(runs):
    rc, out, err = runs["rerun"]
    work = runs["work"]
    assert rc == 0, out + err
    assert f"resumed from step 2 of {work}" in out
    assert "checkpoint step 4 was left incomplete" in out
    # Nothing deleted: the failed step's folder is set aside, step 2 is byte for byte the same.
    assert [p.name.split(".")[0] for p in (work / "checkpoints").glob("4.incomplete-*")] == ["4"]
    assert _hashes(work / "checkpoints" / "2") == runs["step2"]
    assert workdir_lib.complete_steps(work / "checkpoints") == [2, 4, 6, 8]
    clean, drill = runs["clean"], losses_by_step(work)
    assert sorted(drill) == sorted(clean) == list(range(1, 9))
    for step, values in drill.items():
        np.testing.assert_array_equal(values, clean[step], err_msg=f"step {step}")
