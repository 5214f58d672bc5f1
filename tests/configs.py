"""The configs the tests build on: the files under configs/, a tiny full run config for training
tests, and a tiny model section for model tests."""
import pathlib
import types

import ml_collections

from crema_jax import config as config_lib
from crema_jax.models import default_model_config

CONFIGS_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"


def load_config_file(name: str) -> types.ModuleType:
    """configs/{name}.py as a module (its docstring and `get_config`), as `--config=` reads it."""
    return config_lib.load_config_module(CONFIGS_DIR / f"{name}.py")


def tiny_config(**overrides) -> ml_collections.ConfigDict:
    """The full run config of configs/crema_tiny.py on 16 synthetic ECGs, batch 8, 5 steps,
    checkpoints every 2. Overrides are "section.field": value."""
    config = load_config_file("crema_tiny").get_config()
    config.data.synthetic_records = 16
    config.train.num_steps = 5
    config.train.tensorboard = False
    config.train.fast_compile = True    # five steps: compile time dominates
    config.optim.warmup_steps = 2
    config.optim.base_lr = 1e-2    # big enough that 5 steps move the loss visibly
    config.checkpoint.every_steps = 2
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 1, 1
    for key, value in overrides.items():
        section, field = key.split(".")
        config[section][field] = value
    return config


def tiny_model_config(**overrides) -> ml_collections.ConfigDict:
    """The model section alone: the default pretraining model at size "tiny". Overrides are
    model fields."""
    config = default_model_config()
    config.size = "tiny"
    for key, value in overrides.items():
        config[key] = value
    return config
