"""bench/accelerator.sh --dry: every row of the accelerator table runs on CPU at tiny size and
reports numbers, and the numbers agree with what they are made of."""
import os
import pathlib
import re
import subprocess
import sys

from tests import xla_flags

REPO = pathlib.Path(__file__).resolve().parents[2]
NET1D_BATCH, NET1D_SAMPLES = 4, 1000
ROWS = ("crema_jax tiny train step, bf16",
        "PyTorch tiny train step, AMP bf16 + torch.compile (aot_eager)",
        f"crema_jax Net1D inference, f32 ({NET1D_BATCH} x 12 x {NET1D_SAMPLES})",
        "PyTorch Net1D inference, f32, torch.compile (aot_eager)")
UNITS = {"k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


def net1d_tiny_flops(batch: int, samples: int) -> int:
    """Multiply-adds x 2 of every convolution and linear layer of the dry run's Net1D (ECGFounder's
    block: 1x1 conv, grouped k-conv with the stage's stride, 1x1 conv, squeeze-excitation
    C -> C/2 -> C; stem conv k 16 stride 2; 2 stages of 1 block, widths 16 and 32, 16 channels
    per group; 150 classes), "same" padding: T_out = ceil(T / stride)."""
    k, stride, group_width, classes = 16, 2, 16, 150
    t = -(-samples // stride)
    flops = 2 * batch * t * 16 * 12 * k                            # stem 12 -> 16
    c_in = 16
    for c_out in (16, 32):
        flops += 2 * batch * t * c_in * c_out                      # conv1 1x1
        t = -(-t // stride)
        flops += 2 * batch * t * c_out * group_width * k           # grouped conv2
        flops += 2 * batch * t * c_out * c_out                     # conv3 1x1
        flops += 2 * 2 * batch * c_out * (c_out // 2)              # squeeze-excitation
        c_in = c_out
    return flops + 2 * batch * c_in * classes                      # dense head


def parse_count(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+) ([kMGT]?)FLOP", text).groups()
    return float(number) * UNITS.get(unit, 1.0)


def test_dry_run_reports_every_row(tmp_path):
    # One CPU device (not the suite's 8 fake ones), and no $OUT: the table goes to tmp_path.
    # The JAX rows compile at XLA's backend optimisation level 0, as every process the suite
    # starts does (tests/xla_flags.py: the code generation only, not what is computed; the tiny
    # train step compiles in about half the time).
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "OUT")}
    env["XLA_FLAGS"] = xla_flags.FAST_COMPILE
    env["PYTHON"] = sys.executable
    out = tmp_path / "table.md"
    proc = subprocess.run(
        ["bash", str(REPO / "bench" / "accelerator.sh"), "--dry", f"--out={out}",
         f"--net1d_batch={NET1D_BATCH}", f"--samples={NET1D_SAMPLES}"],
        env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    text = out.read_text()
    assert text in proc.stdout  # the same table on stdout and in the file
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and cells[0] != "row":
            rows[cells[0]] = cells
    assert sorted(rows) == sorted(ROWS), text
    counts = dict(re.findall(r"(\w+) ([\d.]+ [kMGT]?FLOP) \(", text))  # shared FLOPs per pair
    for label, (_, batch, step_ms, ecgs, tflops, mfu, memory, compile_s, wall, note) in (
            rows.items()):
        assert note == "", f"{label}: {note}"
        half_ms = 10.0 ** -len(step_ms.split(".")[1]) / 2   # the printed step time's rounding
        batch, step_ms = int(batch), float(step_ms)
        assert step_ms > 2 * half_ms and float(compile_s) > 0 and float(wall) > 0, label
        # The step time behind the printed one lies within its rounding: [fast, slow] seconds.
        fast, slow = (step_ms - half_ms) / 1e3, (step_ms + half_ms) / 1e3
        # ECGs/s = batch / step time, rounded to a whole ECG.
        assert batch / slow - 0.5 <= float(ecgs) <= batch / fast + 0.5, (label, ecgs, step_ms)
        # TFLOP/s = the pair's FLOPs per step / step time, within the rounding of the step time,
        # the FLOP count (3 significant digits: 0.5%) and the printed TFLOP/s.
        flops = parse_count(counts["net1d" if "Net1D" in label else "tiny"])
        half_rate = 10.0 ** -len(tflops.split(".")[1]) / 2
        low = flops * 0.995 / slow / 1e12 - half_rate
        high = flops * 1.005 / fast / 1e12 + half_rate
        assert low <= float(tflops) <= high, (label, tflops, low, high)
        # (On a CPU the peak is a GEMM timed in each row's process, as noisy as the host, and a
        # loaded host rounds a slow row's MFU to 0.0%.)
        assert 0 <= float(mfu.rstrip("%")) <= 100, (label, mfu)
        assert re.fullmatch(r"[\d.]+ (MiB|GiB) \((XLA plan|host RSS)\)", memory), memory
    # The Net1D pair is credited with PyTorch's flop_counter count: exactly the convolutions and
    # linear layers, i.e. the hand count.
    expected = net1d_tiny_flops(NET1D_BATCH, NET1D_SAMPLES)
    assert counts["net1d"] == f"{expected / 1e6:.3g} MFLOP", (expected, counts)
    assert f"net1d {counts['net1d']} (torch.utils.flop_counter)" in text
