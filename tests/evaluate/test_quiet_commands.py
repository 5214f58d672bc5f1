"""A command on a machine without a TPU, with libtpu installed, prints no libtpu error, and
evaluating from a training checkpoint (model restored alone) prints no Orbax warning about its
data-iterator item. (libtpu prints its errors only when it takes its lock file, so this
check is completed by tests/runtime/test_platforms.py, which asserts the platforms a command
chose before JAX started.)"""
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from crema_jax.runtime import platforms

NOISE = ("INVALID_ARGUMENT", "libtpu", "TPU_WORKER_HOSTNAMES", "data_iter",
         "could not be restored")


@pytest.mark.slow
def test_embed_from_a_training_checkpoint_prints_no_tpu_or_orbax_noise(pretrained_workdir,
                                                                        tmp_path):
    assert (pretrained_workdir / "checkpoints" / "2" / "data_iter").is_dir()  # a training one
    if not platforms.tpu_present():  # the case to check: libtpu without a TPU
        assert importlib.util.find_spec("libtpu") is not None, "the test extra brings libtpu"
    signals = np.random.default_rng(0).normal(size=(2, 12, 5000)).astype(np.float32) * 0.1
    np.save(tmp_path / "x.npy", signals)
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "JAX_PLATFORM_NAME")}
    done = subprocess.run(
        [sys.executable, "-m", "crema_jax.main", "embed", f"--checkpoint={pretrained_workdir}",
         f"--input={tmp_path / 'x.npy'}", f"--out={tmp_path / 'y.npy'}", "--fs=500"],
        env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert np.load(tmp_path / "y.npy").shape[0] == 2
    noisy = [line for line in (done.stdout + done.stderr).splitlines()
             if any(word in line for word in NOISE)]
    assert not noisy, "\n".join(noisy)
