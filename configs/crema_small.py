"""CREMA ViT-S/75 (384 wide, 12 deep, 6 heads): a quarter of base's FLOPs for ablations.

    crema-jax pretrain --config=configs/crema_small.py --workdir=/tmp/crema_small \
        --config.data.root=/data/cinc2021
"""
from crema_jax.config import default_config


def get_config():
    config = default_config()
    config.model.size = "small"
    config.loss.name = "crema"
    config.data.num_views = 2
    config.train.global_batch_size = 256  # InfoNCE's negatives come from all of it.
    config.data.num_workers = 8
    config.train.num_steps = 100_000
    config.optim.warmup_steps = 4_000
    config.optim.grad_clip_norm = 1.0     # contrastive spikes early in training.
    config.checkpoint.every_steps = 2_000
    return config
