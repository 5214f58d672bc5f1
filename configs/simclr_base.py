"""Contrastive only (SimCLR's NT-Xent) on two masked views: the discriminative arm.

    crema-jax pretrain --config=configs/simclr_base.py --workdir=/tmp/simclr_base \
        --config.data.root=/data/cinc2021
"""
from crema_jax.config import default_config


def get_config():
    config = default_config()
    config.model.size = "base"
    config.loss.name = "simclr"
    config.data.num_views = 2
    # Without a reconstruction target, 75% masking leaves views that share too little; half
    # the patches plus signal augmentations make a harder but solvable pairing task.
    config.data.mask.ratio = 0.5
    config.data.augment.names = ("amplitude_scale", "baseline_wander", "gaussian_noise")
    config.train.global_batch_size = 256  # SimCLR needs many negatives per step.
    config.data.num_workers = 8
    config.train.num_steps = 100_000
    config.optim.warmup_steps = 4_000
    config.optim.grad_clip_norm = 1.0
    config.checkpoint.every_steps = 2_000
    return config
