"""models/matvec.py: the native few-row dense layer against float64 sums and XLA's gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crema_jax.models import cpu_kernels
from crema_jax.models import matvec as mv
from crema_jax.runtime import native
from tests.models.helpers import HAS_COMPILER


def _inputs(m, k, n, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((m, k)).astype(np.float32),
            (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32),
            rng.standard_normal(n).astype(np.float32))


def _float64(x, kernel, bias):
    return x.astype(np.float64) @ kernel.astype(np.float64) + bias


# (rows, K, N): Net1D's squeeze-excite and head shapes at batch 1 (1024 -> 512, 512 -> 1024,
# 400 -> 200, 1024 -> 150), 1-4 rows, widths that are no whole 16-lane vector (7, 33, 150),
# a single input (K = 1), fewer inputs than the kernel's runs of rows, and more rows than the
# kernel takes (5, 64: XLA's dot).
CASES = [(1, 1024, 512), (1, 512, 1024), (1, 400, 200), (1, 1024, 150), (2, 160, 80),
         (3, 37, 33), (4, 5, 7), (2, 1, 16), (4, 3, 48), (5, 64, 32), (64, 20, 16)]


@pytest.mark.parametrize("rows,k,n", CASES)
def test_matches_float64_sums(rows, k, n):
    x, kernel, bias = _inputs(rows, k, n)
    assert mv.native_takes(x, kernel, bias) == (rows <= mv.MAX_ROWS)
    got = jax.jit(mv.matvec)(x, kernel, bias)
    np.testing.assert_allclose(np.asarray(got), _float64(x, kernel, bias), rtol=1e-5, atol=1e-5)


def _lowered(platform):
    x, kernel, bias = _inputs(1, 64, 32)
    allow = [jax.export.DisabledSafetyCheck.custom_call(mv.TARGET)]
    return jax.export.export(jax.jit(mv.matvec), platforms=[platform], disabled_checks=allow)(
        x, kernel, bias).mlir_module()


def test_native_kernel_is_built_and_runs_on_cpu_only():
    if not HAS_COMPILER:
        pytest.skip(f"no C++ compiler ({', '.join(native.COMPILERS)}): XLA's dot runs, tested "
                    "above")
    assert cpu_kernels.ready(), "a C++ compiler is on PATH but the kernels did not build"
    assert mv.TARGET in _lowered("cpu")
    for platform in ("cuda", "tpu"):  # accelerators lower XLA's dot, never the call
        text = _lowered(platform)
        assert mv.TARGET not in text and "dot_general" in text


def test_gradients_equal_xlas_dot():
    x, kernel, bias = _inputs(3, 70, 40)
    cot = np.random.default_rng(5).standard_normal((3, 40)).astype(np.float32)

    def loss(fn):
        return jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a) * cot), argnums=(0, 1, 2)))

    got = loss(mv.matvec)(x, kernel, bias)
    want = loss(lambda x, k, b: jnp.dot(x, k, precision=jax.lax.Precision.HIGHEST) + b)(
        x, kernel, bias)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-5)


def test_vmapped_calls_match_each_row():
    x, kernel, bias = _inputs(2, 50, 24)
    xs = np.stack([x, -3.0 * x[::-1]])  # (2, 2, 50)
    got = jax.vmap(lambda x: mv.matvec(x, kernel, bias))(xs)
    for row, want_x in zip(np.asarray(got), xs):
        np.testing.assert_allclose(row, _float64(want_x, kernel, bias), rtol=1e-5, atol=1e-5)


def test_non_float32_inputs_take_xlas_dot():
    x, kernel, bias = _inputs(1, 32, 16)
    x16, k16, b16 = (jnp.asarray(a, jnp.bfloat16) for a in (x, kernel, bias))
    assert not mv.native_takes(x16, k16, b16)
    got = mv.matvec(x16, k16, b16)
    want = _float64(*(np.asarray(a, np.float32) for a in (x16, k16, b16)))
    np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=0.02, atol=0.05)
