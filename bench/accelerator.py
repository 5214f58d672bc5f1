"""The accelerator table: every row of bench/accelerator_rows.py in a process of its own, each
under its own time cap inside one overall budget, then one markdown table.

    python bench/accelerator.py [--out=PATH]        # GPU sizes, 8-minute budget
    python bench/accelerator.py --dry               # CPU, tiny sizes (a check of every step)

bench/accelerator.sh is the entry point (it makes sure the packages are there first). A row that
fails, or outlives its cap, is one line in the table ("failed: ..."); a row the budget no longer
reaches is "skipped: time budget"; the others still run. Every child's output goes to the log
(--log, default PATH.log beside --out); the progress lines ("accelerator: ...") and a failing
row's last lines also go to stdout.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time

HERE = pathlib.Path(__file__).resolve().parent
WORKER = HERE / "accelerator_rows.py"

# Row caps in seconds (GPU sizes): XLA compiles a training step in well under a minute on a
# 16-core host, torch.compile (inductor) takes one to two minutes for forward and backward.
CAPS = {"jax_train": 180, "torch_train": 240, "jax_net1d": 120, "torch_net1d": 180}
MIN_START_SECONDS = 20   # a row the budget leaves less than this is skipped, not started
TABLE_SECONDS = 5        # kept back from the budget for writing the table

# --tiny / --dry: sizes that compile in seconds on a 2-core CPU.
TINY = dict(models="tiny", batch=8, net1d_batch=4, samples=1000, net1d="tiny", steps=2)
FULL = dict(models="small,base", batch=256, net1d_batch=256, samples=5000, net1d="full",
            steps=20)


def plan(args) -> list[dict]:
    """The rows in the order they run (ours first: the figures the table exists for)."""
    models = [m for m in args.models.split(",") if m]
    train = ["--batch", str(args.batch), "--steps", str(args.steps), "--loss", args.loss]
    net1d = ["--batch", str(args.net1d_batch), "--samples", str(args.samples),
             "--net1d", args.net1d, "--steps", str(args.steps)]
    # --dry: inductor's C++ build of the training graph alone takes ~95 s on 2 cores (Net1D's
    # ~20 s); aot_eager traces forward and backward the same way and runs them eagerly. On a
    # GPU inductor generates Triton, not the C++ a CPU dry run would build.
    backend = "aot_eager" if args.dry else "inductor"
    suffix = "" if backend == "inductor" else f" ({backend})"
    rows = [dict(kind="jax_train", model=m, argv=["--model", m] + train,
                 label=f"crema_jax {m} train step, bf16") for m in models]
    rows.append(dict(kind="jax_net1d", model="net1d", argv=net1d,
                     label=f"crema_jax Net1D inference, f32 ({args.net1d_batch} x 12 x "
                           f"{args.samples})"))
    rows += [dict(kind="torch_train", model=m, argv=["--model", m, "--torch_backend", backend]
                  + train, label=f"PyTorch {m} train step, AMP bf16 + torch.compile{suffix}")
             for m in models]
    rows.append(dict(kind="torch_net1d", model="net1d",
                     argv=net1d + ["--torch_backend", backend],
                     label=f"PyTorch Net1D inference, f32, torch.compile{suffix}"))
    return rows


def table_order(rows: list[dict]) -> list[dict]:
    """Each PyTorch row under the crema_jax row it compares with."""
    key = {"jax_train": 0, "torch_train": 1, "jax_net1d": 0, "torch_net1d": 1}
    models = list(dict.fromkeys(r["model"] for r in rows))
    return sorted(rows, key=lambda r: (models.index(r["model"]), key[r["kind"]]))


def failure_line(lines: list[str], returncode) -> str:
    """The one line that says why a row failed: its exception, else its last line."""
    text = [ln.strip() for ln in lines if ln.strip()]
    for ln in reversed(text):
        if re.match(r"^[\w.]*(Error|Exception|Exit|Interrupt)\b", ln):
            return f"exit {returncode}: {ln}"
    return f"exit {returncode}: {text[-1] if text else 'no output'}"


def run_row(row: dict, cap: float, log, env: dict) -> dict:
    """Runs one row's process for at most `cap` seconds; fills row["result"] or row["failed"]."""
    cmd = [sys.executable, str(WORKER), row["kind"]] + row["argv"]
    log.write(f"\n===== {row['label']}: {' '.join(cmd)} (cap {cap:.0f} s)\n")
    log.flush()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True)  # its own group: killed whole
    lines: list[str] = []

    def read():
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            log.write(line)
            if line.startswith("accelerator:"):
                print("  " + line.rstrip(), flush=True)
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=cap)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    reader.join(timeout=10)
    row["wall"] = time.perf_counter() - t0
    log.flush()
    if row["wall"] >= cap and proc.returncode != 0:
        last = failure_line(lines, proc.returncode).split(": ", 1)[1]
        row["failed"] = f"failed: stopped at its {cap:.0f} s cap (last: {last})"
    elif proc.returncode != 0:
        row["failed"] = "failed: " + failure_line(lines, proc.returncode)
    else:
        try:
            row["result"] = json.loads(next(ln for ln in reversed(lines) if ln.startswith("{")))
        except (StopIteration, ValueError):
            row["failed"] = "failed: no result line; " + failure_line(lines, 0)
    if "failed" in row:
        print("\n".join("  | " + ln for ln in lines[-6:]), flush=True)
    return row


def fmt(value, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:{spec}}{suffix}"


def scaled(value: float, unit: str) -> str:
    """1.23 G<unit>, 4.56 T<unit>, ...: three significant digits whatever the size."""
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def cells(row: dict, flops: dict) -> list[str]:
    """The table cells of one row; flops[model] = (FLOPs per step, source) shared by the pair."""
    if "result" not in row:
        wall = fmt(row["wall"], ".0f") if "wall" in row else "-"
        return [row["label"]] + ["-"] * 7 + [wall, row.get("failed") or row.get("skipped", "")]
    r = row["result"]
    step = float(r["step_seconds"])
    count, source = flops.get(row["model"], (r.get("flops"), "own count"))
    tflops = count / step / 1e12 if count else None
    mfu = tflops / r["peak_tflops"] if tflops and r.get("peak_tflops") else None
    mem = r.get("memory_bytes")
    memory = "n/a" if not mem else (f"{mem / 2 ** 30:.2f} GiB" if mem >= 2 ** 30
                                    else f"{mem / 2 ** 20:.1f} MiB")
    if r.get("memory_source", "device peak") != "device peak":
        memory += f" ({r['memory_source']})"
    step_spec = ".1f" if step >= 1e-2 else ".2f"   # a few-ms step keeps three digits
    return [row["label"], str(r["batch"]), fmt(step * 1e3, step_spec),
            fmt(r["batch"] / step, ".0f"),
            fmt(tflops, ".1f" if tflops and tflops >= 1 else ".3f"), fmt(mfu * 100 if mfu else None,
                                                                         ".1f", "%"),
            memory, fmt(r.get("compile_seconds"), ".1f"), fmt(row["wall"], ".0f"), ""]


def shared_flops(rows: list[dict]) -> dict:
    """Per model, the FLOPs credited to both rows of a pair (the same work): PyTorch's
    flop_counter count when its row ran (every matrix product and convolution of the forward and
    backward, nothing else: the model FLOPs MFU is defined by), else XLA's cost analysis of
    crema_jax's program (which adds elementwise work, and on CPU undercounts grouped
    convolutions: 942 against 970 MFLOP for Net1D at 2 x 12 x 1000)."""
    out = {}
    for kind, source in (("jax", "XLA cost analysis"), ("torch", "torch.utils.flop_counter")):
        for row in rows:
            if row["kind"].startswith(kind) and row.get("result", {}).get("flops"):
                out[row["model"]] = (float(row["result"]["flops"]), source)
    return out


def render(rows: list[dict], args, total: float) -> str:
    done = [r["result"] for r in rows if "result" in r]
    devices = sorted({r["device"] for r in done})
    peaks = sorted({f"{r['peak_tflops']:.1f} TFLOP/s ({r['peak_source']})" for r in done})
    flops = shared_flops(rows)
    head = ["row", "ECGs", "step ms", "ECGs/s", "TFLOP/s", "MFU", "peak memory", "compile s",
            "row s", "note"]
    out = [f"# Accelerator table{' (dry run: CPU, tiny sizes)' if args.dry else ''}", "",
           f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; devices: "
           f"{', '.join(devices) or 'none answered'}; median of {args.steps} timed steps after "
           f"warm-up; loss {args.loss}; peaks: {'; '.join(peaks) or 'n/a'}.", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table_order(rows):
        out.append("| " + " | ".join(c.replace("|", "/") for c in cells(row, flops)) + " |")
    shared = [f"{m} {scaled(c, 'FLOP')} ({s})" for m, (c, s) in flops.items()]
    counts = [f"{r['model']} {r['kind'].split('_')[0]} {scaled(r['result']['flops'], 'FLOP')}"
              for r in rows if r.get("result", {}).get("flops")]
    software = sorted({r.get("software", "") for r in done} - {""})
    out += ["", f"FLOPs per step, credited to both rows of a pair: {'; '.join(shared) or 'none'}.",
            f"Each row's own count: {', '.join(counts) or 'none'}.",
            f"Software: {'; '.join(software) or 'no row answered'}.",
            f"Total wall {total:.0f} s of a {args.budget:.0f} s budget."]
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry", action="store_true", help="CPU only, tiny sizes")
    p.add_argument("--tiny", action="store_true", help="tiny sizes on whatever device there is")
    for key, value in FULL.items():
        p.add_argument(f"--{key}", type=type(value), default=None, help=f"(default {value})")
    p.add_argument("--loss", default="crema", help="config.loss.name of the train rows")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for the whole table, from --started (default 480; dry 240)")
    p.add_argument("--started", type=float, default=None, help="epoch seconds the clock starts")
    p.add_argument("--out", action="append", default=None,
                   help="where the table goes, as markdown (repeatable; default "
                        "$TMPDIR/accelerator.md)")
    p.add_argument("--log", default=None, help="every row's output (default: first OUT.log)")
    args = p.parse_args(argv)
    sizes = TINY if (args.dry or args.tiny) else FULL
    for key, value in sizes.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.budget = args.budget or (240.0 if args.dry else 480.0)
    started = args.started or time.time()
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2")
    if args.dry:  # CPU even where a GPU is visible
        env.update(JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")
    outs = [pathlib.Path(o) for o in args.out or
            [os.path.join(os.environ.get("TMPDIR", "/tmp"), "accelerator.md")]]
    for out in outs:
        out.parent.mkdir(parents=True, exist_ok=True)
    log_path = pathlib.Path(args.log or f"{outs[0]}.log")
    rows = plan(args)
    with open(log_path, "w", encoding="utf-8") as log:
        for i, row in enumerate(rows, 1):
            left = started + args.budget - TABLE_SECONDS - time.time()
            if left < (5 if args.dry else MIN_START_SECONDS):
                row["skipped"] = "skipped: time budget"
                print(f"accelerator: [{i}/{len(rows)}] {row['label']}: skipped (time budget)")
                continue
            cap = left if args.dry else min(CAPS[row["kind"]], left)
            print(f"accelerator: [{i}/{len(rows)}] {row['label']} (cap {cap:.0f} s)", flush=True)
            run_row(row, cap, log, env)
            state = "done" if "result" in row else row["failed"]
            print(f"accelerator: [{i}/{len(rows)}] {row['wall']:.1f} s: {state}", flush=True)
    text = render(rows, args, time.time() - started)
    for out in outs:
        out.write_text(text, encoding="utf-8")
    print("\n" + text, flush=True)
    print(f"accelerator: table in {', '.join(map(str, outs))}; every row's output in {log_path}")
    return 0 if all("result" in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
