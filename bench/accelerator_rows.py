"""One measurement of bench/accelerator.sh's table, in a process of its own (bench/accelerator.py
starts one per row, each under its own time cap).

    python bench/accelerator_rows.py jax_train --model=small --batch=256 --steps=20
    python bench/accelerator_rows.py torch_train --model=small --batch=256 --steps=20
    python bench/accelerator_rows.py jax_net1d --batch=256 --samples=5000 --steps=20
    python bench/accelerator_rows.py torch_net1d --batch=256 --samples=5000 --steps=20

- jax_train: crema_jax's own pretraining step (bench/train_step.py: config -> trainer.build ->
  trainer.compile_step, the jitted step with the state donated), model.dtype bfloat16, on ONE
  device, on a synthetic batch of the batch contract (crema_jax/data/pipeline/batch.py) with the
  configured masks: no input pipeline is imported.
- torch_train: the same step in PyTorch (bench/torch_train_step.py): bf16 autocast,
  torch.compile, fused AdamW on a GPU.
- jax_net1d / torch_net1d: ECGFounder's Net1D forward, float32, jax.jit against torch.compile
  of the test suite's independent PyTorch Net1D (tests/references/ecgfounder_torch.py).

Prints progress lines, then LAST one JSON line: step_seconds (median), batch, flops (one step,
XLA's cost analysis or torch.utils.flop_counter), peak_tflops and peak_source, memory_bytes
and memory_source, compile_seconds, device.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import resource
import statistics
import sys
import time
import types

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

# --net1d=tiny: two narrow stages, for a CPU run that compiles in seconds.
NET1D_TINY = dict(filters=[16, 32], blocks=[1, 1])


def say(text: str) -> None:
    print(f"accelerator: {text}", flush=True)


def synthetic_batch(config, batch: int) -> dict:
    """A host pretraining batch of config.data's shapes (batch.pretrain_spec): standard-normal
    patches and masks drawn by the configured strategy, as the input pipeline would hand over."""
    from crema_jax.data.pipeline import batch as batch_lib, masking
    from crema_jax.data.reading import leads as leads_lib

    spec = batch_lib.pretrain_spec(config.data, batch)
    b, v, nl, n, p = spec["patches"][0]
    rng = np.random.default_rng(0)
    views = [masking.batch_masks(config.data.mask.name, rng, b, nl, n,
                                 float(config.data.mask.ratio)) for _ in range(v)]
    out = {"patches": rng.standard_normal((b, v, nl, n, p), dtype=np.float32),
           "mask": np.stack([m[0] for m in views], 1),
           "visible_idx": np.stack([m[1] for m in views], 1),
           "masked_idx": np.stack([m[2] for m in views], 1),
           "patch_valid": np.ones((b, v, nl, n), bool),
           "lead_indices": np.tile(np.array([leads_lib.LEAD_INDEX[name]
                                             for name in config.data.leads], np.int32), (b, 1))}
    for key, (shape, dtype) in spec.items():
        if out[key].shape != tuple(shape) or out[key].dtype != dtype:
            raise ValueError(f"synthetic batch {key}: {out[key].shape} {out[key].dtype}, the "
                             f"batch contract says {shape} {np.dtype(dtype)}")
    return out


def host_peak(dtype: str) -> tuple[float, str]:
    """The chip's table peak (crema_jax.train.perf.PEAK_TFLOPS) for a torch device, or the
    host's measured float32 GEMM on CPU, the figure the JAX rows use."""
    import torch

    from crema_jax.train import perf as metrics_lib

    if torch.cuda.is_available():
        kind = torch.cuda.get_device_name(0)
        return metrics_lib.peak_tflops_per_device(
            dtype, types.SimpleNamespace(device_kind=kind, platform="gpu"))
    return metrics_lib.peak_tflops_per_device(
        dtype, types.SimpleNamespace(device_kind="cpu", platform="cpu"))


def jax_software() -> str:
    import flax
    import jax
    import jaxlib

    return f"jax {jax.__version__}, jaxlib {jaxlib.__version__}, flax {flax.__version__}"


def torch_software() -> str:
    import torch

    return f"torch {torch.__version__}" + (f" (CUDA {torch.version.cuda})"
                                           if torch.version.cuda else "")


def rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def jax_memory(compiled) -> tuple[int, str]:
    """Peak bytes the device allocator held (GPU/TPU), else XLA's plan for the program."""
    import jax

    from crema_jax.train import perf as metrics_lib

    stats = jax.local_devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"]), "device peak"
    return int(metrics_lib.memory_summary(compiled).get("total_bytes", 0)), "XLA plan"


def jax_train(args) -> dict:
    import jax

    from bench import train_step
    from crema_jax.train import perf as metrics_lib

    config = train_step.make_config(args.model, args.batch, "bfloat16", args.loss)
    device = jax.local_devices()[0]
    say(f"jax {jax.__version__} on {device.device_kind}: compiling the {args.model} train step")
    run = train_step.compiled_step_after_warmup(
        config, local=synthetic_batch(config, args.batch), devices=[device])
    say(f"compiled in {run['compile_seconds']:.1f} s; timing {args.steps} steps")
    times, metrics = train_step.time_steps(run, args.steps)
    if not np.isfinite(float(metrics["loss"])):
        raise FloatingPointError(f"loss {float(metrics['loss'])} after {args.steps} steps")
    peak, source = metrics_lib.peak_tflops_per_device("bfloat16", device)
    memory, memory_source = jax_memory(run["compiled"])
    return {"step_seconds": statistics.median(times), "batch": args.batch,
            "flops": metrics_lib.compiled_flops_per_device(
                run["compiled"], grad_accum_steps=int(config.optim.grad_accum_steps)),
            "peak_tflops": peak, "peak_source": source, "memory_bytes": memory,
            "memory_source": memory_source, "compile_seconds": run["compile_seconds"],
            "device": device.device_kind, "software": jax_software(),
            "loss": float(metrics["loss"])}


def torch_train(args) -> dict:
    import torch

    from bench import torch_train_step, train_step

    config = train_step.make_config(args.model, args.batch, "bfloat16", args.loss)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    say(f"torch {torch.__version__} on {name}: bf16 autocast + torch.compile "
        f"({args.torch_backend}), {args.model} step")
    result = torch_train_step.torch_step_seconds(
        config, args.steps, compile_mode=True, device=device, amp=True,
        local=synthetic_batch(config, args.batch), count_flops=True,
        backend=args.torch_backend)
    peak, source = host_peak("bfloat16")
    memory = result["peak_memory_bytes"]
    return {"step_seconds": result["step_seconds"], "batch": args.batch,
            "flops": result["flops"], "peak_tflops": peak, "peak_source": source,
            "memory_bytes": memory if memory is not None else rss_bytes(),
            "memory_source": "device peak" if memory is not None else "host RSS",
            "compile_seconds": result["compile_seconds"], "device": name,
            "software": torch_software()}


def net1d_config(args):
    from crema_jax.models.net1d import default_net1d_config

    cfg = default_net1d_config(12)
    if args.net1d == "tiny":
        cfg.update(NET1D_TINY)
    return cfg


def net1d_input(args) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((args.batch, 12, args.samples),
                                                    dtype=np.float32)


def timed(fn, steps: int) -> list:
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def jax_net1d(args) -> dict:
    import jax
    from flax import nnx

    from crema_jax.models import build_model
    from crema_jax.train import perf as metrics_lib

    device = jax.local_devices()[0]
    say(f"jax {jax.__version__} on {device.device_kind}: Net1D {args.batch} x 12 x {args.samples}")
    graphdef, state = nnx.split(build_model(net1d_config(args), rngs=nnx.Rngs(0)))
    state = jax.device_put(state, device)
    x = jax.device_put(net1d_input(args), device)
    t0 = time.perf_counter()
    compiled = jax.jit(lambda s, v: nnx.merge(graphdef, s)(v)).lower(state, x).compile()
    compile_s = time.perf_counter() - t0
    compiled(state, x).block_until_ready()  # warm-up
    times = timed(lambda: compiled(state, x).block_until_ready(), args.steps)
    peak, source = metrics_lib.peak_tflops_per_device("float32", device)
    memory, memory_source = jax_memory(compiled)
    return {"step_seconds": statistics.median(times), "batch": args.batch,
            "flops": metrics_lib.compiled_flops_per_device(compiled), "peak_tflops": peak,
            "peak_source": source, "memory_bytes": memory, "memory_source": memory_source,
            "compile_seconds": compile_s, "device": device.device_kind,
            "software": jax_software()}


def torch_net1d(args) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    sys.path.insert(0, str(REPO / "tests" / "references"))
    from ecgfounder_torch import Net1DRef  # the test suite's independent PyTorch Net1D

    cfg = net1d_config(args)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu"
    say(f"torch {torch.__version__} on {name}: torch.compile ({args.torch_backend}) Net1D "
        f"{args.batch} x 12 x {args.samples}")
    torch.manual_seed(0)
    model = Net1DRef(in_channels=12, filters=tuple(cfg.filters), blocks=tuple(cfg.blocks),
                     k=cfg.kernel, s=cfg.stride, group_width=cfg.group_width,
                     n_classes=cfg.num_classes).to(device).eval()
    x = torch.from_numpy(net1d_input(args)).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with torch.inference_mode():
        with FlopCounterMode(display=False) as counter:
            model(x)
        compiled = torch.compile(model, backend=args.torch_backend)
        t0 = time.perf_counter()
        for _ in range(2):  # compilation, then one warm run
            compiled(x)
            sync()
        compile_s = time.perf_counter() - t0
        times = timed(lambda: (compiled(x), sync()), args.steps)
    peak, source = host_peak("float32")
    on_gpu = device == "cuda"
    return {"step_seconds": statistics.median(times), "batch": args.batch,
            "flops": float(counter.get_total_flops()), "peak_tflops": peak,
            "peak_source": source,
            "memory_bytes": torch.cuda.max_memory_allocated() if on_gpu else rss_bytes(),
            "memory_source": "device peak" if on_gpu else "host RSS",
            "compile_seconds": compile_s, "device": name, "software": torch_software()}


ROWS = {"jax_train": jax_train, "torch_train": torch_train, "jax_net1d": jax_net1d,
        "torch_net1d": torch_net1d}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("row", choices=sorted(ROWS))
    p.add_argument("--model", default="small", help="tiny | small | base | large (train rows)")
    p.add_argument("--loss", default="crema", help="config.loss.name (crema: 2 views)")
    p.add_argument("--batch", type=int, default=256, help="ECGs per step / per forward")
    p.add_argument("--samples", type=int, default=5000, help="Net1D samples per lead")
    p.add_argument("--net1d", default="full", choices=("full", "tiny"))
    p.add_argument("--steps", type=int, default=20, help="timed calls after the warm-up")
    p.add_argument("--torch_backend", default="inductor",
                   help="torch.compile backend (aot_eager: trace only, for a quick CPU check)")
    args = p.parse_args(argv)
    result = ROWS[args.row](args)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
