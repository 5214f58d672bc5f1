"""Per-step performance: the compiled step's FLOPs and memory, the devices' peak, step time,
ECGs/s, TFLOP/s and MFU.

Names follow MaxText (`perf/step_time_seconds`, `perf/per_device_tflops_per_sec`, ...) so the
numbers read the same as on any JAX LLM trainer.
"""
from __future__ import annotations

import math
import time

import jax
import jax.numpy as jnp

# Dense peak TFLOP/s per device (chip for TPUs, GPU for NVIDIA), keyed by a substring of
# jax.Device.device_kind (first match wins, so longer names come first).
# TPUs run float32 matmuls as bf16 passes at default precision, so one figure serves both;
# NVIDIA GPUs run float32 matmuls as TF32 at XLA's default precision, hence the TF32 figure.
PEAK_TFLOPS = {
    "TPU v6 lite": {"bfloat16": 918.0, "float32": 918.0},   # v6e (Trillium)
    "TPU v6e": {"bfloat16": 918.0, "float32": 918.0},
    "TPU v5 lite": {"bfloat16": 197.0, "float32": 197.0},   # v5e
    "TPU v5e": {"bfloat16": 197.0, "float32": 197.0},
    "TPU v5p": {"bfloat16": 459.0, "float32": 459.0},
    "TPU v5": {"bfloat16": 459.0, "float32": 459.0},        # v5p reports "TPU v5"
    "TPU v4": {"bfloat16": 275.0, "float32": 275.0},
    "H200": {"bfloat16": 989.0, "float32": 494.5},          # SXM; TF32 dense
    "H100": {"bfloat16": 989.0, "float32": 494.5},          # SXM; TF32 dense
    "A100": {"bfloat16": 312.0, "float32": 156.0},          # TF32 dense
}


def peak_tflops_per_device(dtype: str = "float32", device=None) -> tuple[float, str]:
    """(peak TFLOP/s of one device, where the figure came from).

    CPUs have no table entry: the peak is a timed float32 GEMM on this host, shared by the local
    devices (fake CPU devices split the same cores).
    """
    device = device or jax.local_devices()[0]
    kind = device.device_kind
    for key, peaks in PEAK_TFLOPS.items():
        if key.lower() in kind.lower():
            return peaks.get(dtype, peaks["bfloat16"]), f"table:{key}:{dtype}"
    if device.platform == "cpu":
        return measured_gemm_tflops() / jax.local_device_count(), "measured_cpu_gemm"
    return float("nan"), f"unknown device {kind!r}"


# x86 cores by (vendor, family, model range): their float32 FLOPs per cycle per core with AVX-512
# or AVX2 FMA. A CPU figure depends on it: Zen 4 runs AVX-512 on two 256-bit FMA pipes (32
# FLOP/cycle), Zen 5 server cores on two 512-bit ones (64): the same 2-core VM measures twice the
# GEMM rate on the second. AMD's families and models, from its processor programming references.
CPU_CORES = (
    ("AuthenticAMD", 0x19, range(0x00, 0x10), "Zen 3", 32),
    ("AuthenticAMD", 0x19, range(0x10, 0x20), "Zen 4", 32),
    ("AuthenticAMD", 0x19, range(0x20, 0x60), "Zen 3", 32),
    ("AuthenticAMD", 0x19, range(0x60, 0x80), "Zen 4", 32),
    ("AuthenticAMD", 0x19, range(0xA0, 0xB0), "Zen 4", 32),
    ("AuthenticAMD", 0x1A, range(0x00, 0x20), "Zen 5", 64),     # EPYC 9005 (Turin)
)


def host_cpu(cpuinfo: str | None = None) -> str:
    """This host's CPU in one line, for a benchmark's header: model name, x86 family/model, the
    core generation where CPU_CORES knows it (with its float32 FLOPs per cycle per core), AVX-512
    or not, and the logical CPUs. `cpuinfo`: the text of /proc/cpuinfo (read when None)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return "unknown CPU (no /proc/cpuinfo)"
    first, count = {}, 0
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip()
        if not sep:
            continue
        if key == "processor":
            count += 1
        first.setdefault(key, value.strip())
    text = first.get("model name", "unknown CPU")
    try:
        family, model = int(first["cpu family"]), int(first["model"])
    except (KeyError, ValueError):
        return f"{text}, {count} CPU{'' if count == 1 else 's'}"
    text += f", family {family:#x} model {model:#x}"
    for vendor, fam, models, name, flops in CPU_CORES:
        if first.get("vendor_id") == vendor and family == fam and model in models:
            text += f" ({name}: {flops} float32 FLOP/cycle/core)"
    flags = first.get("flags", "").split()
    text += ", AVX-512" if "avx512f" in flags else (", AVX2" if "avx2" in flags else "")
    return f"{text}, {count} CPU{'' if count == 1 else 's'}"


_GEMM_CACHE: dict = {}


def measured_gemm_tflops(n: int = 1024, repeats: int = 20, *, refresh: bool = False) -> float:
    """TFLOP/s of a float32 n x n GEMM on the first device (best of `repeats`, ~0.3 s on 2 cores:
    on a shared host a few repeats can all land in a slow phase and understate the peak).

    Measured once per process and cached; `refresh=True` measures again and keeps the faster of
    the two, so a peak taken in a slow phase of a shared host does not inflate an MFU."""
    if n in _GEMM_CACHE and not refresh:
        return _GEMM_CACHE[n]
    device = jax.local_devices()[0]
    a = jax.device_put(jnp.ones((n, n), jnp.float32), device)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    _GEMM_CACHE[n] = max(2.0 * n ** 3 / best / 1e12, _GEMM_CACHE.get(n, 0.0))
    return _GEMM_CACHE[n]


def compiled_flops_per_device(compiled, *, grad_accum_steps: int = 1) -> float:
    """FLOPs of one call of a compiled (SPMD-partitioned) function on ONE device, from XLA.

    XLA's cost analysis counts a loop body once, whatever its trip count, so a train step that
    scans over `grad_accum_steps` micro-batches reports ONE micro-batch's forward and backward:
    the count is scaled by `grad_accum_steps`. What lies outside the loop (the optimizer update
    and the norms, O(params) against the loop's O(params x tokens)) is then counted that many
    times too: SiT-small, batch 32, 4 micro-batches counts 718.7 GFLOP against 716.1 unlooped
    (+0.36%, ~0.12% per extra micro-batch).
    """
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # Older JAX returned one dict per computation.
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan"))) * int(grad_accum_steps)


def memory_summary(compiled) -> dict:
    """Bytes per device XLA plans for the compiled step (arguments, outputs, temporaries)."""
    stats = compiled.memory_analysis()
    if stats is None:
        return {}
    fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
              "temp_size_in_bytes", "generated_code_size_in_bytes")
    out = {f: int(getattr(stats, f, 0)) for f in fields}
    # Donated arguments alias outputs: count them once.
    out["total_bytes"] = (out["argument_size_in_bytes"] + out["output_size_in_bytes"]
                          - out["alias_size_in_bytes"] + out["temp_size_in_bytes"])
    return out


def perf_metrics(*, step_seconds: float, flops_per_device: float, peak_tflops: float,
                 global_batch: int, data_wait_seconds: float = 0.0) -> dict:
    """Per-step performance. step_seconds: between the completions of consecutive steps;
    data_wait_seconds: what the host spent waiting for this step's batch from the pipeline
    (close to 0 when the input pipeline keeps ahead of the devices)."""
    tflops = flops_per_device / step_seconds / 1e12
    return {
        "perf/step_time_seconds": step_seconds,
        "perf/data_wait_seconds": data_wait_seconds,
        "perf/ecgs_per_sec": global_batch / step_seconds,
        "perf/per_device_tflops_per_sec": tflops,
        "perf/mfu": tflops / peak_tflops if peak_tflops and peak_tflops > 0 else float("nan"),
    }
