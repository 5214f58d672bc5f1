"""Net1D (ECGFounder, 12-lead, 30.75 M params) inference: JAX vs PyTorch on this machine's CPU.

    python bench/net1d.py [--batch=64] [--samples=5000] [--iters=3] [--compile]

Same random weights in both frameworks (converted with crema_jax.export), float32, one batch of
(batch, 12, samples). JAX: jax.jit of the forward (compile excluded, reported apart). PyTorch:
eager under torch.no_grad(); --compile adds torch.compile (off by default: on a 2-core CPU it
compiled for 3.5 minutes and then ran slower than eager for batch 8 x 1000).
Prints ms/batch (median of --iters timed runs after one warm-up) and ECGs/s, and the max relative
difference of the logits between frameworks.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "references"))


def _time(fn, iters):
    t0 = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return out, first, statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    from flax import nnx

    from crema_jax.export import convert
    from crema_jax.models import params as params_lib
    from crema_jax.models.net1d import default_net1d_config
    from ecgfounder_torch import Net1DRef  # the test suite's independent PyTorch Net1D

    torch.manual_seed(0)
    ref = Net1DRef(in_channels=12).eval()
    cfg = default_net1d_config(12)
    template = params_lib.abstract_params(cfg)
    sd = {k: v.numpy() for k, v in ref.state_dict().items()}
    params, _ = convert.torch_to_jax(sd, convert.ecgfounder_rules(cfg), template, path="bench",
                                     layout="ecgfounder", ignored=convert.ECGFOUNDER_IGNORED)
    model = params_lib.merge(cfg, params)
    graphdef, state = nnx.split(model)
    x = np.random.default_rng(0).standard_normal((args.batch, 12, args.samples)).astype(np.float32)
    xj, xt = jnp.asarray(x), torch.from_numpy(x)

    forward = jax.jit(lambda s, v: nnx.merge(graphdef, s)(v))
    rows = []
    out_j, first, t = _time(lambda: forward(state, xj).block_until_ready(), args.iters)
    rows.append(("JAX jit (XLA CPU)", t, f"compile+first {first:.1f} s"))
    with torch.no_grad():
        out_t, first, t = _time(lambda: ref(xt), args.iters)
        rows.append(("PyTorch eager, no_grad", t, f"first {first:.1f} s"))
        if args.compile:
            try:
                compiled = torch.compile(ref)
                _, first, t = _time(lambda: compiled(xt), args.iters)
                rows.append(("PyTorch torch.compile", t, f"compile+first {first:.1f} s"))
            except Exception as err:  # noqa: BLE001 - report, keep the other rows
                rows.append(("PyTorch torch.compile", float("nan"), f"failed: {type(err).__name__}"))
    diff = float(np.max(np.abs(np.asarray(out_j) - out_t.numpy())) / np.max(np.abs(out_t.numpy())))

    print(f"Net1D 12-lead inference, batch {args.batch} x 12 x {args.samples}, float32, "
          f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
          f"jax {jax.__version__}, torch {torch.__version__}, torch threads "
          f"{torch.get_num_threads()}")
    print(f"{'framework':<26} {'ms/batch':>10} {'ECGs/s':>9}  note")
    for name, sec, note in rows:
        print(f"{name:<26} {sec * 1e3:>10.0f} {args.batch / sec:>9.1f}  {note}")
    print(f"max relative logit difference JAX vs PyTorch: {diff:.1e}")


if __name__ == "__main__":
    main()
