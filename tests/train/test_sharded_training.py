"""Sharded training on 8 fake CPU devices gives the 1-device losses; NaN stops the run; a
checkpoint written on one mesh restores onto another."""
import json
import os
import pathlib
import signal
import threading
import time

import jax
import numpy as np
import optax
import pytest

from crema_jax.runtime import trees
from crema_jax.runtime import checkpoint as ckpt_lib
from crema_jax.runtime import workdir as workdir_lib
from crema_jax.train import hooks, loop, trainer
from tests.configs import tiny_config

pytestmark = pytest.mark.slow  # trains the tiny model on every mesh shape

MESHES = {"data8": (8, 1, 1), "data2_fsdp4": (2, 4, 1), "data2_fsdp2_tensor2": (2, 2, 2)}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The 1-device run every sharded run must reproduce."""
    out = trainer.train(tiny_config(), tmp_path_factory.mktemp("ref"), devices=jax.devices()[:1])
    return out


class _LazyRuns(dict):
    """Each mesh's run, trained the first time a test asks for it: an xdist worker builds only
    the meshes of the tests it was given (compiling a sharded run costs ~45 s here)."""

    def __init__(self, tmp_path_factory):
        super().__init__()
        self.tmp_path_factory = tmp_path_factory

    def __missing__(self, name):
        d, f, t = MESHES[name]
        config = tiny_config(**{"mesh.data": d, "mesh.fsdp": f, "mesh.tensor": t})
        workdir = self.tmp_path_factory.mktemp(name)
        self[name] = (trainer.train(config, workdir), workdir)
        return self[name]


@pytest.fixture(scope="module")
def sharded_runs(tmp_path_factory):
    return _LazyRuns(tmp_path_factory)


class _Slow:
    """An input pipeline that takes `seconds` longer for every batch."""

    def __init__(self, it, seconds):
        self.it, self.seconds = it, seconds

    def __next__(self):
        time.sleep(self.seconds)
        return next(self.it)


class _Stalling:
    """An input pipeline that gives `batches` batches, then never another (a stalled store):
    once stalled, it has the process sent SIGTERM one second later."""

    def __init__(self, it, batches):
        self.it, self.left = it, batches

    def __next__(self):
        if self.left == 0:
            threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
            time.sleep(60)
            raise AssertionError("the stalled wait was not interrupted")
        self.left -= 1
        return next(self.it)


def test_sigterm_while_the_input_stalls_saves_and_exits(tmp_path, capsys):
    """SIGTERM only set a flag read after the next step, which a stalled input never gave:
    `timeout` could not stop the run. Now the wait is interrupted, the trained steps saved."""
    config = tiny_config(**{"train.num_steps": 10, "checkpoint.every_steps": 100})
    out = trainer.train(config, tmp_path, devices=jax.devices()[:1],
                        batch_iter=_Stalling(trainer.input_iterator(config, 8), 2))
    assert out["last_step"] == 2 and out["preempted"]   # the command ends it with exit 143
    assert "SIGTERM while waiting for data: saved step 2, exiting" in capsys.readouterr().out
    assert workdir_lib.latest_step(tmp_path / "checkpoints") == 2


def test_reference_run_learns(reference, tmp_path):
    losses = [reference["losses"][s] for s in range(1, 6)]
    assert all(np.isfinite(losses))
    # Five steps at lr 1e-2 on 16 ECGs against the same model frozen (lr 0) on the same batches:
    # the difference is the learning alone, not batch noise. The frozen run's input pipeline is
    # slowed by 0.25 s a batch, which its perf/data_wait_seconds must show.
    frozen_config = tiny_config(**{"optim.base_lr": 0.0})
    frozen = trainer.train(frozen_config, tmp_path, devices=jax.devices()[:1],
                           batch_iter=_Slow(trainer.input_iterator(frozen_config, 8), 0.25))
    waits = [json.loads(line)["perf/data_wait_seconds"]
             for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(waits) == 5 and min(waits) >= 0.25 and max(waits) < 5, waits
    frozen = frozen["losses"]
    assert frozen[1] == pytest.approx(losses[0], rel=1e-6)    # the same first batch and init
    assert np.mean(losses[-2:]) < 0.97 * np.mean([frozen[4], frozen[5]]), (losses, frozen)


@pytest.mark.parametrize("name", sorted(MESHES))
def test_sharded_losses_match_one_device(reference, sharded_runs, name):
    run, _ = sharded_runs[name]
    assert run["mesh"].shape == dict(zip(("data", "fsdp", "tensor"), MESHES[name]))
    ref = np.array([reference["losses"][s] for s in range(1, 6)])
    got = np.array([run["losses"][s] for s in range(1, 6)])
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_params_are_sharded_by_the_rules(sharded_runs):
    run, _ = sharded_runs["data2_fsdp2_tensor2"]
    params = run["state"]["params"]
    fc1 = params["encoder"]["blocks"][0]["mlp"]["fc1"]["kernel"]       # (embed, mlp)
    assert fc1.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    mu = optax.tree_utils.tree_get(run["state"]["opt_state"], "mu")
    mu = mu["encoder"]["blocks"][0]["mlp"]["fc1"]["kernel"]
    assert mu.sharding.spec == fc1.sharding.spec      # Adam moments live where their param does
    # Fixed sin-cos tables are state, not trained: bit-identical to the 1-device run's init.
    pos = np.asarray(run["state"]["fixed"]["encoder"]["pos_embedding"])
    d = pos.shape[-1] // 2
    omega = 1.0 / 10000 ** (np.arange(d) / d)
    angles = np.arange(pos.shape[1] - 2)[:, None] * omega[None, :]
    np.testing.assert_allclose(pos[0, 1:-1], np.concatenate([np.sin(angles), np.cos(angles)], 1),
                               atol=1e-6)


def test_restore_onto_a_different_mesh(sharded_runs):
    """A checkpoint from the data=8 mesh restored onto data 2 x fsdp 2 x tensor 2."""
    run, workdir = sharded_runs["data8"]
    config = tiny_config(**{"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2})
    setup = trainer.build(config)
    target = trainer.abstract_state(setup)
    manager = ckpt_lib.make_manager(workdir)
    assert manager.latest_step() == 5
    with setup.on_mesh():
        restored = ckpt_lib.restore_train_state(
            manager, 5, abstract_params=trees.merge(target["params"], target["fixed"]),
            abstract_opt_state=target["opt_state"])
    manager.close()
    kernel = restored["params"]["encoder"]["blocks"][0]["mlp"]["fc1"]["kernel"]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert dict(kernel.sharding.mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    saved = jax.device_get(run["state"])
    for got, want in zip(jax.tree.leaves(restored["params"]),
                         jax.tree.leaves(trees.merge(saved["params"], saved["fixed"]))):
        np.testing.assert_array_equal(np.asarray(got), want)
    for got, want in zip(jax.tree.leaves(restored["opt_state"]),
                         jax.tree.leaves(saved["opt_state"])):
        np.testing.assert_array_equal(np.asarray(got), want)
    assert restored["step"] == 5
    assert np.array_equal(jax.random.key_data(restored["rng"]),
                          jax.random.key_data(jax.random.key(0)))


_RESTORE_ON_TWO_DEVICES = """
import json, sys
import jax, numpy as np
from crema_jax.runtime import checkpoint as ckpt_lib, trees
from crema_jax.train import trainer
from tests.configs import tiny_config
setup = trainer.build(tiny_config(**{"mesh.data": 2}))
target = trainer.abstract_state(setup)
manager = ckpt_lib.make_manager(sys.argv[1])
with setup.on_mesh():
    restored = ckpt_lib.restore_train_state(
        manager, 5, abstract_params=trees.merge(target["params"], target["fixed"]),
        abstract_opt_state=target["opt_state"])
manager.close()
print(json.dumps({"devices": jax.device_count(), "step": restored["step"],
                  "key": np.asarray(jax.random.key_data(restored["rng"])).tolist(),
                  "params": float(sum(np.abs(np.asarray(x, np.float64)).sum()
                                      for x in jax.tree.leaves(restored["params"])))}))
"""


def test_restore_on_fewer_devices(sharded_runs):
    """The data=8 checkpoint restored by a process with 2 devices: its RNG item, restored with
    its saved sharding, had named devices 2-7 ("Topology mismatch"), and the resume had set the
    good step aside as damaged."""
    import subprocess
    import sys

    from tests import xla_flags
    run, workdir = sharded_runs["data8"]
    done = subprocess.run([sys.executable, "-c", _RESTORE_ON_TWO_DEVICES, str(workdir)],
                          capture_output=True, text=True, timeout=600, check=False,
                          cwd=str(pathlib.Path(__file__).resolve().parents[2]),
                          env={**os.environ, "XLA_FLAGS": xla_flags.cpu_devices(2)})
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    saved = jax.device_get(run["state"])
    want = sum(np.abs(np.asarray(x, np.float64)).sum()
               for x in jax.tree.leaves(trees.merge(saved["params"], saved["fixed"])))
    assert got["devices"] == 2 and got["step"] == 5
    assert got["key"] == np.asarray(jax.random.key_data(jax.random.key(0))).tolist()
    assert got["params"] == pytest.approx(float(want), rel=1e-12)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    config = tiny_config()
    with pytest.raises(loop.NonFiniteLossError, match=r"at step 4\b.*step 2"):
        trainer.train(config, tmp_path, devices=jax.devices()[:1],
                      drill=hooks.FaultDrill(nan_batch_at_step=4))
    assert workdir_lib.latest_step(tmp_path / "checkpoints") == 2
    params, _, step = ckpt_lib.load_model_checkpoint(tmp_path)
    assert step == 2
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))
    logged = [line for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(logged) == 3     # steps 1-3 logged; the NaN step is not


def test_an_update_that_overflows_the_weights_is_never_saved(tmp_path):
    """Step 1's loss is finite (it is of the initial weights), but a learning rate of 1e20
    makes its update overflow: that state had been saved and named the last good one."""
    config = tiny_config()
    config.optim.base_lr, config.optim.warmup_steps = 1e20, 0
    config.checkpoint.every_steps = 1
    with pytest.raises(loop.NonFiniteLossError,
                       match=r"parameters' norm became inf .* at step 1; .*step None"):
        trainer.train(config, tmp_path, devices=jax.devices()[:1])
    assert workdir_lib.latest_step(tmp_path / "checkpoints") is None
