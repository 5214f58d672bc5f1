"""Time the full pretraining step (forward, backward, AdamW) after compilation.

    python bench/train_step.py --model=tiny --batch=8 --steps=5
    python bench/train_step.py --model=base --batch=32 --loss=stmem --compare   # JAX vs PyTorch
    python bench/train_step.py --model=tiny,small,base --compare --steps=3
    python bench/train_step.py --model=base --batch=256 --dtype=bfloat16   # GPU/TPU sized
    python bench/train_step.py --model=small --batch=32 --loss=stmem --grad_accum=4  # 4 x 8 ECGs

Prints a table, then LAST one JSON line: {"step_seconds" (median), "flops" (per step, all
devices), "ecgs_per_sec", "mfu", ...}. Works from any directory (the repo root is put on
sys.path when crema_jax is not installed).

The JAX step is exactly the trainer's (crema_jax.train.step.train_step, jitted with the state
donated) on a batch from the real input pipeline over synthetic ECGs. The PyTorch reference is the
same architecture (crema_jax/export/torch_sit.py, the export target) with the same loss (MAE on
masked patches of every view + weight x InfoNCE between the views' projections) and AdamW.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

if __name__ == "__main__":  # As `crema-jax` runs: glibc THP for XLA:CPU's step buffers.
    from crema_jax.runtime import host_malloc  # noqa: E402

    host_malloc.reexec_with_hugetlb()

import jax  # noqa: E402

from crema_jax import config as config_lib  # noqa: E402
from crema_jax.data.pipeline import batch as batch_lib  # noqa: E402
from crema_jax.runtime import mesh as mesh_lib  # noqa: E402
from crema_jax.train import perf as metrics_lib, trainer  # noqa: E402


def make_config(model: str, batch: int, dtype: str, loss: str, grad_accum: int = 1):
    """configs/crema_<model>.py (its decoder and head sizes) with the bench's batch, dtype and
    micro-batches per optimizer step."""
    path = REPO / "configs" / f"crema_{model}.py"
    if not path.exists():
        raise SystemExit(f"--model={model}: expected one of tiny, small, base, large ({path})")
    config = config_lib.load_config_file(path)
    config.model.dtype = dtype
    config.loss.name = loss
    config.data.num_views = 1 if loss in ("mae", "stmem") else 2
    config.train.global_batch_size = batch
    config.optim.grad_accum_steps = grad_accum
    config.data.synthetic_records = batch
    config.data.num_workers = 0
    config.train.num_steps = 1000
    config.optim.warmup_steps = 10
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = -1, 1, 1
    return config


def compiled_step_after_warmup(config, *, local=None, devices=None) -> dict:
    """The trainer's compiled step, its state and a batch from the input pipeline (or `local`, a
    host batch), after one warm-up step (allocator, thread pools), on `devices` (default: all).
    Keys: setup, compiled, state, batch, rng, compile_seconds."""
    setup = trainer.build(config, devices=devices)
    target = trainer.abstract_state(setup)
    t0 = time.perf_counter()
    compiled = trainer.compile_step(setup, config, target)
    compile_s = time.perf_counter() - t0
    state = trainer.init_state(setup, jax.random.key(0))
    if local is None:
        local = next(trainer.input_iterator(config, setup.per_process_batch))
    batch = mesh_lib.global_batch(batch_lib.device_part(local), setup.mesh)
    rng = jax.random.key(1)
    state, m = compiled(state, batch, rng)
    jax.block_until_ready(m)
    return {"setup": setup, "compiled": compiled, "state": state, "batch": batch, "rng": rng,
            "compile_seconds": compile_s}


def time_steps(run: dict, steps: int) -> tuple[list, dict]:
    """Wall seconds of `steps` calls of run["compiled"] (run["state"] is advanced), and the last
    step's metrics."""
    times, m = [], None
    for _ in range(steps):
        t = time.perf_counter()
        run["state"], m = run["compiled"](run["state"], run["batch"], run["rng"])
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t)
    return times, m


def time_jax(config, steps: int) -> dict:
    run = compiled_step_after_warmup(config)
    setup, compiled, batch, compile_s = (run["setup"], run["compiled"], run["batch"],
                                         run["compile_seconds"])
    times, m = time_steps(run, steps)
    flops_dev = metrics_lib.compiled_flops_per_device(compiled)
    if config.optim.grad_accum_steps > 1:
        # XLA counts the micro-batch loop's body once: count the same step unlooped (compiled,
        # never run), not the trainer's estimate that also repeats the update.
        whole = config.copy_and_resolve_references()
        whole.optim.grad_accum_steps = 1
        setup1 = trainer.build(whole)
        flops_dev = metrics_lib.compiled_flops_per_device(
            trainer.compile_step(setup1, whole, trainer.abstract_state(setup1)))
    peak, source = metrics_lib.peak_tflops_per_device(config.model.dtype)
    # CPU peak: the host GEMM shared by the devices the mesh uses, the fastest of the rates
    # measured before and after the timed steps.
    if jax.devices()[0].platform == "cpu":
        peak = metrics_lib.measured_gemm_tflops(refresh=True) / setup.mesh.size
    step_s = statistics.median(times)
    return {"step_seconds": step_s, "flops": flops_dev * setup.mesh.size,
            "flops_per_device": flops_dev, "compile_seconds": compile_s,
            "ecgs_per_sec": setup.global_batch / step_s,
            "tflops_per_device": flops_dev / step_s / 1e12,
            "mfu": flops_dev / step_s / 1e12 / peak, "peak_tflops_per_device": peak,
            "peak_source": source, "devices": setup.mesh.size,
            "loss": float(m["loss"]), "batch": batch["patches"].shape[0]}


def time_torch(config, steps: int, compile_mode: bool) -> dict:
    from bench.torch_train_step import torch_step_seconds
    return torch_step_seconds(config, steps, compile_mode=compile_mode)


def row(name, result):
    return (f"{name:<28} {result['step_seconds'] * 1e3:10.1f} ms {result.get('ecgs_per_sec', 0):9.1f}"
            f" ECG/s {result.get('mfu', float('nan')):8.2%} MFU")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny",
                   help="tiny | small | base | large, or a comma-separated list of them")
    p.add_argument("--batch", type=int, default=8, help="global batch (ECGs per step)")
    p.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up")
    p.add_argument("--dtype", default="float32", help="float32 | bfloat16 (config.model.dtype)")
    p.add_argument("--loss", default="crema", help="config.loss.name (crema: 2 views)")
    p.add_argument("--grad_accum", type=int, default=1,
                   help="config.optim.grad_accum_steps: the JAX step runs the batch as this many "
                        "micro-batches (one optimizer step; the same gradient for per-sample-mean "
                        "losses such as mae/stmem). PyTorch always runs the whole batch.")
    p.add_argument("--compare", "--torch", action="store_true",
                   help="also time the PyTorch reference, eager and under torch.compile")
    p.add_argument("--no_torch_compile", action="store_true", help="skip torch.compile")
    p.add_argument("--torch_threads", type=int, default=0,
                   help="torch.set_num_threads (0 = PyTorch's default). On a shared/loaded CPU "
                        "OpenMP spin-waiting can make 2+ threads far slower than 1.")
    args = p.parse_args(argv)

    models = tuple(args.model.split(","))
    if args.grad_accum < 1 or args.batch % args.grad_accum:
        p.error(f"--grad_accum={args.grad_accum}: expected a positive divisor of "
                f"--batch={args.batch}")
    if args.torch_threads:
        import torch
        torch.set_num_threads(args.torch_threads)
    gemm = metrics_lib.measured_gemm_tflops() if jax.devices()[0].platform == "cpu" else None
    print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind}; batch {args.batch}; "
          f"{args.steps} timed steps; loss {args.loss}; dtype {args.dtype}; "
          f"grad_accum {args.grad_accum}"
          + (f"; CPU float32 GEMM peak {gemm * 1e3:.1f} GFLOP/s (measured again after each "
             "model's steps; MFU uses the faster)" if gemm else "")
          + f"; GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}")
    print(f"host: {metrics_lib.host_cpu()}")
    summary = {}
    for model in models:
        config = make_config(model, args.batch, args.dtype, args.loss, args.grad_accum)
        result = time_jax(config, args.steps)
        print(row(f"jax {model}", result) + f"  ({result['flops'] / 1e9:.1f} GFLOP/step, "
              f"compile {result['compile_seconds']:.1f} s, peak "
              f"{result['peak_tflops_per_device'] * result['devices'] * 1e3:.0f} GFLOP/s)")
        if args.compare:
            eager = time_torch(config, args.steps, compile_mode=False)
            eager["ecgs_per_sec"] = args.batch / eager["step_seconds"]
            eager["mfu"] = result["flops"] / eager["step_seconds"] / 1e12 / (
                result["peak_tflops_per_device"] * result["devices"])
            print(row(f"torch eager {model}", eager)
                  + f"  PyTorch/JAX time ratio {eager['step_seconds'] / result['step_seconds']:.2f}")
            result["torch_eager_step_seconds"] = eager["step_seconds"]
            result["torch_eager_over_jax"] = eager["step_seconds"] / result["step_seconds"]
            if not args.no_torch_compile:
                try:
                    comp = time_torch(config, args.steps, compile_mode=True)
                    comp["ecgs_per_sec"] = args.batch / comp["step_seconds"]
                    comp["mfu"] = result["flops"] / comp["step_seconds"] / 1e12 / (
                        result["peak_tflops_per_device"] * result["devices"])
                    print(row(f"torch.compile {model}", comp) + f"  PyTorch/JAX time ratio "
                          f"{comp['step_seconds'] / result['step_seconds']:.2f}")
                    result["torch_compile_step_seconds"] = comp["step_seconds"]
                    result["torch_compile_over_jax"] = comp["step_seconds"] / result["step_seconds"]
                except Exception as err:  # noqa: BLE001 - report, keep the JAX numbers.
                    print(f"torch.compile {model}: failed ({type(err).__name__}: {err})"[:300])
        summary[model] = result
    last = summary[models[-1]]
    out = dict(last, model=models[-1], glibc_tunables=os.environ.get("GLIBC_TUNABLES", ""))
    if len(models) > 1:
        out["by_model"] = summary
    print(json.dumps(out, default=float))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
