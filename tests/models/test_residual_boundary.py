"""layers.residual_boundary: an exact identity (value and gradient) that keeps XLA:CPU from fusing
the residual stream across blocks."""
import re

import jax
import pytest
import jax.numpy as jnp
import numpy as np
from flax import nnx

from crema_jax.models import layers


def test_value_and_gradient_are_exactly_the_identity():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5, 8)).astype(np.float32)
    w = rng.standard_normal((3, 5, 8)).astype(np.float32)
    out = jax.jit(layers.residual_boundary)(x)
    np.testing.assert_array_equal(np.asarray(out), x)
    grad = jax.jit(jax.grad(lambda v: jnp.sum(jnp.asarray(w) * layers.residual_boundary(v))))(x)
    np.testing.assert_array_equal(np.asarray(grad), w)   # d/dx sum(w * x) = w, bit for bit


def _max_fusion_parameters(depth, boundary=True):
    """Compile grad of a depth-`depth` block stack; return the largest parameter count of any
    fusion in the optimised HLO."""
    with nnx.use_eager_sharding(False):
        blocks = layers.make_blocks(depth, False, rngs=nnx.Rngs(0), width=16, num_heads=2,
                                    head_dim=8, mlp_hidden=32, eps=1e-5, dtype=jnp.float32,
                                    boundary=boundary)
    graphdef, params = nnx.split(blocks)
    x = jnp.ones((2, 6, 16), jnp.float32)

    def loss(params, x):
        return jnp.sum(layers.run_blocks(nnx.merge(graphdef, params), x, (0.0,) * depth, None,
                                         False) ** 2)

    text = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x).compile().as_text()
    counts = [len(re.findall(r"parameter\(\d+\)", body))
              for body in re.findall(r"fused_computation[^\n]*\{\n(.*?)\n\}", text, re.S)]
    return max(counts), text


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU fusion property")
def test_cpu_fusions_stay_bounded_in_depth():
    """Without the boundary, XLA:CPU fuses the residual cotangent's accumulation over all later
    blocks into each weight-gradient transpose, so the biggest fusion grows with depth; with it,
    the biggest fusion is the same at depth 4 and 12."""
    shallow, _ = _max_fusion_parameters(4)
    deep, text = _max_fusion_parameters(12)
    assert " conditional(" in text      # the boundary survives XLA's simplifier
    assert deep <= shallow + 2, (shallow, deep)
    unbounded_deep, plain = _max_fusion_parameters(12, boundary=False)
    assert " conditional(" not in plain
    assert unbounded_deep > deep + 10, (deep, unbounded_deep)   # the pathology it prevents
