"""probe, finetune, embed and predict give the model the SAME crops of the same 15 s record: the
one crop policy (data/pipeline/batch.py eval_crop_starts), with the offsets worked out here by hand.

The commands run in this process; every evaluation batch they build is recorded on its way out
of the evaluation pipeline, and the record's crops are compared with slices of its preprocessed
signal at the hand-computed starts.
"""
import numpy as np
import pytest

from crema_jax import config as config_lib
from crema_jax.runtime import checkpoint
from crema_jax.cli import embed, finetune, predict, probe
from crema_jax.data import presets
from crema_jax.data import synthetic
from crema_jax.data.pipeline import datasets
from crema_jax.data.reading import wfdb_records
from crema_jax.data.signal import preprocess
from crema_jax.models import params as params_lib

# A 15 s record at 250 Hz is 3750 samples: a SiT's three 2250-sample crops start 0, s, 2s with
# s = (3750 - 2250) // 2 = 750. At 500 Hz it is 7500 samples: Net1D's one 5000-sample window is
# the centred one, starting at (7500 - 5000) // 2 = 1250.
SIT_STARTS, SIT_CROP = (0, 750, 1500), 2250
NET1D_STARTS, NET1D_CROP = (1250,), 5000


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("records")
    paths = synthetic.write_synthetic_wfdb(root / "data", 6, fs=500.0, seconds=15.0, seed=3)
    sit = config_lib.default_config()
    sit.model.size = "tiny"
    checkpoint.save_model_checkpoint(root / "sit", params_lib.init_params(sit.model, 0), sit)
    net = config_lib.default_config("net1d")
    net.model.filters, net.model.blocks = [16, 32], [1, 1]
    checkpoint.save_model_checkpoint(root / "net1d", params_lib.init_params(net.model, 0), net)
    return root, paths


@pytest.fixture
def recorded(monkeypatch):
    """Every evaluation batch built in the test, as numpy arrays."""
    seen = []
    real = datasets.make_eval_dataset

    def spy(*args, **kwargs):
        source = kwargs.get("source")
        for batch in real(*args, **kwargs):
            seen.append((source, {k: np.asarray(v) for k, v in batch.items()}))
            yield batch

    monkeypatch.setattr(datasets, "make_eval_dataset", spy)
    return seen


def _crops_of(seen, path):
    """The (C, 12, T) crops of the record at `path`, from the first batch holding it."""
    for source, batch in seen:
        for row in np.flatnonzero(batch["valid"]):
            if source.paths[int(batch["index"][row])] == path:
                p = batch["patches"][row]                      # (C, L, N, P)
                return p.reshape(p.shape[0], p.shape[1], -1)
    raise AssertionError(f"no evaluation batch held {path}")


def _expected(path, fs, preset, starts, crop):
    signal = wfdb_records.read_record(path, target_fs=fs).signal
    x = preprocess.preprocess(signal, fs, presets.preprocessing(preset))
    assert x.shape[1] == 15 * fs
    return np.stack([x[:, s:s + crop] for s in starts])


EVAL = ["--folds=3", "--bootstrap=10", "--batch_size=8",  # folds: every record tested, so scored
        "--lead_sets=12"]
PROBE = ["--probe_steps=5", "--l2_grid=1"]   # the head is not under test: one small fit


def test_every_command_uses_the_same_crops(setup, recorded, tmp_path):
    root, paths = setup
    target = paths[0]
    sit_want = _expected(target, 250.0, "stmem", SIT_STARTS, SIT_CROP)
    net_want = _expected(target, 500.0, "ecgfounder", NET1D_STARTS, NET1D_CROP)

    got = {}
    probe.COMMAND.run([f"--checkpoint={root / 'sit'}", f"--root={root / 'data'}",
                       f"--workdir={tmp_path / 'probe'}", *PROBE, *EVAL])
    got["probe"] = _crops_of(recorded, target)
    recorded.clear()
    finetune.COMMAND.run([f"--checkpoint={root / 'sit'}", f"--root={root / 'data'}",
                          f"--workdir={tmp_path / 'ft'}", "--epochs=1", "--steps_per_epoch=1",
                          *EVAL])
    got["finetune"] = _crops_of(recorded, target)
    recorded.clear()
    embed.COMMAND.run([f"--checkpoint={root / 'sit'}", f"--input={target}",
                       f"--out={tmp_path / 'f.npy'}"])
    got["embed"] = _crops_of(recorded, target)
    recorded.clear()
    for name in ("probe", "finetune", "embed"):
        assert got[name].shape == sit_want.shape, name
        np.testing.assert_allclose(got[name], sit_want, rtol=1e-5, atol=1e-5, err_msg=name)

    predict.COMMAND.run([f"--checkpoint={root / 'net1d'}", target])
    got["predict"] = _crops_of(recorded, target)
    recorded.clear()
    probe.COMMAND.run([f"--checkpoint={root / 'net1d'}", f"--root={root / 'data'}",
                       f"--workdir={tmp_path / 'probe_net1d'}", *PROBE, *EVAL])
    got["probe net1d"] = _crops_of(recorded, target)
    for name in ("predict", "probe net1d"):
        assert got[name].shape == net_want.shape, name
        np.testing.assert_allclose(got[name], net_want, rtol=1e-5, atol=1e-5, err_msg=name)
