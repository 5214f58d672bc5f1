"""bench/step_gemms.py reads every dot, and its FLOPs, out of XLA:CPU's optimised HLO."""
import re

import jax
import jax.numpy as jnp
import numpy as np

from bench.step_gemms import dots_in_hlo, ops_by_thunk, other_kind

# XLA:CPU's text format: a YNNPACK fusion around a dense layer, a bare batched dot (attention
# scores), and a loop fusion without a dot.
HLO = """\
HloModule jit_step

%fused_computation.7 (param_0.1: f32[384], param_1.2: f32[5760,75], param_2.3: f32[75,384]) -> f32[5760,384] {
  %param_1.2 = f32[5760,75]{1,0} parameter(1)
  %param_2.3 = f32[75,384]{1,0} parameter(2)
  %dot.9 = f32[5760,384]{1,0} dot(%param_1.2, %param_2.3), lhs_contracting_dims={1}, rhs_contracting_dims={0}, metadata={op_name="jit(step)/dot_general"}
  %param_0.1 = f32[384]{0} parameter(0)
  %broadcast.4 = f32[5760,384]{1,0} broadcast(%param_0.1), dimensions={1}
  ROOT %add.5 = f32[5760,384]{1,0} add(%dot.9, %broadcast.4)
}

%fused_computation.8 (param_0.4: f32[16,6,108,108]) -> f32[16,6,108,108] {
  %param_0.4 = f32[16,6,108,108]{3,2,1,0} parameter(0)
  ROOT %exponential.1 = f32[16,6,108,108]{3,2,1,0} exponential(%param_0.4)
}

ENTRY %main.20 (x: f32[5760,75], w: f32[75,384], b: f32[384], q: f32[16,6,108,64], k: bf16[16,6,64,108]) -> (f32[5760,384], f32[16,6,108,108]) {
  %x = f32[5760,75]{1,0} parameter(0)
  %w = f32[75,384]{1,0} parameter(1)
  %b = f32[384]{0} parameter(2)
  %q = f32[16,6,108,64]{3,2,1,0} parameter(3)
  %k = bf16[16,6,64,108]{3,2,1,0} parameter(4)
  %ynn_fusion.3 = f32[5760,384]{1,0} fusion(%b, %x, %w), kind=kCustom, calls=%fused_computation.7, backend_config={"fusion_config":{"kind":"__ynn_fusion"},"outer_dimension_partitions":[]}
  %dot.12 = f32[16,6,108,108]{3,2,1,0} dot(%q, %k), lhs_batch_dims={0,1}, lhs_contracting_dims={3}, rhs_batch_dims={0,1}, rhs_contracting_dims={2}
  %exp_fusion = f32[16,6,108,108]{3,2,1,0} fusion(%dot.12), kind=kLoop, calls=%fused_computation.8
  ROOT %tuple.1 = (f32[5760,384]{1,0}, f32[16,6,108,108]{3,2,1,0}) tuple(%ynn_fusion.3, %exp_fusion)
}
"""


def test_dots_and_their_flops_from_hand_written_hlo():
    dots = dots_in_hlo(HLO)
    assert "exp_fusion" not in dots
    (dense,) = dots["ynn_fusion.3"]
    assert dense["kind"] == "ynn_fusion"
    assert dense["lhs"] == (5760, 75) and dense["rhs"] == (75, 384)
    assert dense["dims"] == ((1,), (0,), (), ())
    assert dense["flops"] == 2 * 5760 * 75 * 384
    (scores,) = dots["dot.12"]
    assert scores["kind"] == "dot"
    assert scores["dtypes"] == ("f32", "bf16", "f32")
    assert scores["dims"] == ((3,), (2,), (0, 1), (0, 1))
    assert scores["flops"] == 2 * (16 * 6) * 108 * 108 * 64


def test_flops_of_a_compiled_program_match_a_hand_count():
    m, k, n, b, i, j, l = 96, 40, 72, 3, 24, 16, 20

    def f(a, w, x, y):
        return jnp.tanh(a @ w), jnp.einsum("bij,bjl->bil", x, y) * 2.0

    args = [np.ones(s, np.float32) for s in ((m, k), (k, n), (b, i, j), (b, j, l))]
    text = jax.jit(f).lower(*args).compile().as_text()
    entry = text[text.index("\nENTRY"):]
    names = set(re.findall(r"^\s*(?:ROOT )?%([\w.\-]+) = ", entry, re.M))
    dots = dots_in_hlo(text)
    total = sum(d["flops"] for name, ds in dots.items() if name in names for d in ds)
    assert total == 2 * m * k * n + 2 * b * i * j * l


def test_what_the_other_thunks_do_from_hand_written_hlo():
    ops = ops_by_thunk(HLO)
    assert ops["exp_fusion"] == ["parameter", "exponential"]      # the fused computation's ops
    assert ops["dot.12"] == ["dot"] and ops["q"] == ["parameter"]  # a bare instruction's own
    assert other_kind(ops["exp_fusion"]) == "exponentials (softmax, sigmoid)"
    assert other_kind(["parameter", "transpose", "add"]) == "transposing copies"
    assert other_kind(["parameter", "reduce", "exponential"]) == "reductions (norms, softmax, loss)"
    assert other_kind(["parameter", "multiply", "add", "select"]) == "other elementwise"
