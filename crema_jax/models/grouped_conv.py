"""Net1D's grouped 1-D convolution ("SAME" padding, channels-last): one op, two formulations.

    y = grouped_conv(x, kernel, bias, stride=s, groups=g)   # x (B, T, C), kernel (K, C // g, C)

the same sums as one `feature_group_count=g` convolution (group j's outputs read group j's
inputs; "SAME" pads p // 2 on the left, as PyTorch's padding='same' and ECGFounder's Net1D do).

- On CPU, for float32, 16 channels per group and stride 1 or 2 (every Net1D grouped
  convolution): a native kernel, grouped_conv.cc, compiled once per machine
  (runtime/native.py). XLA:CPU has no fast grouped convolution; this kernel runs Net1D's at
  ~120-170 GFLOP/s on two Zen 4 cores, against ~60-100 for the XLA formulation below, and
  took the batch-64 Net1D forward to ~900 ms, 1.6-1.8x torch.compile (docs/benchmarks.md).
- Elsewhere (GPU, TPU, other dtypes or widths), or where the kernel cannot be built: XLA's
  convolutions, one per group, unrolled (on XLA:CPU ~2x faster than one `feature_group_count`
  convolution).

The choice is made per platform inside the compiled program (`lax.platform_dependent`), so one
jitted function serves CPU and accelerators. Gradients are the XLA formulation's (a custom VJP:
the op is linear in x and in the kernel), so training on CPU runs the kernel forward and XLA's
convolutions backward.
"""
from __future__ import annotations

import functools
import pathlib
import threading

import jax
import jax.numpy as jnp
import numpy as np

from crema_jax.runtime import native

SOURCE = pathlib.Path(__file__).with_name("grouped_conv.cc")
TARGET = "crema_grouped_conv"
GROUP_WIDTH = 16   # what the kernel takes (Net1D's group_width)
STRIDES = (1, 2)

_registered: bool | None = None
_registering = threading.Lock()


def native_ready() -> bool:
    """Whether the CPU kernel is built, loaded and registered with XLA (once per process)."""
    global _registered
    with _registering:
        if _registered is None:
            library = native.load(str(SOURCE))
            if library is not None:
                jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(library.CremaGroupedConv),
                                            platform="cpu")
            _registered = library is not None
    return _registered


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


def _cpu_or_xla(x, kernel, bias, stride: int, groups: int):
    return jax.lax.platform_dependent(
        x, kernel, bias,
        cpu=lambda x, k, b: _native_call(x, k, b, stride),
        default=lambda x, k, b: xla_grouped_conv(x, k, b, stride, groups))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _with_xla_gradient(x, kernel, bias, stride, groups):
    return _cpu_or_xla(x, kernel, bias, stride, groups)


def _forward(x, kernel, bias, stride, groups):
    return _cpu_or_xla(x, kernel, bias, stride, groups), (x, kernel, bias)


def _backward(stride, groups, residuals, grad):
    x, kernel, bias = residuals
    _, vjp = jax.vjp(lambda x, k, b: xla_grouped_conv(x, k, b, stride, groups), x, kernel, bias)
    return vjp(grad)


_with_xla_gradient.defvjp(_forward, _backward)


def native_takes(x, kernel, bias, stride: int, groups: int) -> bool:
    """Whether the CPU kernel computes this call (the XLA formulation does otherwise)."""
    return (x.ndim == 3 and x.shape[-1] == groups * GROUP_WIDTH
            and kernel.shape == (kernel.shape[0], GROUP_WIDTH, x.shape[-1])
            and bias.shape == (x.shape[-1],) and stride in STRIDES
            and all(a.dtype == jnp.float32 for a in (x, kernel, bias)))


def grouped_conv(x, kernel, bias, *, stride: int, groups: int):
    """(B, T, C) -> (B, ceil(T / stride), C_out): the grouped convolution (module docstring)."""
    stride, groups = int(stride), int(groups)
    if native_takes(x, kernel, bias, stride, groups) and native_ready():
        return _with_xla_gradient(x, kernel, bias, stride, groups)
    return xla_grouped_conv(x, kernel, bias, stride, groups)
