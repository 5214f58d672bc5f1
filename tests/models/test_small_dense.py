"""models/small_dense.py: the native dense kernel against float64 sums and XLA's gradients."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crema_jax.models import cpu_kernels
from crema_jax.models import small_dense as sd
from crema_jax.runtime import native
from tests.models.helpers import HAS_COMPILER


def _inputs(m, k, n, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((m, k)).astype(np.float32),
            (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32),
            rng.standard_normal(n).astype(np.float32))


def _float64(x, kernel, bias):
    return x.astype(np.float64) @ kernel.astype(np.float64) + bias


# (rows, K, N, taken by the kernel).
# Rows path (1-4 rows): Net1D's squeeze-excite and head shapes at batch 1 (1024 -> 512,
# 512 -> 1024, 400 -> 200, 1024 -> 150), widths that are no whole 16-lane vector (7, 33, 150),
# one input (K = 1), fewer inputs than the kernel's runs of rows.
# Columns path (5-1024 rows, N a multiple of 16, weights <= 1 MB): Net1D's middle-stage 1x1
# convolutions at batch 1 (79 and 157 x 400 -> 400, 313 x 160 -> 400), one register block of
# rows and one row more (6, 7: the packed copy's first use), every tail of rows after whole
# blocks of 6 (1-5: 7, 8, 9, 10, 11 rows), column tails (80 and 48 columns: 1-3 vectors of 16
# after whole blocks of 64: 80, 96, 48), K = 1. Empty inputs: no rows, K = 0 (the bias).
# XLA's dot: 5 rows with N not a multiple of 16, more than 1024 rows, weights over 1 MB.
CASES = [(1, 1024, 512, True), (1, 512, 1024, True), (1, 400, 200, True), (1, 1024, 150, True),
         (2, 160, 80, True), (3, 37, 33, True), (4, 5, 7, True), (2, 1, 16, True),
         (4, 3, 48, True),
         (79, 400, 400, True), (157, 400, 400, True), (313, 160, 400, True), (6, 64, 64, True),
         (7, 64, 64, True), (8, 30, 80, True), (9, 20, 48, True), (10, 16, 112, True),
         (11, 30, 64, True), (7, 20, 96, True), (1024, 1, 16, True), (0, 8, 16, True),
         (3, 0, 16, True), (9, 0, 32, True),
         (5, 64, 40, False), (1025, 8, 16, False), (8, 513, 512, False)]


@pytest.mark.parametrize("rows,k,n,taken", CASES)
def test_matches_float64_sums(rows, k, n, taken):
    x, kernel, bias = _inputs(rows, k, n)
    assert sd.native_takes(x, kernel, bias) == taken
    got = jax.jit(sd.small_dense)(x, kernel, bias)
    np.testing.assert_allclose(np.asarray(got), _float64(x, kernel, bias), rtol=1e-5, atol=1e-5)


def _lowered(platform, rows):
    x, kernel, bias = _inputs(rows, 64, 32)
    allow = [jax.export.DisabledSafetyCheck.custom_call(sd.TARGET)]
    return jax.export.export(jax.jit(sd.small_dense), platforms=[platform],
                             disabled_checks=allow)(x, kernel, bias).mlir_module()


@pytest.mark.parametrize("rows", [1, 40])
def test_native_kernel_is_built_and_runs_on_cpu_only(rows):
    if not HAS_COMPILER:
        pytest.skip(f"no C++ compiler ({', '.join(native.COMPILERS)}): XLA's dot runs, tested "
                    "above")
    assert cpu_kernels.ready(), "a C++ compiler is on PATH but the kernels did not build"
    assert sd.TARGET in _lowered("cpu", rows)
    for platform in ("cuda", "tpu"):  # accelerators lower XLA's dot, never the call
        text = _lowered(platform, rows)
        assert sd.TARGET not in text and "dot_general" in text


@pytest.mark.parametrize("rows", [3, 20])
def test_gradients_equal_xlas_dot(rows):
    x, kernel, bias = _inputs(rows, 70, 48)
    cot = np.random.default_rng(5).standard_normal((rows, 48)).astype(np.float32)

    def loss(fn):
        return jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a) * cot), argnums=(0, 1, 2)))

    got = loss(sd.small_dense)(x, kernel, bias)
    want = loss(lambda x, k, b: jnp.dot(x, k, precision=jax.lax.Precision.HIGHEST) + b)(
        x, kernel, bias)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-5)


def test_vmapped_calls_match_each_row():
    for rows in (2, 11):
        x, kernel, bias = _inputs(rows, 50, 32)
        xs = np.stack([x, -3.0 * x[::-1]])  # (2, rows, 50)
        got = jax.vmap(lambda x: sd.small_dense(x, kernel, bias))(xs)
        for row, want_x in zip(np.asarray(got), xs):
            np.testing.assert_allclose(row, _float64(want_x, kernel, bias), rtol=1e-5,
                                       atol=1e-5)


def test_non_float32_inputs_take_xlas_dot():
    x, kernel, bias = _inputs(1, 32, 16)
    x16, k16, b16 = (jnp.asarray(a, jnp.bfloat16) for a in (x, kernel, bias))
    assert not sd.native_takes(x16, k16, b16)
    got = sd.small_dense(x16, k16, b16)
    want = _float64(*(np.asarray(a, np.float32) for a in (x16, k16, b16)))
    np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=0.02, atol=0.05)
