"""config.loss defaults (composed into the full config by crema_jax/config.py)."""
import ml_collections


def default_loss_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = "crema"             # key of crema_jax.losses.LOSSES.
    # ST-MEM's per-patch normalised targets: every patch weighs the same whatever its amplitude,
    # and the MAE term starts near 1 (the normalised target's variance), whatever the data scale.
    c.norm_pix_loss = True
    c.contrastive = "infonce"    # contrastive term of "crema": infonce | simclr | siglip.
    # lambda. At init the MAE term is ~1 and InfoNCE ~log(B) (5.5 at a global batch of 256): 0.1
    # puts the contrastive term at ~0.5, the same order as the MAE term but below it, so
    # reconstruction stays the main objective and contrastive learning regularises it (the
    # "contrastive regularized" MAE). Sweep 0.03-1 when tuning.
    c.contrastive_weight = 0.1
    # tau. SimCLR (Chen et al. 2020) found 0.1 best with L2-normalised projections at large batch,
    # and ECG contrastive work (CLOCS, Kiyasseh et al. 2021) uses 0.1 too. Lower sharpens the
    # softmax onto hard negatives; 0.05-0.2 is the useful range.
    c.temperature = 0.1
    return c
