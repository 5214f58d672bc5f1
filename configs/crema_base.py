"""CREMA ViT-B/75: contrastive-regularised MAE, the main pretraining recipe.

    crema-jax prepare ...   # optional: an ArrayRecord cache makes epochs ~50x cheaper
    crema-jax pretrain --config=configs/crema_base.py --workdir=/tmp/crema_base \
        --config.data.root=/data/cinc2021 [--config.data.cache_dir=/data/cache]

On a TPU pod slice see tpu_scripts/launch_pretrain.sh (mesh data=-1 fills every chip).
"""
from crema_jax.config import default_config


def get_config():
    config = default_config()
    config.model.size = "base"            # ST-MEM's ViT-B/75: its checkpoints load and compare.
    config.loss.name = "crema"            # MAE + lambda * InfoNCE across the global batch.
    config.data.num_views = 2             # two masks of the same crop = the contrastive pair.
    # ST-MEM trains with a global batch of 1024 at lr 1.5e-4 x 1024/256; the contrastive term
    # gets more negatives from a large batch too (every ECG of the global batch is a negative).
    config.train.global_batch_size = 256
    config.data.num_workers = 8           # WFDB decode + filtering is CPU-bound per record.
    config.train.num_steps = 100_000
    config.optim.warmup_steps = 4_000     # ~4% of training, MAE/ST-MEM style.
    # The contrastive logits can spike early; clipping keeps a spike from undoing warm-up.
    config.optim.grad_clip_norm = 1.0
    config.checkpoint.every_steps = 2_000
    return config
