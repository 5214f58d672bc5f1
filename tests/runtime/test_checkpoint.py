"""Model-only checkpoints (the format import-torch, probe, finetune and embed rely on), path
resolution, and half-written steps."""
import ml_collections
import numpy as np
import pytest

from crema_jax import config as config_lib
from crema_jax.runtime import checkpoint as ckpt_lib
from crema_jax.runtime import workdir as workdir_lib


def _params():
    rng = np.random.default_rng(0)
    return {"encoder": {"blocks": {0: {"kernel": rng.standard_normal((4, 3)).astype(np.float32)},
                                   1: {"kernel": rng.standard_normal((4, 3)).astype(np.float32)}},
                        "pos_embedding": rng.standard_normal((1, 5, 3)).astype(np.float32)},
            "logit_scale": np.float32(2.3)}


def _config():
    """A saved config as an older crema_jax may have written it: a few fields, one that no
    longer exists (eval_crop_offsets), tuples."""
    return ml_collections.ConfigDict({"model": {"size": "tiny", "patch_size": 50},
                                      "optim": {"betas": (0.9, 0.99)},
                                      "data": {"eval_crop_offsets": (0, 125, 250)},
                                      "loss": {"name": "crema", "temperature": 0.2}})


def test_model_checkpoint_round_trip(tmp_path):
    params = _params()
    step_dir = ckpt_lib.save_model_checkpoint(tmp_path, params, _config(), step=7)
    assert step_dir.name == "7" and (step_dir / "params").is_dir()
    for path in (tmp_path, tmp_path / "checkpoints", step_dir):
        got, config, step = config_lib.load_checkpoint(path)
        assert step == 7
        # Read onto today's defaults: saved fields win, missing ones default, stale ones go.
        assert config.optim.betas == (0.9, 0.99) and config.loss.temperature == 0.2
        assert config.model.patch_size == 50 and config.model.num_patches == 30
        assert config.data.eval_num_crops == 3 and "eval_crop_offsets" not in config.data
        assert sorted(got["encoder"]["blocks"]) == [0, 1]     # nnx.List indices stay ints
        for key in (0, 1):
            np.testing.assert_array_equal(got["encoder"]["blocks"][key]["kernel"],
                                          params["encoder"]["blocks"][key]["kernel"])
        np.testing.assert_array_equal(got["encoder"]["pos_embedding"],
                                      params["encoder"]["pos_embedding"])
        assert isinstance(got["encoder"]["pos_embedding"], np.ndarray)
        assert float(got["logit_scale"]) == pytest.approx(2.3)
    assert config_lib.load_checkpoint_config(tmp_path).model.size == "tiny"


def test_latest_complete_step_ignores_half_written_ones(tmp_path):
    ckpt_lib.save_model_checkpoint(tmp_path, _params(), _config(), step=3)
    ckpt_lib.save_model_checkpoint(tmp_path, _params(), _config(), step=5)
    root = tmp_path / "checkpoints"
    # What a kill -9 during a save leaves: a local tmp dir; on gs:// (no atomic rename) a step
    # dir with data but no commit marker; an empty step dir.
    (root / "9.orbax-checkpoint-tmp-1234" / "params").mkdir(parents=True)
    (root / "8" / "params").mkdir(parents=True)
    (root / "7").mkdir()
    assert workdir_lib.latest_step(root) == 5
    _, _, step = config_lib.load_checkpoint(tmp_path)
    assert step == 5


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        config_lib.load_checkpoint(tmp_path)


def test_a_save_failure_is_told_by_the_os_error_whichever_file_met_the_limit():
    """A wrapped TensorStore error had carried the OS's words but no os_error_code, and was cut
    at 300 characters before them: the one line then depended on which file hit the limit."""
    from crema_jax.runtime import checkpoint_errors as ckpt

    wrapped = ValueError(
        'OUT_OF_RANGE: Error opening "zarr" driver: Error writing "0.0.nu.encoder.blocks.1.mlp'
        '.fc2.bias/.zarray" in OCDBT database at local file "/tmp/' + "x" * 300 + '/ocdbt.'
        'process_0/": Failed writing: "/tmp/' + "y" * 100 + '/d/abc": File too large')
    assert ckpt.cause(wrapped) == "File too large (errno 27)"
    coded = RuntimeError("Failed writing: ... [os_error_code='28']")
    assert ckpt.cause(coded) == "No space left on device (errno 28)"
    assert ckpt.cause(OSError(13, "Permission denied")) == "Permission denied (errno 13)"
    other = RuntimeError("DATA_LOSS: " + "z" * 400)
    assert ckpt.cause(other) == ("DATA_LOSS: " + "z" * 400)[:297] + "..."


def test_a_config_that_cannot_be_written_is_raised_as_itself_not_as_a_failed_save(
        tmp_path, monkeypatch):
    """save_model_checkpoint names a failed write "cannot write DIR: CAUSE"; a config error
    before any write had been told as one too, its type lost."""
    def unserialisable(config):
        raise TypeError("config field x: object of type set is not JSON serializable")

    monkeypatch.setattr(ckpt_lib, "config_to_json_dict", unserialisable)
    with pytest.raises(TypeError, match="not JSON serializable"):
        ckpt_lib.save_model_checkpoint(tmp_path / "w", {"w": np.zeros(2, np.float32)},
                                       config_lib.default_config())
    assert not (tmp_path / "w").exists()
