"""Net1D (ECGFounder, 12-lead, 30.75 M params) inference: JAX vs PyTorch on this machine's CPU.

    python bench/net1d.py [--batch=64] [--samples=5000] [--iters=3] [--compile] [--stages]
                          [--grouped]

Same random weights in both frameworks (converted with crema_jax.export), float32, one batch of
(batch, 12, samples). JAX: jax.jit of the forward (compile excluded, reported apart), its grouped
convolutions and (at 1-4 ECGs) squeeze-excite and head layers in the native CPU kernels
(models/cpu_kernels.py; CREMA_JAX_NATIVE=0: XLA's; the header says which ran). PyTorch:
eager under torch.no_grad(); --compile adds torch.compile (off by default: on a 2-core CPU it
compiled for 3.5 minutes and then ran slower than eager for batch 8 x 1000).
Prints ms/batch (median of --iters timed runs after one warm-up) and ECGs/s, and the max relative
difference of the logits between frameworks.
--stages adds a per-stage table: the stem and each stage alone on its real input, and the stage's
grouped (middle) convolutions alone, JAX against PyTorch eager, timings interleaved per repeat.
--grouped adds the native grouped-convolution kernel against XLA's formulation (one plain
convolution per group) at each distinct shape of Net1D's grouped convolutions, in GFLOP/s.
"""
from __future__ import annotations

import argparse
import os
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
    parser.add_argument("--stages", action="store_true",
                        help="also time the stem, each stage and its grouped convolutions alone")
    parser.add_argument("--grouped", action="store_true",
                        help="also time the native grouped-convolution kernel against XLA's "
                             "formulation at each shape")
    args = parser.parse_args()

    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    from flax import nnx

    from crema_jax.export import convert
    from crema_jax.models import cpu_kernels
    from crema_jax.models import params as params_lib
    from crema_jax.models.net1d import default_net1d_config
    from crema_jax.train import perf
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

    # Parameters as a flat list of arrays, as crema-jax predict passes them (inference/backbones.py)
    leaves, treedef = jax.tree.flatten(state)
    forward = jax.jit(lambda leaves, v: nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))(v))
    rows = []
    out_j, first, t = _time(lambda: forward(leaves, xj).block_until_ready(), args.iters)
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

    kernels = ("native CPU kernels" if cpu_kernels.ready()
               else "XLA's (native kernels off or unavailable)")
    print(f"Net1D 12-lead inference, batch {args.batch} x 12 x {args.samples}, float32, "
          f"grouped convolutions and matrix-vector products: {kernels}, {perf.host_cpu()}, "
          f"jax {jax.__version__}, torch {torch.__version__}, torch threads "
          f"{torch.get_num_threads()}")
    print(f"{'framework':<26} {'ms/batch':>10} {'ECGs/s':>9}  note")
    for name, sec, note in rows:
        print(f"{name:<26} {sec * 1e3:>10.0f} {args.batch / sec:>9.1f}  {note}")
    jax_sec = rows[0][1]
    for name, sec, _ in rows[1:]:
        print(f"ratio {name} / JAX: {sec / jax_sec:.2f}x"
              + (" (issue target: >= 1.30x)" if "compile" in name else ""))
    print(f"max relative logit difference JAX vs PyTorch: {diff:.1e}")
    if args.stages:
        _print_stages(model, ref, xj, xt, args.iters)
    if args.grouped:
        _print_grouped(cfg, args.batch, args.samples, args.iters)
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.1f}")


def _interleaved(fn_jax, fn_torch, iters):
    """Median seconds of each, warmed up once, the two timed alternately."""
    fn_jax()
    fn_torch()
    tj, tt = [], []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn_jax()
        tj.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        fn_torch()
        tt.append(time.perf_counter() - t0)
    return statistics.median(tj), statistics.median(tt)


def _print_stages(model, ref, xj, xt, iters):
    """Stem, each stage, and each stage's grouped convolutions alone: JAX vs PyTorch eager."""
    import jax
    import jax.numpy as jnp
    import torch
    import torch.nn.functional as F
    from flax import nnx

    from crema_jax.models.grouped_conv import grouped_conv
    from crema_jax.models.net1d import silu

    def jax_fn(module, fn):
        graphdef, state = nnx.split(module)
        jitted = jax.jit(lambda s, v: fn(nnx.merge(graphdef, s), v))
        return lambda v: jitted(state, v).block_until_ready()

    torch.set_grad_enabled(False)
    stem_j = jax_fn(model.first_conv, lambda m, v: silu(m(jnp.swapaxes(v, 1, 2))))
    rows = [("stem", *_interleaved(lambda: stem_j(xj), lambda: F.silu(ref.first_conv(xt)),
                                   iters))]
    hj, ht = stem_j(xj), F.silu(ref.first_conv(xt))
    for i, (stage_j, stage_t) in enumerate(zip(model.stage_list, ref.stage_list)):
        run_j = jax_fn(stage_j, lambda m, v: m(v))
        rows.append((f"stage {i}", *_interleaved(lambda: run_j(hj), lambda: stage_t(ht),
                                                  iters)))
        # The grouped convolutions alone, each on an input of its real shape (the stage's
        # first block takes the stage input's length, the others the output's).
        convs_j = [jax_fn(b, lambda m, v: grouped_conv(v, m.conv2.kernel[...], m.conv2.bias[...],
                                                       stride=m.stride, groups=m.groups))
                   for b in stage_j.block_list]
        convs_t = [b.conv2 for b in stage_t.block_list]
        width = stage_j.block_list[0].out_ch
        outs_j, outs_t = run_j(hj), stage_t(ht)
        ins_j = [jnp.zeros((hj.shape[0], hj.shape[1] if j == 0 else outs_j.shape[1], width))
                 for j in range(len(convs_j))]
        ins_t = [torch.zeros(ht.shape[0], width, ht.shape[2] if j == 0 else outs_t.shape[2])
                 for j in range(len(convs_t))]
        rows.append((f"  grouped convs ({len(convs_j)})", *_interleaved(
            lambda: [f(v) for f, v in zip(convs_j, ins_j)],
            lambda: [f(v) for f, v in zip(convs_t, ins_t)], iters)))
        hj, ht = outs_j, outs_t
    print(f"\nper stage, ms (medians of {iters}, JAX and PyTorch eager interleaved)")
    print(f"{'part':<24} {'JAX':>8} {'PyTorch':>8} {'PyTorch/JAX':>12}")
    for name, tj, tt in rows:
        print(f"{name:<24} {tj * 1e3:>8.0f} {tt * 1e3:>8.0f} {tt / tj:>12.2f}")


def _print_grouped(cfg, batch, samples, iters):
    """Each distinct (length, width, stride) of Net1D's grouped convolutions: the native kernel
    against the XLA formulation, alternated, random inputs."""
    import jax
    import numpy as np

    from crema_jax.models import cpu_kernels, grouped_conv

    if not cpu_kernels.ready():
        print("\n--grouped: the native kernel is off or unavailable (see the warning above)")
        return
    shapes, length = [], -(-samples // cfg.stride)   # after the stem
    for width, blocks in zip(cfg.filters, cfg.blocks):
        for j in range(blocks):
            stride = cfg.stride if j == 0 else 1
            if (length, width, stride) not in shapes:
                shapes.append((length, width, stride))
            length = -(-length // stride)
    rng = np.random.default_rng(0)
    print(f"\ngrouped convolutions alone, batch {batch}, ms (medians of {iters}, alternated)")
    print(f"{'length':>7} {'width':>6} {'stride':>6} {'native':>8} {'GFLOP/s':>8} {'XLA':>8} "
          f"{'GFLOP/s':>8}")
    totals = [0.0, 0.0]
    for length, width, stride in shapes:
        groups = width // cfg.group_width
        x = jax.numpy.asarray(rng.standard_normal((batch, length, width), np.float32))
        k = jax.numpy.asarray(rng.standard_normal((cfg.kernel, cfg.group_width, width),
                                                  np.float32))
        b = jax.numpy.zeros((width,), np.float32)
        native = jax.jit(lambda x, k, b: grouped_conv.grouped_conv(
            x, k, b, stride=stride, groups=groups))
        xla = jax.jit(lambda x, k, b: grouped_conv.xla_grouped_conv(x, k, b, stride, groups))
        tn, tx = _interleaved(lambda: native(x, k, b).block_until_ready(),
                              lambda: xla(x, k, b).block_until_ready(), iters)
        flop = 2 * batch * -(-length // stride) * width * cfg.group_width * cfg.kernel
        totals[0] += tn
        totals[1] += tx
        print(f"{length:>7} {width:>6} {stride:>6} {tn * 1e3:>8.2f} {flop / tn / 1e9:>8.0f} "
              f"{tx * 1e3:>8.2f} {flop / tx / 1e9:>8.0f}")
    print(f"{'sum':>21} {totals[0] * 1e3:>8.1f} {'':>8} {totals[1] * 1e3:>8.1f}")


if __name__ == "__main__":
    main()
