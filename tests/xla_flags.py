"""XLA_FLAGS for the test process and the crema-jax processes the tests start.

The tests' programs are tiny and most are compiled once: LLVM's optimisation of the generated
code costs more than it saves (tests/models and tests/losses: 80 s -> 59 s on 2 cores). Level 0
changes the code generation only, not what is computed (no fast math at either level); the
benchmarks and every user run compile at XLA's default level.
"""
FAST_COMPILE = "--xla_backend_optimization_level=0"


def cpu_devices(count: int) -> str:
    """XLA_FLAGS for `count` CPU devices, compiled fast."""
    return f"--xla_force_host_platform_device_count={count} {FAST_COMPILE}"
