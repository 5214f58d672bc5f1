"""Each GEMM inside the compiled train step: its rate in the step vs the same GEMM run alone.

    python bench/step_gemms.py --model=small --batch=8
    python bench/step_gemms.py --model=base --batch=8 --top=30

bench/gemm.py shows that XLA's GEMMs, timed alone, run as fast as PyTorch's on this CPU; yet the
JAX step is slower than PyTorch's. This bench finds out where: it profiles one step of the
trainer's compiled step (jax.profiler), reads every dot out of the optimised HLO (inside fusions
such as XLA:CPU's `ynn_fusion`, or bare), and times each distinct dot again on its own with
`lax.dot_general` on the same shapes and dimension numbers. It prints a table, then LAST one JSON
line with the step time (unprofiled, and first-to-last thunk event when profiled), the time in
dot thunks and in everything else (split by what those thunks do: transposing copies,
reductions, exponentials, other elementwise), and the profiled step time the GEMMs would give at
their stand-alone rates.

A thunk's time is its event's wall duration in the profile: a dot that runs while another thunk
holds the second core shows up slower, which is the point of the comparison. A bare `dot` (kind
"dot") runs on Eigen's asynchronous contraction, whose event can end before its work does, so its
in-step rate is an upper bound; the would-be step time below counts each GEMM at the faster of
its two rates, so it is a lower bound.
"""
from __future__ import annotations

import argparse
import collections
import json
import math
import pathlib
import re
import statistics
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

if __name__ == "__main__":  # Same process set-up as bench/train_step.py and `crema-jax`.
    from crema_jax.runtime import host_malloc  # noqa: E402

    host_malloc.reexec_with_hugetlb()

# `  %name = f32[16,108]{1,0} op(operands), attributes`: name, dtype, dims, layout, op, the rest.
_INSTR = re.compile(
    r"^\s*(?:ROOT )?%([\w.\-]+) = (\w+)\[([\d,]*)\](\{[\d,]*\})?\S* (\w[\w\-]*)\((.*)$")
_COMP = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")


_DTYPES = {"f32": "float32", "bf16": "bfloat16", "f16": "float16", "f64": "float64"}


def _dims(text):
    return tuple(int(x) for x in text.split(",") if x)


def _attr(rest, name):
    m = re.search(name + r"=\{([\d,]*)\}", rest)
    return _dims(m.group(1)) if m else ()


def hlo_computations(hlo_text: str) -> dict:
    """{computation name: [(name, dtype, dims, layout, op, rest), ...]}: every instruction of the
    optimised HLO text, by the computation it is in (_INSTR's groups)."""
    computations, current = {}, None
    for line in hlo_text.splitlines():
        if not line.startswith(" "):
            m = _COMP.match(line)
            current = m.group(1) if m else None
            if current:
                computations[current] = []
            continue
        m = _INSTR.match(line) if current is not None else None
        if m:
            computations[current].append(m.groups())
    return computations


def dots_in_hlo(hlo_text: str) -> dict:
    """{thunk name: [dot, ...]} for every instruction of the optimised HLO that is, or calls, a dot.

    A dot is a dict: lhs/rhs shapes, their layouts, (lhs, rhs, output) HLO dtypes, the four
    dimension-number tuples, `flops` (2 x output elements x contracted elements) and `kind`: "dot"
    for a bare dot, else the fusion's kind (XLA:CPU's "ynn_fusion", or kLoop/kOutput/...). Bare
    dots map to themselves; fusions map to the dots of the computation they call.
    """
    computations = hlo_computations(hlo_text)

    def dots_of(instrs):
        shapes = {name: (_dims(dims), layout, dtype) for name, dtype, dims, layout, _, _ in instrs}
        found = {}
        for name, dtype, dims, _, op, rest in instrs:
            if op != "dot":
                continue
            lhs_name, rhs_name = re.findall(r"%([\w.\-]+)", rest)[:2]
            (lhs, lhs_layout, lhs_dtype), (rhs, rhs_layout, rhs_dtype) = (shapes[lhs_name],
                                                                          shapes[rhs_name])
            lc, rc = _attr(rest, "lhs_contracting_dims"), _attr(rest, "rhs_contracting_dims")
            lb, rb = _attr(rest, "lhs_batch_dims"), _attr(rest, "rhs_batch_dims")
            found[name] = {"dtypes": (lhs_dtype, rhs_dtype, dtype), "lhs": lhs, "rhs": rhs,
                           "lhs_layout": lhs_layout, "rhs_layout": rhs_layout,
                           "dims": (lc, rc, lb, rb),
                           "flops": 2 * math.prod(_dims(dims)) * math.prod(lhs[i] for i in lc)}
        return found

    by_thunk = {}
    for instrs in computations.values():
        for name, dot in dots_of(instrs).items():
            by_thunk[name] = [dict(dot, kind="dot")]
        for name, _, _, _, op, rest in instrs:
            called = re.search(r"calls=%([\w.\-]+)", rest) if op == "fusion" else None
            inner = dots_of(computations.get(called.group(1), [])) if called else {}
            if inner:
                kind = re.search(r'"kind":"_*(\w+)"', rest) or re.search(r"kind=(\w+)", rest)
                by_thunk[name] = [dict(d, kind=kind.group(1) if kind else "fusion")
                                  for d in inner.values()]
    return by_thunk


# What a thunk that is not a dot does, from the ops of the computation it runs (first match).
OTHER_KINDS = (("transposing copies", {"transpose", "copy"}),
               ("reductions (norms, softmax, loss)", {"reduce", "reduce-window"}),
               ("exponentials (softmax, sigmoid)", {"exponential", "log", "tanh"}),
               ("conditionals, loops", {"conditional", "while", "call"}))


def other_kind(ops) -> str:
    """The OTHER_KINDS name of a thunk from its ops, else "other elementwise" (adds, multiplies,
    selects: biases, residuals, AdamW, the exact GELU's erf polynomial)."""
    ops = set(ops)
    for name, members in OTHER_KINDS:
        if ops & members:
            return name
    return "other elementwise"


def ops_by_thunk(hlo_text: str) -> dict:
    """{instruction name: [op, ...]} for every top-level instruction of the optimised HLO: a
    fusion's are the ops of the computation it calls, any other instruction's its own op."""
    computations, calls = hlo_computations(hlo_text), {}
    for instrs in computations.values():
        for name, _, _, _, op, rest in instrs:
            called = re.search(r"calls=%([\w.\-]+)", rest) if op == "fusion" else None
            calls[name] = called.group(1) if called else [op]
    return {name: [i[4] for i in computations.get(c, [])] if isinstance(c, str) else c
            for name, c in calls.items()}


def thunk_seconds(trace_dir: str, names) -> tuple[dict, float]:
    """({thunk name: summed event seconds}, wall span of all those events) from a jax.profiler
    trace, counting only events named after an instruction of the compiled step."""
    import glob

    from jax.profiler import ProfileData

    files = glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)
    if not files:
        raise SystemExit(f"no *.xplane.pb under {trace_dir}: the profiler wrote no trace")
    seconds, first, last = collections.defaultdict(float), math.inf, -math.inf
    for plane in ProfileData.from_file(files[0]).planes:
        for line in plane.lines:
            for event in line.events:
                if event.name in names:
                    seconds[event.name] += event.duration_ns / 1e9
                    first = min(first, event.start_ns)
                    last = max(last, event.start_ns + event.duration_ns)
    if not seconds:
        raise SystemExit("the trace has no event named after an HLO instruction of the step; "
                         "this jaxlib's CPU runtime does not name its thunks after instructions")
    return dict(seconds), (last - first) / 1e9


def alone_seconds(dot: dict, repeats: int) -> float:
    """Median seconds of the same dot_general, alone, on random inputs (default layouts)."""
    import jax
    import numpy as np

    from bench.gemm import _median_seconds

    rng = np.random.default_rng(0)
    lhs_dtype, rhs_dtype, out_dtype = (_DTYPES[d] for d in dot["dtypes"])
    lhs = jax.numpy.asarray(rng.standard_normal(dot["lhs"]), dtype=lhs_dtype)
    rhs = jax.numpy.asarray(rng.standard_normal(dot["rhs"]), dtype=rhs_dtype)
    lc, rc, lb, rb = dot["dims"]
    fn = jax.jit(lambda a, b: jax.lax.dot_general(a, b, ((lc, rc), (lb, rb)),
                                                  preferred_element_type=out_dtype))
    return _median_seconds(lambda: fn(lhs, rhs).block_until_ready(), repeats)


def signature(dot: dict) -> str:
    lc, rc, lb, rb = dot["dims"]
    batch = f" batch{list(lb)}x{list(rb)}" if lb else ""
    return (f"{dot['kind']:<10} {list(dot['lhs'])}c{list(lc)} . {list(dot['rhs'])}c{list(rc)}"
            f"{batch}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="small", help="tiny | small | base | large")
    p.add_argument("--batch", type=int, default=8, help="global batch (ECGs per step)")
    p.add_argument("--dtype", default="float32", help="float32 | bfloat16")
    p.add_argument("--loss", default="crema")
    p.add_argument("--top", type=int, default=20, help="rows of the table (by time in the step)")
    p.add_argument("--repeats", type=int, default=10, help="timings per stand-alone GEMM")
    p.add_argument("--steps", type=int, default=2, help="unprofiled steps timed before the "
                   "profiled one (the profiler's own cost shows as their difference)")
    args = p.parse_args(argv)

    import jax

    from bench.train_step import compiled_step_after_warmup, make_config, time_steps
    from crema_jax.train import perf

    config = make_config(args.model, args.batch, args.dtype, args.loss)
    run = compiled_step_after_warmup(config)
    text = run["compiled"].as_text()
    dots = dots_in_hlo(text)
    names = set(re.findall(r"^\s*(?:ROOT )?%([\w.\-]+) = ", text, re.M))
    plain, _ = time_steps(run, args.steps)
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            time_steps(run, 1)
        seconds, span_s = thunk_seconds(trace_dir, names)

    groups = collections.defaultdict(lambda: {"seconds": 0.0, "flops": 0, "count": 0})
    for name, s in seconds.items():
        for dot in dots.get(name, []):
            # A fusion with several dots: split its time by FLOPs.
            share = dot["flops"] / sum(d["flops"] for d in dots[name])
            g = groups[signature(dot)]
            g["seconds"] += s * share
            g["flops"] += dot["flops"]
            g["count"] += 1
            g["dot"] = dot
    dot_s = sum(g["seconds"] for g in groups.values())
    other_s = sum(s for n, s in seconds.items() if n not in dots)
    if not groups:
        raise SystemExit("no dot thunk found in the profile")

    print(f"host: {perf.host_cpu()}")
    print(f"{args.model}, batch {args.batch}, {args.dtype}; {jax.devices()[0].device_kind}; "
          f"step {statistics.median(plain):.3f} s unprofiled (median of {args.steps}), "
          f"{span_s:.3f} s profiled (first to last thunk event)")
    print(f"{'in step':>9} {'GFLOP':>7} {'GF/s step':>9} {'GF/s alone':>10} {'n':>4}  dot")
    ideal_s = 0.0
    for i, (sig, g) in enumerate(sorted(groups.items(), key=lambda kv: -kv[1]["seconds"])):
        alone = alone_seconds(g["dot"], args.repeats) * g["count"]
        g["alone_seconds"] = alone
        ideal_s += min(alone, g["seconds"])
        if i < args.top:
            print(f"{g['seconds'] * 1e3:7.1f}ms {g['flops'] / 1e9:7.1f} "
                  f"{g['flops'] / g['seconds'] / 1e9:9.0f} {g['flops'] / alone / 1e9:10.0f} "
                  f"{g['count']:4d}  {sig}")
    flops = sum(g["flops"] for g in groups.values())
    print(f"dots: {dot_s:.3f} s at {flops / dot_s / 1e9:.0f} GFLOP/s in the step; alone they take "
          f"{ideal_s:.3f} s ({flops / ideal_s / 1e9:.0f} GFLOP/s). Other thunks: {other_s:.3f} s.")
    others, ops = collections.defaultdict(float), ops_by_thunk(text)
    for name, s in seconds.items():
        if name not in dots:
            others[other_kind(ops.get(name, ()))] += s
    print("other thunks: " + "; ".join(f"{kind} {s * 1e3:.0f} ms" for kind, s in
                                       sorted(others.items(), key=lambda kv: -kv[1])))
    print(json.dumps({"model": args.model, "batch": args.batch, "dtype": args.dtype,
                      "step_seconds": statistics.median(plain),
                      "profiled_step_seconds": span_s,
                      "dot_seconds": dot_s, "dot_flops": flops, "other_thunk_seconds": other_s,
                      "dot_seconds_alone": ideal_s, "other_thunk_seconds_by_kind": others,
                      "profiled_step_seconds_if_dots_ran_alone": span_s - dot_s + ideal_s}))


if __name__ == "__main__":
    main()
