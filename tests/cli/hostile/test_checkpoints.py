"""Reading a CREMA checkpoint: weights holding NaN (a damaged checkpoint, named as the run that
diverged), a damaged Orbax step metadata file (not logged as errors), a step left incomplete by
an interrupted save (the step read instead is said)."""
import numpy as np
import pytest


def test_a_checkpoint_holding_nan_weights_is_damaged(tmp_path):
    from crema_jax import config as config_lib
    from crema_jax.models import params as params_lib
    from crema_jax.runtime import checkpoint, trees

    cfg = config_lib.default_config()
    cfg.model.size = "tiny"
    params = trees.flatten(params_lib.init_params(cfg.model, 0))
    first = sorted(params)[0]
    params[first] = np.array(params[first], copy=True)
    params[first].flat[0] = np.nan
    checkpoint.save_model_checkpoint(tmp_path / "run", trees.unflatten_like(
        params, params_lib.init_params(cfg.model, 0)), cfg)
    with pytest.raises(checkpoint.DamagedCheckpointError,
                       match=rf"the saved weights hold 1 NaN or inf values in 1 arrays \(first: "
                             rf"{first}\); the run that saved them diverged"):
        config_lib.load_checkpoint(tmp_path / "run")


def test_a_damaged_orbax_step_metadata_file_is_not_logged_as_errors(tmp_path, caplog):
    """_CHECKPOINT_METADATA (Orbax's timestamps) is read for nothing of ours: a damaged one
    printed its content on 2 to 4 ERROR lines for a checkpoint that loads."""
    from crema_jax import config as config_lib
    from crema_jax.models import params as params_lib
    from crema_jax.runtime import checkpoint

    cfg = config_lib.default_config()
    cfg.model.size = "tiny"
    step = checkpoint.save_model_checkpoint(tmp_path / "run", params_lib.init_params(cfg.model, 0),
                                            cfg)
    (step / "_CHECKPOINT_METADATA").write_text("{garbage")
    with caplog.at_level("INFO"):
        params, _, loaded = config_lib.load_checkpoint(tmp_path / "run")
    assert loaded == 0 and params
    assert not [r for r in caplog.records if "json parse" in r.getMessage()]


def test_a_checkpoint_read_past_an_incomplete_step_says_which_step(tmp_path, caplog):
    """An interrupted save left step 4 half-written: embed read step 0 without a word."""
    from crema_jax import config as config_lib
    from crema_jax.models import params as params_lib
    from crema_jax.runtime import checkpoint

    cfg = config_lib.default_config()
    cfg.model.size = "tiny"
    step = checkpoint.save_model_checkpoint(tmp_path / "run", params_lib.init_params(cfg.model, 0),
                                            cfg)
    (step.parent / "4" / "params").mkdir(parents=True)   # no commit marker, no config
    with caplog.at_level("WARNING"):
        _, _, loaded = config_lib.load_checkpoint(tmp_path / "run")
    said = [r.getMessage() for r in caplog.records if "incomplete" in r.getMessage()]
    assert loaded == 0
    assert said == [f"{step.parent}: step 4 is incomplete (a save cut short); reading step 0"]
