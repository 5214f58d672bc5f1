"""Frozen-feature extraction throughput (ECGs/s) of the SiT sizes, float32, ST-MEM's 3 crops.

    python bench/features.py                       # tiny, small, base; 1,000 ECGs each
    python bench/features.py --sizes=base --num_ecgs=1000 --max_seconds=0

Each ECG is 12 leads x 2250 samples at 250 Hz per crop, 3 crops (the evaluation protocol), so one
ECG = 3 encoder passes over 12 x 30 patch tokens (+ 24 SEP tokens). Synthetic inputs (random
normal): throughput does not depend on the values. The timed path is the one `crema-jax probe`
uses (features.make_feature_fn: one jit, params replicated, batch split over all devices);
the first batch (compile included) is timed separately. --max_seconds caps the timed loop per
size: the table then says how many ECGs were measured and projects the time for --num_ecgs
from the measured rate.

Arithmetic floor: a base (ViT-B/75) ECG costs ~215 GFLOP (3 crops x 384 tokens x 2 x 85M
params, plus attention), so 1,000 ECGs are ~215 TFLOP: about 1 hour at the ~60 GFLOP/s a
2048^3 float32 matmul reaches on a 2-core CPU, a few seconds on one GPU.
"""
from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np


def _bench_size(size: str, *, num_ecgs: int, batch_size: int, max_seconds: float, seed: int):
    from crema_jax.inference import backbones
    from crema_jax.runtime import mesh as mesh_lib

    backbone = backbones.load(backbones.RANDOM, backbone="sit", model_size=size, seed=seed)
    mesh = mesh_lib.make_mesh()
    batch_size = mesh_lib.round_batch(batch_size, mesh)
    rng = np.random.default_rng(seed)
    batch = {
        "patches": rng.normal(size=(batch_size, 3, 12, 30, 75)).astype(np.float32),
        "patch_valid": np.ones((batch_size, 3, 12, 30), bool),
        "lead_indices": np.tile(np.arange(12, dtype=np.int32), (batch_size, 1)),
    }
    fn = backbones.make_apply(backbone, mesh)
    t0 = time.perf_counter()
    width = jax.block_until_ready(fn(batch)).shape[-1]  # compile + first batch, not timed below
    compile_s = time.perf_counter() - t0
    done, t0 = 0, time.perf_counter()
    pending = None
    while done < num_ecgs:
        out = fn(batch)  # dispatch the next batch before waiting for the previous one
        if pending is not None:
            jax.block_until_ready(pending)
        pending = out
        done += batch_size
        if max_seconds and time.perf_counter() - t0 > max_seconds:
            break
    jax.block_until_ready(pending)
    seconds = time.perf_counter() - t0
    rate = done / seconds
    flops = _flops_per_ecg(backbone, batch_size)
    return {"size": size, "width": int(width), "batch": batch_size, "measured": done,
            "seconds": seconds, "ecg_per_s": rate, "projected_s": num_ecgs / rate,
            "compile_s": compile_s, "gflop_per_ecg": flops / 1e9,
            "gflop_per_s": flops * rate / 1e9}


def _flops_per_ecg(backbone, batch_size: int) -> float:
    """XLA's FLOP count of one 3-crop ECG (cost analysis of the single-device program)."""
    def fn(state, patches, leads, valid):
        return backbone.runner.features(backbone.graphdef, state, {
            "patches": patches, "lead_indices": leads, "patch_valid": valid})

    args = (backbone.state,
            jax.ShapeDtypeStruct((1, 3, 12, 30, 75), np.float32),
            jax.ShapeDtypeStruct((1, 12), np.int32),
            jax.ShapeDtypeStruct((1, 3, 12, 30), np.bool_))
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", float("nan")))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="tiny,small,base")
    parser.add_argument("--num_ecgs", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_seconds", type=float, default=120.0,
                        help="cap on the timed loop per size (0 = run all --num_ecgs)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"devices: {jax.device_count()} x {jax.devices()[0].platform} "
          f"({jax.devices()[0].device_kind}), host CPUs: {os.cpu_count()}, jax {jax.__version__}")
    rows = [_bench_size(s, num_ecgs=args.num_ecgs, batch_size=args.batch_size,
                        max_seconds=args.max_seconds, seed=args.seed)
            for s in args.sizes.split(",")]
    print(f"\n| size | width | batch | ECGs timed | seconds | ECGs/s | time for {args.num_ecgs:,} "
          f"ECGs (s) | first batch incl. compile (s) | GFLOP/ECG | GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        projected = f"{r['projected_s']:.1f}" + ("" if r["measured"] >= args.num_ecgs
                                                 else " (projected)")
        print(f"| {r['size']} | {r['width']} | {r['batch']} | {r['measured']} | "
              f"{r['seconds']:.1f} | {r['ecg_per_s']:.1f} | {projected} | {r['compile_s']:.1f} | "
              f"{r['gflop_per_ecg']:.1f} | {r['gflop_per_s']:.1f} |")


if __name__ == "__main__":
    main()
