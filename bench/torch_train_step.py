"""The PyTorch reference of the JAX pretraining step, for bench/train_step.py and
bench/accelerator_rows.py.

Same architecture (crema_jax/export/torch_sit.py CremaSiT with its decoder and projector), same
batch, same objective as config.loss "crema" (normalised-target MSE on the masked patches of
every view + weight x symmetric InfoNCE of the two views' projections), AdamW with the same
betas and weight decay, after clipping the global gradient norm as config.optim.grad_clip_norm
asks (as optax.clip_by_global_norm does in the JAX step).

On a GPU (`device="cuda"`) the usual fast PyTorch recipe: bf16 autocast (`amp=True`, the JAX
config's model.dtype="bfloat16": float32 parameters, bf16 matrix products), torch.compile of the
forward and backward, fused AdamW.
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


def torch_step_seconds(config, steps: int, *, compile_mode: bool = False, device: str = "cpu",
                       amp: bool = False, local: dict | None = None,
                       count_flops: bool = False, backend: str = "inductor") -> dict:
    """Median wall seconds of `steps` optimizer steps after warm-up (and compilation).

    local: a host pretraining batch (default: the first of the configured input pipeline).
    backend: torch.compile's backend ("aot_eager" traces forward and backward as inductor would
    but runs them eagerly: a quick check of the compiled path on a CPU).
    Returns {"step_seconds", "threads", "compile_seconds" (warm-up wall, compilation
    included), "peak_memory_bytes" (CUDA allocator peak; None on CPU), "flops" (one step's
    forward + backward, counted by torch.utils.flop_counter; only with count_flops)}.
    """
    import torch
    import torch.nn.functional as F

    from crema_jax.export.torch_sit import CremaSiT

    dev = torch.device(device)
    torch.manual_seed(0)
    model = CremaSiT(model_dict(config.model), with_decoder=True).to(dev)
    if amp:  # The decoder scatters its embedded tokens into a grid of its float32 mask token,
        # which autocast's bf16 Linear output cannot enter: hand it float32 tokens.
        model.decoder.embed.register_forward_hook(lambda module, inputs, out: out.float())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=tuple(config.optim.betas),
                            eps=float(config.optim.eps),
                            weight_decay=float(config.optim.weight_decay),
                            fused=dev.type == "cuda")
    clip = float(config.optim.grad_clip_norm)
    if local is None:
        from crema_jax.train import trainer
        local = next(trainer.input_iterator(config, int(config.train.global_batch_size)))
    patches = torch.from_numpy(np.asarray(local["patches"])).to(dev)
    mask = torch.from_numpy(np.asarray(local["mask"])).to(dev)
    visible = torch.from_numpy(np.asarray(local["visible_idx"]).astype(np.int64)).to(dev)
    leads = torch.from_numpy(np.asarray(local["lead_indices"]).astype(np.int64)).to(dev)
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
        labels = torch.arange(b, device=logits.device)
        return mae + weight * 0.5 * (F.cross_entropy(logits, labels)
                                     + F.cross_entropy(logits.T, labels))

    fn = torch.compile(loss_fn, backend=backend) if compile_mode else loss_fn
    inputs = (patches, mask, visible, leads)

    def forward_backward(f):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            loss = f(*inputs)
        loss.backward()
        return loss

    def step():
        opt.zero_grad(set_to_none=True)
        loss = forward_backward(fn)
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        return float(loss.detach())  # waits for the device

    flops = None
    if count_flops:  # one eager pass, before anything is compiled
        from torch.utils.flop_counter import FlopCounterMode
        with FlopCounterMode(display=False) as counter:
            forward_backward(loss_fn)
        flops = float(counter.get_total_flops())
        opt.zero_grad(set_to_none=True)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    for _ in range(2 if compile_mode else 1):  # warm-up (and compilation)
        step()
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None
    return {"step_seconds": statistics.median(times), "threads": torch.get_num_threads(),
            "compile_seconds": compile_s, "peak_memory_bytes": peak, "flops": flops}
