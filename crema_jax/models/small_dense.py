"""A dense layer on a few rows: x (M, K) @ kernel (K, N) + bias, as nnx.Linear computes.

    y = small_dense(x, kernel, bias)

At batch 1 much of Net1D's forward is small matrix products whose weights are read from memory
for few rows: the squeeze-excite layers and the head are matrix-vector products (36 MB of
weights per forward), and the middle stages' 1x1 convolutions run over 79-625 positions.
XLA:CPU's dot streams a matrix-vector product's weights on one thread and runs the middle
stages' shapes at ~115-150 GFLOP/s on two Zen 4 cores. The native kernel (cpu_kernels.cc):
- 1-4 rows: runs of the weights' rows streamed on every core (~16-23 GB/s against ~11);
- 5-1024 rows, weights of at most 1 MB (ROWS_MAX, WEIGHT_BYTES_MAX; N a multiple of 16):
  register blocks over 64-column blocks, 1.3-1.7x XLA's dot at those shapes. Larger weights
  (Net1D's 1024 x 1024 layers) ran slower than XLA's dot, and longer signals (stages 0-1,
  1250-2500 positions) made the forward slower, so those stay with XLA.
Together they took ~1.9 ms (8%) off the batch-1 forward (docs/benchmarks.md).

On CPU, float32, where native_takes: the kernel (cpu_kernels.on_cpu: XLA's dot on other
platforms inside the same compiled program, and XLA's gradients). Otherwise, or where the
kernel cannot be built: XLA's dot.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from crema_jax.models import cpu_kernels

TARGET = cpu_kernels.SMALL_DENSE
# The kernel's rows path takes up to this many rows (at 8 XLA's dot measured faster)...
ROWS_MAX = 4
# ...its columns path this many rows, with weights of at most WEIGHT_BYTES_MAX.
COLUMNS_ROWS_MAX = 1024
WEIGHT_BYTES_MAX = 1 << 20


def xla_small_dense(x, kernel, bias):
    return x @ kernel + bias


def _native_call(x, kernel, bias):
    out = jax.ShapeDtypeStruct((x.shape[0], kernel.shape[1]), x.dtype)
    return jax.ffi.ffi_call(TARGET, out, vmap_method="sequential")(x, kernel, bias)


def native_takes(x, kernel, bias) -> bool:
    """Whether the CPU kernel computes this call (XLA's dot does otherwise)."""
    if not (x.ndim == 2 and kernel.ndim == 2 and kernel.shape[0] == x.shape[1]
            and bias.shape == (kernel.shape[1],)
            and all(a.dtype == jnp.float32 for a in (x, kernel, bias))):
        return False
    rows, (k, n) = x.shape[0], kernel.shape
    return rows <= ROWS_MAX or (rows <= COLUMNS_ROWS_MAX and n % 16 == 0
                                and k * n * 4 <= WEIGHT_BYTES_MAX)


def small_dense(x, kernel, bias):
    """(M, K) -> (M, N): x @ kernel + bias (module docstring)."""
    if native_takes(x, kernel, bias) and cpu_kernels.ready():
        return cpu_kernels.on_cpu(_native_call, xla_small_dense, x, kernel, bias)
    return xla_small_dense(x, kernel, bias)
