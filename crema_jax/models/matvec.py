"""A dense layer applied to a few rows: x (M, K) @ kernel (K, N) + bias, as nnx.Linear computes.

    y = matvec(x, kernel, bias)

At batch 1 Net1D's squeeze-excite layers and head are matrix-vector products: memory-bound, the
weights (up to 2 MB a layer, 36 MB a forward) read once for one or a few rows. XLA:CPU's dot
reads them on one thread (~11 GB/s on two Zen 4 cores); the native kernel (cpu_kernels.cc)
streams runs of rows on every core (~16-23 GB/s), which took ~1 ms (4%) off the batch-1 forward.

- On CPU, float32, M <= MAX_ROWS rows: the native kernel (cpu_kernels.on_cpu: XLA's dot on
  other platforms inside the same compiled program, and XLA's gradients).
- Otherwise (more rows, where XLA's matrix products are faster, other dtypes), or where the
  kernel cannot be built: XLA's dot.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from crema_jax.models import cpu_kernels

TARGET = cpu_kernels.MATVEC
# The most rows the kernel takes: at 8 rows XLA's dot measured faster.
MAX_ROWS = 4


def xla_matvec(x, kernel, bias):
    return x @ kernel + bias


def _native_call(x, kernel, bias):
    out = jax.ShapeDtypeStruct((x.shape[0], kernel.shape[1]), x.dtype)
    return jax.ffi.ffi_call(TARGET, out, vmap_method="sequential")(x, kernel, bias)


def native_takes(x, kernel, bias) -> bool:
    """Whether the CPU kernel computes this call (XLA's dot does otherwise)."""
    return (x.ndim == 2 and x.shape[0] <= MAX_ROWS and kernel.ndim == 2
            and kernel.shape[0] == x.shape[1] and bias.shape == (kernel.shape[1],)
            and all(a.dtype == jnp.float32 for a in (x, kernel, bias)))


def matvec(x, kernel, bias):
    """(M, K) -> (M, N): x @ kernel + bias (module docstring)."""
    if native_takes(x, kernel, bias) and cpu_kernels.ready():
        return cpu_kernels.on_cpu(_native_call, xla_matvec, x, kernel, bias)
    return xla_matvec(x, kernel, bias)
