"""Test-session setup that must happen before JAX or Grain start.

- 8 fake CPU devices, so sharding tests run on any laptop (single-device tests simply use
  device 0), compiled at XLA's backend optimisation level 0 (tests/xla_flags.py).
- absl flags parsed once, as Grain worker processes require.
- One persistent XLA compilation cache (and one native-kernel folder) for the whole run, shared
  by the xdist workers and the crema-jax processes the tests start (they inherit the
  environment): the tiny models' programs recur across tests, and compiling them again is most
  of the suite's time.
"""
import os
import shutil
import tempfile

from tests import xla_flags

os.environ.setdefault("XLA_FLAGS", xla_flags.cpu_devices(8))
# libtpu is installed for the ahead-of-time TPU compile tests; the tests themselves (and the
# processes they start) run on CPU devices only.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One directory per test run, named by the pytest process that leads it (xdist workers are its
# children) and removed when that process ends (pytest_unconfigure).
_LEAD_PID = os.getppid() if "PYTEST_XDIST_WORKER" in os.environ else os.getpid()
_RUN_CACHE = os.path.join(tempfile.gettempdir(), f"crema_jax_tests_xla_{_LEAD_PID}")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _RUN_CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
# Native CPU kernels (runtime/native.py) are built into the run's folder, not the user's ~/.cache.
os.environ.setdefault("CREMA_JAX_NATIVE_CACHE", os.path.join(_RUN_CACHE, "native"))

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

from absl import flags  # noqa: E402

if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_SAMPLE = REPO_ROOT.parent / "shared" / "data" / "cinc2021-sample"


@pytest.fixture(scope="session")
def cinc_sample_dir() -> pathlib.Path:
    """The 50 real CinC 2021 records that sit beside the checkout (../shared)."""
    if not SHARED_SAMPLE.is_dir():
        raise FileNotFoundError(
            f"expected the CinC 2021 sample at {SHARED_SAMPLE} (../shared beside the checkout)")
    return SHARED_SAMPLE


@pytest.fixture(scope="session")
def jax_cache_dir(tmp_path_factory):
    """A compilation cache shared by this session's subprocesses (same program: compile once)."""
    return tmp_path_factory.mktemp("jax_cache")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slow: an end-to-end drill (crema-jax processes, kill -9, several processes, "
        "sharded runs); `-m 'not slow'` runs the unit tests alone, CI runs both")
    if config.option.durations is None:  # the slowest tests, listed at the end of every run
        config.option.durations = 25


def pytest_unconfigure(config):
    if not hasattr(config, "workerinput"):  # the leading process, after its workers ended
        shutil.rmtree(_RUN_CACHE, ignore_errors=True)
