"""models/grouped_conv.py: the native CPU kernel and the XLA formulation against direct sums."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crema_jax.models import cpu_kernels
from crema_jax.models import grouped_conv as gc
from crema_jax.runtime import native
from tests.models.helpers import HAS_COMPILER


def direct_sum(x, kernel, bias, stride, groups):
    """float64 direct sum: PyTorch's 'same' padding (left p // 2), kernel (k, in // groups, out)."""
    b, t, c = x.shape
    k, in_w, out_c = kernel.shape
    out_w = out_c // groups
    out_t = -(-t // stride)
    pad = max(0, (out_t - 1) * stride + k - t)
    xp = np.pad(x, ((0, 0), (pad // 2, pad - pad // 2), (0, 0))).astype(np.float64)
    out = np.zeros((b, out_t, out_c))
    for g in range(groups):
        for tau in range(out_t):
            window = xp[:, tau * stride:tau * stride + k, g * in_w:(g + 1) * in_w]
            out[:, tau, g * out_w:(g + 1) * out_w] = np.einsum(
                "bki,kio->bo", window, kernel[:, :, g * out_w:(g + 1) * out_w])
    return out + bias


def _inputs(batch, length, groups, width, taps, seed=0):
    rng = np.random.default_rng(seed)
    c = groups * width
    return (rng.standard_normal((batch, length, c)).astype(np.float32),
            (rng.standard_normal((taps, width, c)) / np.sqrt(taps * width)).astype(np.float32),
            rng.standard_normal(c).astype(np.float32))


# (batch, length, groups, width, taps, stride): Net1D's widths and kernel (16, 16) at odd and even
# lengths, shorter than the kernel, one position, a register block's edges (12, 13, 60, 61 output
# positions), and widths the kernel does not take (4: the XLA formulation). The kernel splits
# few positions by groups and many (the last two native cases: 2,000 and 4,000 positions, more
# than 4 tiles per worker for up to 8 workers) by runs of positions.
CASES = [(2, 13, 3, 16, 16, 1), (2, 13, 3, 16, 16, 2), (1, 1, 1, 16, 16, 2), (3, 5, 2, 16, 16, 1),
         (2, 24, 1, 16, 5, 2), (2, 26, 1, 16, 16, 2), (1, 121, 4, 16, 16, 2), (1, 61, 2, 16, 1, 1),
         (5, 100, 64, 16, 16, 2), (4, 999, 3, 16, 16, 2), (8, 500, 2, 16, 16, 1),
         (2, 13, 3, 4, 5, 1), (2, 13, 40, 4, 5, 2)]


@pytest.mark.parametrize("batch,length,groups,width,taps,stride", CASES)
def test_matches_direct_sum(batch, length, groups, width, taps, stride):
    x, kernel, bias = _inputs(batch, length, groups, width, taps)
    assert gc.native_takes(x, kernel, bias, stride, groups) == (width == 16)
    got = jax.jit(lambda x, k, b: gc.grouped_conv(x, k, b, stride=stride, groups=groups))(
        x, kernel, bias)
    np.testing.assert_allclose(np.asarray(got), direct_sum(x, kernel, bias, stride, groups),
                               rtol=1e-5, atol=2e-5)


def _lowered(platform, groups=2, stride=2):
    x, kernel, bias = _inputs(2, 40, groups, 16, 16)
    fn = jax.jit(lambda x, k, b: gc.grouped_conv(x, k, b, stride=stride, groups=groups))
    allow = [jax.export.DisabledSafetyCheck.custom_call(gc.TARGET)]
    return jax.export.export(fn, platforms=[platform], disabled_checks=allow)(
        x, kernel, bias).mlir_module()


def test_native_kernel_is_built_and_runs_on_cpu_only():
    if not HAS_COMPILER:
        pytest.skip(f"no C++ compiler ({', '.join(native.COMPILERS)}): the XLA formulation "
                    "runs, tested above")
    assert cpu_kernels.ready(), "a C++ compiler is on PATH but the kernels did not build"
    assert gc.TARGET in _lowered("cpu")
    for platform in ("cuda", "tpu"):  # accelerators lower XLA's convolutions, never the call
        text = _lowered(platform)
        assert gc.TARGET not in text and "convolution" in text


def test_gradients_equal_xlas_grouped_convolution():
    """d/dx, d/dkernel, d/dbias of sum(y * cotangent), against the VJP of one
    feature_group_count convolution (XLA's own op, not this module's formulation)."""
    groups, stride = 3, 2
    x, kernel, bias = _inputs(2, 29, groups, 16, 16)
    cot = np.random.default_rng(5).standard_normal((2, 15, groups * 16)).astype(np.float32)

    def reference(x, k, b):
        return jax.lax.conv_general_dilated(
            x, k, (stride,), "SAME", dimension_numbers=("NWC", "WIO", "NWC"),
            feature_group_count=groups, precision=jax.lax.Precision.HIGHEST) + b

    def loss(fn):
        return jax.jit(jax.grad(lambda *a: jnp.sum(fn(*a) * cot), argnums=(0, 1, 2)))

    got = loss(lambda x, k, b: gc.grouped_conv(x, k, b, stride=stride, groups=groups))(
        x, kernel, bias)
    want = loss(reference)(x, kernel, bias)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-5)


def test_vmapped_calls_match_each_row():
    x, kernel, bias = _inputs(3, 20, 2, 16, 16)
    xs = np.stack([x, x[::-1] * 2.0])  # (2, 3, 20, 32)
    got = jax.vmap(lambda x: gc.grouped_conv(x, kernel, bias, stride=1, groups=2))(xs)
    for row, want_x in zip(np.asarray(got), xs):
        np.testing.assert_allclose(row, direct_sum(want_x, kernel, bias, 1, 2), rtol=1e-5,
                                   atol=2e-5)


def test_non_float32_inputs_take_xlas_formulation():
    x, kernel, bias = _inputs(1, 9, 1, 16, 16)
    x16 = jnp.asarray(x, jnp.bfloat16)
    assert not gc.native_takes(x16, kernel, bias, 1, 1)
    assert not gc.native_takes(x, kernel, bias, 3, 1)  # stride 3
    got = gc.grouped_conv(x16, jnp.asarray(kernel, jnp.bfloat16), jnp.asarray(bias, jnp.bfloat16),
                          stride=1, groups=1)
    want = direct_sum(np.asarray(x16, np.float32), kernel, bias, 1, 1)
    np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=0.05, atol=0.1)
