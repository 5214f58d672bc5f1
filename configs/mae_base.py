"""Plain MAE (lambda = 0) on every view: the generative-only arm of the ablation.

    crema-jax pretrain --config=configs/mae_base.py --workdir=/tmp/mae_base \
        --config.data.root=/data/cinc2021
"""
from crema_jax.config import default_config


def get_config():
    config = default_config()
    config.model.size = "base"
    config.loss.name = "mae"
    config.data.num_views = 1             # nothing to contrast: one masked view per ECG.
    config.train.global_batch_size = 256
    config.data.num_workers = 8
    config.train.num_steps = 100_000
    config.optim.warmup_steps = 4_000
    config.checkpoint.every_steps = 2_000
    return config
