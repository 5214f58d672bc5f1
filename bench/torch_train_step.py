"""The PyTorch reference of the JAX pretraining step, for bench/train_step.py.

Same architecture (crema_jax/export/torch_sit.py CremaSiT with its decoder and projector), same
batch, same objective as config.loss "crema" (normalised-target MSE on the masked patches of
every view + weight x symmetric InfoNCE of the two views' projections), AdamW with the same
betas and weight decay.
"""
from __future__ import annotations

import statistics
import time

import numpy as np


def model_dict(model_cfg) -> dict:
    from crema_jax.models.config import resolve_size

    d = dict(model_cfg.to_dict())
    d.update(resolve_size(model_cfg))
    return d


def torch_step_seconds(config, steps: int, *, compile_mode: bool = False) -> dict:
    import torch
    import torch.nn.functional as F

    from crema_jax.export.torch_sit import CremaSiT
    from crema_jax.train import trainer

    torch.manual_seed(0)
    model = CremaSiT(model_dict(config.model), with_decoder=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=tuple(config.optim.betas),
                            eps=float(config.optim.eps), weight_decay=float(config.optim.weight_decay))
    local = next(trainer.input_iterator(config, int(config.train.global_batch_size)))
    patches = torch.from_numpy(np.asarray(local["patches"]))
    mask = torch.from_numpy(np.asarray(local["mask"]))
    visible = torch.from_numpy(np.asarray(local["visible_idx"]).astype(np.int64))
    leads = torch.from_numpy(np.asarray(local["lead_indices"]).astype(np.int64))
    weight, tau = float(config.loss.contrastive_weight), float(config.loss.temperature)

    def loss_fn(patches, mask, visible, leads):
        b, v, nl, n, p = patches.shape
        flat = patches.reshape(b * v, nl, n, p)
        vis = visible.reshape(b * v, -1)
        tokens, seps = model.encoder(flat, leads.repeat_interleave(v, 0), vis)
        norm = model.encoder.norm
        pred = model.decoder(norm(tokens), norm(seps), vis, n)
        mean = flat.mean(-1, keepdim=True)
        target = (flat - mean) / torch.sqrt(flat.var(-1, keepdim=True, unbiased=True) + 1e-6)
        m = mask.reshape(b * v, nl, n).float()
        mae = (((pred - target) ** 2).mean(-1) * m).sum() / m.sum()
        if v < 2:
            return mae
        z = F.normalize(model.projector(norm(tokens.mean(1))).reshape(b, v, -1), dim=-1)
        logits = z[:, 0] @ z[:, 1].T / tau
        labels = torch.arange(b)
        return mae + weight * 0.5 * (F.cross_entropy(logits, labels)
                                     + F.cross_entropy(logits.T, labels))

    fn = torch.compile(loss_fn) if compile_mode else loss_fn

    def step():
        opt.zero_grad(set_to_none=True)
        loss = fn(patches, mask, visible, leads)
        loss.backward()
        opt.step()
        return float(loss.detach())

    for _ in range(2 if compile_mode else 1):  # warm-up (and compilation)
        step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return {"step_seconds": statistics.median(times), "threads": torch.get_num_threads()}
