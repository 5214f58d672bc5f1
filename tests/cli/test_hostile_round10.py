"""Careless and hostile inputs, tenth round: arrays that are a scalar, of a size a float32
cannot hold, or far beyond any ECG's scale under --raw. Each is one line naming what was
expected, or is read as what it is (an ECG beyond the mV bound is a bad_units skip, as in a
file)."""
import warnings

import numpy as np
import pytest

from crema_jax.cli import embed
from crema_jax.data.pipeline import skips
from crema_jax.data.reading.ecg import MAX_ABS_MV
from tests.cli.conftest import _fails


def test_a_scalar_array_is_refused_for_its_shape(sit_checkpoint, tmp_path, capsys):
    """A 0-d .npy had ended in `TypeError: len() of unsized object`."""
    np.save(tmp_path / "scalar.npy", np.float32(3))
    for raw, fragment in (([], "got shape ()"),
                          (["--raw"], "(30 patches of 75 samples), got ()")):
        _fails(embed, [f"--checkpoint={sit_checkpoint}", f"--input={tmp_path / 'scalar.npy'}",
                       f"--out={tmp_path / 'y.npy'}", *raw], capsys, fragment)
    assert not (tmp_path / "y.npy").exists()


def test_raw_input_beyond_any_ecgs_scale_is_refused(sit_checkpoint, tmp_path, capsys):
    """--raw of 1e19-scaled noise had written every ECG the features of a flat one, exit 0."""
    x = np.random.default_rng(0).standard_normal((2, 12, 2250)).astype(np.float32)
    x[1, 3, 5] = -1e19
    np.save(tmp_path / "big.npy", x)
    _fails(embed, [f"--checkpoint={sit_checkpoint}", f"--input={tmp_path / 'big.npy'}",
           f"--out={tmp_path / 'y.npy'}", "--raw"], capsys,
           f"raw input holds a sample of magnitude 1e+19, above {MAX_ABS_MV:g}")
    assert not (tmp_path / "y.npy").exists()


def test_a_float64_sample_beyond_float32_is_a_bad_units_skip_not_a_missing_one(
        sit_checkpoint, tmp_path, capsys, monkeypatch):
    """A float64 1e300 had become Inf in float32 (numpy's overflow warning printed), then been
    interpolated as a missing sample: the ECG embedded as if clean."""
    x = np.random.default_rng(1).standard_normal((3, 12, 2500)) * 0.5
    x[1, 4, 100] = 1e300
    np.save(tmp_path / "x.npy", x)
    reasons = []
    monkeypatch.setattr(skips.logging, "warning", lambda msg, *args: reasons.append(args[1])
                        if msg.startswith("skipping %s [%s]") else None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's overflow warning fails the test
        embed.COMMAND.run([f"--checkpoint={sit_checkpoint}", f"--input={tmp_path / 'x.npy'}",
                           f"--out={tmp_path / 'y.npy'}"])
    captured = capsys.readouterr()
    assert "non-finite" not in captured.out and "skipped 1 unreadable" in captured.out
    assert reasons == ["bad_units"]
    assert np.load(tmp_path / "y.npy").shape[0] == 2
    assert (tmp_path / "y.records.txt").read_text().split() == ["0", "2"]


def test_synthetic_records_beside_a_named_dataset_is_a_config_error(tmp_path):
    """pretrain with data.synthetic_records=16 and data.root=/data had trained on synthetic
    ECGs, the root never read or named, exit 0."""
    from crema_jax import config_checks
    from tests.configs import tiny_config

    config = tiny_config(**{"data.synthetic_records": 16, "data.root": str(tmp_path)})
    with pytest.raises(config_checks.ConfigValueError) as refused:
        config_checks.validate(config)
    assert str(refused.value) == (
        f"config.data.synthetic_records=16: expected 0 when a dataset is named (data.root="
        f"{str(tmp_path)!r}, which synthetic records would leave unused): set "
        "data.synthetic_records=0 to train on it")
    config.data.synthetic_records = 0
    config_checks.validate(config)
    config = tiny_config(**{"data.synthetic_records": 16})
    config_checks.validate(config)  # synthetic records alone: the quick runs' data


def test_a_preset_whose_crops_do_not_fit_the_sit_is_named(sit_checkpoint, tmp_path, capsys):
    """--preset=ecgfounder (one 5000-sample window) on a SiT had failed in the model with
    "patches have 1 patches per lead; config.model.num_patches is 30"."""
    np.save(tmp_path / "x.npy", np.zeros((1, 12, 5000), np.float32))
    _fails(embed, [f"--checkpoint={sit_checkpoint}", f"--input={tmp_path / 'x.npy'}",
                   f"--out={tmp_path / 'y.npy'}", "--preset=ecgfounder", "--fs=500"], capsys,
           "--preset=ecgfounder cuts crops of 5000 samples in patches of 5000, but this SiT "
           "reads 30 patches of 75 samples (2250) a lead: that data path does not fit this "
           "model (without --preset, the checkpoint's own data path is used)")
    assert not (tmp_path / "y.npy").exists()
