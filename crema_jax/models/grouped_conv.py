"""Net1D's grouped 1-D convolution ("SAME" padding, channels-last): one op, two formulations.

    y = grouped_conv(x, kernel, bias, stride=s, groups=g)   # x (B, T, C), kernel (K, C // g, C)

the same sums as one `feature_group_count=g` convolution (group j's outputs read group j's
inputs; "SAME" pads p // 2 on the left, as PyTorch's padding='same' and ECGFounder's Net1D do).

- On CPU, for float32, 16 channels per group and stride 1 or 2 (every Net1D grouped
  convolution): a native kernel (cpu_kernels.cc), compiled once per machine
  (runtime/native.py). XLA:CPU has no fast grouped convolution; this kernel runs Net1D's at
  ~120-170 GFLOP/s on two Zen 4 cores, against ~60-100 for the XLA formulation below, and
  took the batch-64 Net1D forward to ~900 ms, 1.6-1.8x torch.compile (docs/benchmarks.md).
- Elsewhere (GPU, TPU, other dtypes or widths), or where the kernel cannot be built: XLA's
  convolutions, one per group, unrolled (on XLA:CPU ~2x faster than one `feature_group_count`
  convolution).

The choice is made per platform inside the compiled program, and gradients are the XLA
formulation's (cpu_kernels.on_cpu): training on CPU runs the kernel forward and XLA's
convolutions backward.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from crema_jax.models import cpu_kernels

TARGET = cpu_kernels.GROUPED_CONV
GROUP_WIDTH = 16   # what the kernel takes (Net1D's group_width)
STRIDES = (1, 2)


def xla_grouped_conv(x, kernel, bias, stride: int, groups: int):
    """One plain convolution per group, unrolled (see the module docstring)."""
    in_w, out_w = x.shape[-1] // groups, kernel.shape[-1] // groups
    out = jnp.concatenate([
        jax.lax.conv_general_dilated(x[..., g * in_w:(g + 1) * in_w],
                                     kernel[..., g * out_w:(g + 1) * out_w], (stride,), "SAME",
                                     dimension_numbers=("NWC", "WIO", "NWC"))
        for g in range(groups)], axis=-1)
    return out + bias


def _native_call(x, kernel, bias, stride: int):
    b, t, c = x.shape
    out = jax.ShapeDtypeStruct((b, -(-t // stride), c), x.dtype)
    return jax.ffi.ffi_call(TARGET, out, vmap_method="sequential")(x, kernel, bias,
                                                                   stride=np.int64(stride))


def native_takes(x, kernel, bias, stride: int, groups: int) -> bool:
    """Whether the CPU kernel computes this call (the XLA formulation does otherwise)."""
    return (x.ndim == 3 and x.shape[-1] == groups * GROUP_WIDTH
            and kernel.shape == (kernel.shape[0], GROUP_WIDTH, x.shape[-1])
            and bias.shape == (x.shape[-1],) and stride in STRIDES
            and all(a.dtype == jnp.float32 for a in (x, kernel, bias)))


def grouped_conv(x, kernel, bias, *, stride: int, groups: int):
    """(B, T, C) -> (B, ceil(T / stride), C_out): the grouped convolution (module docstring)."""
    stride, groups = int(stride), int(groups)
    if native_takes(x, kernel, bias, stride, groups) and cpu_kernels.ready():
        return cpu_kernels.on_cpu(lambda x, k, b: _native_call(x, k, b, stride),
                                  lambda x, k, b: xla_grouped_conv(x, k, b, stride, groups),
                                  x, kernel, bias)
    return xla_grouped_conv(x, kernel, bias, stride, groups)
