"""CREMA ViT-L/75 (1024 wide, 24 deep, 16 heads): the pod-scale model.

    crema-jax pretrain --config=configs/crema_large.py --workdir=gs://BUCKET/crema_large --dry_run
    crema-jax pretrain --config=configs/crema_large.py --workdir=gs://BUCKET/crema_large \
        --config.data.cache_dir=gs://BUCKET/cache

Check memory with --dry_run for the slice you plan to rent before renting it.
"""
from crema_jax.config import default_config


def get_config():
    config = default_config()
    config.model.size = "large"
    config.model.dtype = "bfloat16"       # bf16 matmuls on TPU/GPU; params and optimizer stay f32.
    config.model.scan_layers = True       # 24 blocks compiled once: flat compile time.
    config.loss.name = "crema"
    config.data.num_views = 2
    config.train.global_batch_size = 512  # e.g. 4 hosts x 128 (4 chips per v4/v5p host).
    config.data.num_workers = 16
    # FSDP over every chip: 300M params + Adam moments split instead of replicated; the batch
    # is split over data x fsdp as well, so there is no idle replica.
    config.mesh.data = 1
    config.mesh.fsdp = -1
    config.train.num_steps = 200_000
    config.optim.warmup_steps = 8_000
    config.optim.grad_clip_norm = 1.0
    config.checkpoint.every_steps = 1_000  # pods get preempted: lose at most ~an hour.
    config.train.compilation_cache_dir = ""  # e.g. gs://BUCKET/jax_cache to skip recompiles.
    return config
