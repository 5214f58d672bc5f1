"""Fixtures shared by the command tests."""
import pytest

from crema_jax import config as config_lib
from crema_jax.models import params as params_lib
from crema_jax.runtime import checkpoint


@pytest.fixture(scope="module")
def sit_checkpoint(tmp_path_factory):
    """A tiny random SiT pretraining checkpoint (a model checkpoint, no training state)."""
    root = tmp_path_factory.mktemp("sit")
    config = config_lib.default_config()
    config.model.size = "tiny"
    checkpoint.save_model_checkpoint(root / "ckpt", params_lib.init_params(config.model, 0),
                                     config)
    return root / "ckpt"
