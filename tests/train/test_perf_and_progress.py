"""FLOPs from XLA, the peak table, MFU arithmetic and the metric files."""
import json
import resource
import signal
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crema_jax.train import perf, progress


@pytest.mark.parametrize("kind,dtype,peak", [
    ("TPU v4", "bfloat16", 275.0), ("TPU v5 lite", "bfloat16", 197.0),
    ("TPU v5", "bfloat16", 459.0), ("TPU v6 lite", "bfloat16", 918.0),
    ("NVIDIA A100-SXM4-80GB", "bfloat16", 312.0), ("NVIDIA H100 80GB HBM3", "bfloat16", 989.0),
    ("NVIDIA H200", "bfloat16", 989.0), ("NVIDIA A100-SXM4-40GB", "float32", 156.0)])
def test_peak_table(kind, dtype, peak):
    device = types.SimpleNamespace(device_kind=kind, platform="tpu")
    assert perf.peak_tflops_per_device(dtype, device)[0] == peak


def test_compiled_flops_of_a_matmul():
    f = jax.jit(lambda a, b: a @ b).lower(jax.ShapeDtypeStruct((64, 32), jnp.float32),
                                          jax.ShapeDtypeStruct((32, 16), jnp.float32)).compile()
    assert perf.compiled_flops_per_device(f) == 2 * 64 * 32 * 16


def test_perf_metrics_arithmetic():
    m = perf.perf_metrics(step_seconds=0.5, flops_per_device=2e12, peak_tflops=8.0,
                             global_batch=64)
    assert m["perf/ecgs_per_sec"] == 128.0
    assert m["perf/per_device_tflops_per_sec"] == pytest.approx(4.0)
    assert m["perf/mfu"] == pytest.approx(0.5)


def test_metric_writer_jsonl_and_tensorboard(tmp_path):
    writer = progress.MetricWriter(tmp_path, enabled=True)
    writer.write(1, {"loss": np.float32(1.5), "learning/lr": 0.1})
    writer.write(2, {"loss": 1.25, "learning/lr": 0.2})
    writer.close()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"step": 1, "loss": 1.5, "learning/lr": 0.1},
                    {"step": 2, "loss": 1.25, "learning/lr": 0.2}]
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_a_resumed_writer_supersedes_the_rows_it_redoes(tmp_path):
    """A run killed after logging step 3 (its last line cut short) resumes from step 2: rows 3 and
    the torn line move to metrics.superseded.jsonl, row 3 is logged once more."""
    lines = ['{"step": 1, "loss": 1.0}', '{"step": 2, "loss": 0.5}', '{"step": 3, "loss": 0.25}',
             '{"step": 4, "lo']
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    writer = progress.MetricWriter(tmp_path, enabled=True, tensorboard=False, resume_step=2)
    writer.write(3, {"loss": 0.25})
    writer.close()
    assert (tmp_path / "metrics.jsonl").read_text().splitlines() == [
        lines[0], lines[1], '{"step": 3, "loss": 0.25}']
    assert (tmp_path / "metrics.superseded.jsonl").read_text().splitlines() == lines[2:]
    assert not list(tmp_path.glob(".*"))


def test_a_full_disk_under_the_metric_writer_names_the_file(tmp_path):
    """The full disk is RLIMIT_FSIZE with SIGXFSZ ignored: the kernel fails the write past 64
    bytes with EFBIG, as a full disk fails it with ENOSPC."""
    writer = progress.MetricWriter(tmp_path, enabled=True, tensorboard=False)
    previous_signal = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    previous_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64, previous_limit[1]))
    try:
        with pytest.raises(OSError) as err:
            writer.write(1, {"loss": 1.0, "learning/lr": 0.1, "perf/step_time_seconds": 0.5})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, previous_limit)
        signal.signal(signal.SIGXFSZ, previous_signal)
    assert str(err.value) == f"[Errno 27] cannot write {tmp_path / 'metrics.jsonl'}: File too large"
    writer.close()


def test_progress_line_has_loss_terms_and_eta():
    line = progress.progress_line(10, 100, {"loss": 0.5, "loss/mae": 0.4,
                                           "perf/step_time_seconds": 0.25}, eta_seconds=3725)
    assert line.startswith("step 10/100 loss=0.50000 mae=0.4000")
    assert "250ms/step" in line and "eta=1h02m05s" in line


def test_step_flops_count_every_micro_batch():
    """XLA counts a scan body once: a step over 4 micro-batches of 2 ECGs must still report the
    FLOPs of the same step over the 8 ECGs unlooped (XLA's own count, no loop to miscount)."""
    from crema_jax.train import trainer
    from tests.configs import tiny_config

    counts, raw = {}, {}
    for accum in (1, 4):
        config = tiny_config(**{"train.global_batch_size": 8, "optim.grad_accum_steps": accum,
                                "loss.name": "stmem", "data.num_views": 1})
        counts[accum] = trainer.dry_run(config, devices=jax.devices()[:1])["flops_per_step"]
        setup = trainer.build(config, devices=jax.devices()[:1])
        raw[accum] = perf.compiled_flops_per_device(
            trainer.compile_step(setup, config, trainer.abstract_state(setup)))
    assert counts[4] == pytest.approx(counts[1], rel=0.01)
    assert raw[4] == pytest.approx(counts[1] / 4, rel=0.02)   # what XLA alone reports


def test_a_refreshed_gemm_peak_keeps_the_faster_rate(monkeypatch):
    monkeypatch.setattr(perf, "_GEMM_CACHE", {64: 1e6})       # an impossibly fast earlier rate
    assert perf.measured_gemm_tflops(64, 2) == 1e6             # cached: not measured again
    assert perf.measured_gemm_tflops(64, 2, refresh=True) == 1e6   # measured, slower: kept
    monkeypatch.setattr(perf, "_GEMM_CACHE", {64: 0.0})
    assert 0.0 < perf.measured_gemm_tflops(64, 2, refresh=True) < 1e6


def _cpuinfo(vendor, family, model, flags, cpus=2, name="AMD EPYC"):
    block = (f"processor\t: {{}}\nvendor_id\t: {vendor}\ncpu family\t: {family}\n"
             f"model\t\t: {model}\nmodel name\t: {name}\nflags\t\t: fpu sse2 {flags}\n\n")
    return "".join(block.format(i) for i in range(cpus))


@pytest.mark.parametrize("vendor, family, model, flags, cpus, expected", [
    # Genoa (family 19h, model 11h): Zen 4, AVX-512 on 256-bit pipes.
    ("AuthenticAMD", 25, 17, "avx2 avx512f", 2,
     "AMD EPYC, family 0x19 model 0x11 (Zen 4: 32 float32 FLOP/cycle/core), AVX-512, 2 CPUs"),
    # Turin (family 1Ah, model 2h): Zen 5, full-width AVX-512.
    ("AuthenticAMD", 26, 2, "avx2 avx512f", 4,
     "AMD EPYC, family 0x1a model 0x2 (Zen 5: 64 float32 FLOP/cycle/core), AVX-512, 4 CPUs"),
    # Milan (family 19h, model 1h): Zen 3, AVX2 only.
    ("AuthenticAMD", 25, 1, "avx2", 2,
     "AMD EPYC, family 0x19 model 0x1 (Zen 3: 32 float32 FLOP/cycle/core), AVX2, 2 CPUs"),
    # A core the table does not know: no generation claimed.
    ("GenuineIntel", 6, 143, "avx2 avx512f", 8, "AMD EPYC, family 0x6 model 0x8f, AVX-512, 8 CPUs"),
])
def test_host_cpu_names_the_core_generation(vendor, family, model, flags, cpus, expected):
    assert perf.host_cpu(_cpuinfo(vendor, family, model, flags, cpus)) == expected


def test_host_cpu_without_family_fields():
    assert perf.host_cpu("processor\t: 0\nmodel name\t: Neoverse\n") == "Neoverse, 1 CPU"
