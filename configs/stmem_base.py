"""ST-MEM exactly (Na et al., ICLR 2024): ViT-B/75 MAE with per-lead masking, one view.

    crema-jax pretrain --config=configs/stmem_base.py --workdir=/tmp/stmem_base \
        --config.data.root=/data/cinc2021

The baseline CREMA is compared against; its checkpoints are ST-MEM-layout compatible.
"""
from crema_jax.config import default_config
from crema_jax.data import presets


def get_config():
    config = default_config()
    # ST-MEM's own data path: 10 s windows, FFT resampling to 250 Hz, each random 2250-sample
    # crop filtered and standardised on its own (data/presets.py), and lead embeddings by
    # position, as its downstream models take them.
    presets.apply(config.data, "stmem")
    config.model.lead_embedding = "position"
    config.model.size = "base"
    config.loss.name = "stmem"            # normalised-target MSE on masked patches of view 0.
    config.data.num_views = 1             # no contrastive pair: half the input bandwidth.
    config.data.mask.name = "random_per_lead"
    config.data.mask.ratio = 0.75         # 7 of 30 patches visible per lead.
    config.train.global_batch_size = 256
    config.data.num_workers = 8
    # ST-MEM's optimiser: AdamW (0.9, 0.95), wd 0.01 on everything, lr 1.5e-4 x batch/256,
    # linear warm-up then per-step cosine, no clipping (the defaults of default_optim_config).
    config.train.num_steps = 100_000
    config.optim.warmup_steps = 4_000
    config.checkpoint.every_steps = 2_000
    return config
