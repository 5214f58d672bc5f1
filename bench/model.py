"""Forward+backward time, XLA FLOPs and achieved GFLOP/s of SiT pretraining steps on this host.

    python bench/model.py [--models=small,base] [--batch=32] [--steps=3] [--losses=stmem,crema]

Two steps per size: "stmem" = ST-MEM's canonical MAE step (1 view, 75% per-lead masking, 84
visible tokens + 24 SEPs per ECG, decoder on all 12x32 slots); "crema" = 2 views (two masks) with
the MAE term on both and InfoNCE between them, i.e. about twice the stmem work. Each step is
value_and_grad of the loss (no optimizer update). FLOPs come from XLA's cost analysis of the
compiled step; the float32 GEMM peak is a 2048x2048 jnp.dot timed right before each row (on a
shared host the load changes during a run, so each row is compared with its own peak).
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from crema_jax.losses import get_loss
from crema_jax.models import FixedEmbedding, build_model, default_model_config, forward
from crema_jax.train import perf

L, N, P, KEEP = 12, 30, 75, 7


def make_batch(batch, views, seed=0):
    rng = np.random.default_rng(seed)
    keep = np.argsort(rng.random((batch, views, L, N)), -1)[..., :KEEP]
    mask = np.ones((batch, views, L, N), bool)
    np.put_along_axis(mask, keep, False, -1)
    flat = mask.reshape(batch, views, -1)
    visible = np.stack([[np.flatnonzero(~m) for m in row] for row in flat]).astype(np.int32)
    return {"patches": rng.standard_normal((batch, views, L, N, P)).astype(np.float32),
            "mask": mask, "visible_idx": visible,
            "patch_valid": np.ones((batch, views, L, N), bool),
            "lead_indices": np.tile(np.arange(L, dtype=np.int32), (batch, 1))}


def flops_of(compiled):
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan")))


def timed(fn, args, steps):
    jax.block_until_ready(fn(*args))  # warm-up (compiled already)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def gemm_peak(n=2048, reps=10):
    a = jnp.ones((n, n), jnp.float32)
    dot = jax.jit(lambda x, y: x @ y)
    jax.block_until_ready(dot(a, a))
    start = time.perf_counter()
    for _ in range(reps):
        out = dot(a, a)
    jax.block_until_ready(out)
    return 2.0 * n ** 3 * reps / (time.perf_counter() - start) / 1e9


def bench_step(size, loss_name, batch_size, steps):
    cfg = default_model_config()
    cfg.size = size
    model = build_model(cfg, rngs=nnx.Rngs(0))
    graphdef, params, fixed = nnx.split(model, nnx.Param, FixedEmbedding)
    views = 1 if loss_name == "stmem" else 2
    loss_fn = get_loss({"name": loss_name, "contrastive": "infonce", "contrastive_weight": 0.1,
                        "temperature": 0.1, "norm_pix_loss": True})
    batch = make_batch(batch_size, views)

    def step(p, b, rng):
        return jax.value_and_grad(lambda q: loss_fn(forward(graphdef, (q, fixed), b, rng), b)[0])(p)

    start = time.perf_counter()
    compiled = jax.jit(step).lower(params, batch, jax.random.key(0)).compile()
    compile_s = time.perf_counter() - start
    peak = gemm_peak()
    seconds = timed(compiled, (params, batch, jax.random.key(0)), steps)
    flops = flops_of(compiled)
    return {"model": size, "step": loss_name, "views": views, "compile_s": compile_s,
            "step_s": seconds, "tflop": flops / 1e12, "gflops": flops / seconds / 1e9,
            "peak": peak}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="small,base")
    parser.add_argument("--losses", default="stmem,crema")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    rows = [bench_step(m, loss, args.batch, args.steps)
            for m in args.models.split(",") for loss in args.losses.split(",")]
    print(f"backend={jax.default_backend()} devices={jax.device_count()} batch={args.batch} "
          f"(forward+backward, float32, median of {args.steps}); host: {perf.host_cpu()}")
    header = ("model", "step", "views", "compile s", "step s", "TFLOP/step", "GFLOP/s",
              "GEMM peak GFLOP/s", "% peak")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        print(f"| {r['model']} | {r['step']} | {r['views']} | {r['compile_s']:.1f} | "
              f"{r['step_s']:.2f} | {r['tflop']:.3f} | {r['gflops']:.1f} | {r['peak']:.1f} | "
              f"{100 * r['gflops'] / r['peak']:.0f} |")


if __name__ == "__main__":
    main()
