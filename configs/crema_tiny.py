"""CREMA with a tiny SiT (64 wide, 2 deep) and a small decoder: smoke tests and CPU runs.

    crema-jax pretrain --config=configs/crema_tiny.py --workdir=/tmp/crema_tiny \
        --config.data.synthetic_records=64

Compiles in seconds; every piece (mesh, masks, views, contrastive gathers, checkpoints) is the
real one, only the widths shrink.
"""
from crema_jax.config import default_config


def get_config():
    config = default_config()
    config.model.size = "tiny"
    # ST-MEM's 256-wide, 4-deep decoder would dwarf a 64-wide encoder; keep it proportionate.
    config.model.decoder_width = 32
    config.model.decoder_depth = 1
    config.model.decoder_num_heads = 2
    config.model.decoder_head_dim = 16
    config.model.proj_dim = 32
    config.loss.name = "crema"
    config.data.num_views = 2
    config.train.global_batch_size = 8
    config.train.num_steps = 200
    config.optim.warmup_steps = 10
    config.checkpoint.every_steps = 50
    return config
