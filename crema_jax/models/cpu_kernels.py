"""Net1D's native CPU kernels (cpu_kernels.cc): built and registered with XLA once per process.

    if cpu_kernels.ready():
        y = cpu_kernels.on_cpu(lambda *a: ffi_call(...)(*a), xla_formulation, *arrays)

`ready()` compiles the source once per machine (runtime/native.py) and registers its FFI
handlers for the CPU platform; False where native kernels are off or cannot be built (one
warning line says why), and the callers run their XLA formulations. `on_cpu` runs the kernel
call on CPU and the XLA formulation on every other platform, chosen inside the compiled program
(`lax.platform_dependent`: one jitted function serves CPU and accelerators), with the XLA
formulation's gradients (a custom VJP: CPU training runs the kernel forward, XLA backward).
The ops: grouped_conv.py and small_dense.py.
"""
from __future__ import annotations

import pathlib
import threading

import jax

from crema_jax.runtime import native

SOURCE = pathlib.Path(__file__).with_name("cpu_kernels.cc")
GROUPED_CONV, SMALL_DENSE = "crema_grouped_conv", "crema_small_dense"   # XLA FFI targets
HANDLERS = {GROUPED_CONV: "CremaGroupedConv", SMALL_DENSE: "CremaSmallDense"}   # -> symbols

_registered: bool | None = None
_registering = threading.Lock()


def ready() -> bool:
    """Whether the kernels are built, loaded and registered with XLA (once per process)."""
    global _registered
    with _registering:
        if _registered is None:
            library = native.load(str(SOURCE))
            if library is not None:
                for target, symbol in HANDLERS.items():
                    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)),
                                                platform="cpu")
            _registered = library is not None
    return _registered


def on_cpu(kernel_fn, xla_fn, *args):
    """kernel_fn(*args) on CPU, xla_fn(*args) elsewhere; gradients xla_fn's (module docstring)."""

    @jax.custom_vjp
    def op(*args):
        return jax.lax.platform_dependent(*args, cpu=kernel_fn, default=xla_fn)

    def forward(*args):
        return op(*args), args

    def backward(args, grad):
        return jax.vjp(xla_fn, *args)[1](grad)

    op.defvjp(forward, backward)
    return op(*args)
