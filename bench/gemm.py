"""Float32 GEMM rates of XLA (through jax.jit) and PyTorch at the SiT train step's shapes.

    python bench/gemm.py                 # SiT-small, batch 8 x 2 views
    python bench/gemm.py --width=768 --tokens=1728

Explains most of the JAX/PyTorch train-step gap on CPU: both sides run the same GEMMs, so the
step-time ratio is bounded by the ratio of these rates. Each shape is timed as the forward
product (x @ W) and as the weight gradient (x^T @ dy, contracting the token axis). All JAX
timings run before PyTorch starts its thread pool, so the two never compete for cores.
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from crema_jax.train import perf


def _median_seconds(fn, repeats):
    fn()
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def shapes(tokens, width, mlp_ratio=4):
    """(name, M, K, N) of the block's dense layers: qkv, attention out, MLP in, MLP out."""
    return [("qkv", tokens, width, 3 * width), ("attn out", tokens, width, width),
            ("mlp in", tokens, width, mlp_ratio * width), ("mlp out", tokens, mlp_ratio * width,
                                                           width)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=1728,
                   help="rows = batch x views x tokens per sequence (small, batch 8: 16 x 108)")
    p.add_argument("--width", type=int, default=384)
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    cases = []
    for name, m, k, n in shapes(args.tokens, args.width):
        x = rng.standard_normal((m, k), np.float32)
        w = rng.standard_normal((k, n), np.float32)
        dy = rng.standard_normal((m, n), np.float32)
        cases.append((name, m, k, n, x, w, dy))

    forward = jax.jit(lambda x, w: x @ w)
    weight_grad = jax.jit(lambda x, dy: jax.lax.dot_general(x, dy, (((0,), (0,)), ((), ()))))
    jax_s = {}
    for name, m, k, n, x, w, dy in cases:
        jx, jw, jdy = jnp.asarray(x), jnp.asarray(w), jnp.asarray(dy)
        jax_s[name] = (
            _median_seconds(lambda: forward(jx, jw).block_until_ready(), args.repeats),
            _median_seconds(lambda: weight_grad(jx, jdy).block_until_ready(), args.repeats))

    import torch  # after every JAX timing: its OpenMP threads spin-wait between ops.

    torch_s = {}
    for name, m, k, n, x, w, dy in cases:
        tx, tw, tdy = map(torch.from_numpy, (x, w, dy))
        torch_s[name] = (_median_seconds(lambda: tx @ tw, args.repeats),
                         _median_seconds(lambda: tx.T @ tdy, args.repeats))

    print(f"float32 GEMM GFLOP/s, {args.tokens} tokens x width {args.width}; "
          f"{jax.devices()[0].device_kind}, torch {torch.get_num_threads()} threads")
    print(f"host: {perf.host_cpu()}")
    print(f"{'layer':<10} {'M x K x N':>18} {'XLA fwd':>8} {'torch fwd':>9} {'XLA dW':>8} "
          f"{'torch dW':>9}")
    total_jax = total_torch = 0.0
    for name, m, k, n, *_ in cases:
        flops = 2.0 * m * k * n
        (jf, jg), (tf, tg) = jax_s[name], torch_s[name]
        total_jax += jf + jg
        total_torch += tf + tg
        print(f"{name:<10} {f'{m}x{k}x{n}':>18} {flops / jf / 1e9:8.0f} {flops / tf / 1e9:9.0f} "
              f"{flops / jg / 1e9:8.0f} {flops / tg / 1e9:9.0f}")
    print(f"sum of these GEMM times: XLA {total_jax * 1e3:.1f} ms, PyTorch {total_torch * 1e3:.1f} "
          f"ms (PyTorch/XLA time ratio {total_torch / total_jax:.2f})")


if __name__ == "__main__":
    main()
