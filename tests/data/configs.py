"""The data config the cache and pipeline tests start from."""
from crema_jax.data import config as config_lib


def one_epoch_config(**overrides):
    """The default data config, unsplit, one epoch of batches of 8, then `overrides` set."""
    cfg = config_lib.default_data_config()
    cfg.split, cfg.num_epochs, cfg.batch_size = "", 1, 8
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg
