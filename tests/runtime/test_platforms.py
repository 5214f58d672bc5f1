"""A TPU is used only when one is present: the JAX_PLATFORMS a command sets before JAX starts."""
import pytest

from crema_jax.runtime import platforms


@pytest.mark.parametrize("environ, tpu, libtpu, plugins, expected", [
    ({}, False, True, [], "cpu"),                             # libtpu, no TPU: TPU left out
    ({}, False, True, ["xla_cuda12"], "cuda,cpu"),            # a GPU plugin stays usable
    ({}, False, True, ["xla_cuda12", "xla_rocm7"], "cuda,rocm,cpu"),
    ({}, True, True, [], None),                               # a TPU: JAX's own choice
    ({}, False, False, [], None),                             # no libtpu: nothing to silence
    ({"JAX_PLATFORMS": ""}, False, True, [], None),           # the user's choice, even empty
    ({"JAX_PLATFORMS": "tpu"}, False, True, [], None),
    ({"JAX_PLATFORM_NAME": "cpu"}, False, True, [], None),
    ({}, False, True, ["some_other_accelerator"], None),      # an unknown plugin: untouched
])
def test_platforms_without_tpu(environ, tpu, libtpu, plugins, expected):
    assert platforms.platforms_without_tpu(environ, tpu=tpu, libtpu=libtpu,
                                           plugins=plugins) == expected


def test_a_users_jax_platforms_is_never_changed():
    environ = {"JAX_PLATFORMS": "tpu,cpu"}
    assert platforms.use_tpu_only_when_present(environ) is None
    assert environ == {"JAX_PLATFORMS": "tpu,cpu"}


def test_the_decision_is_set_in_the_environment(monkeypatch):
    monkeypatch.setattr(platforms, "tpu_present", lambda: False)
    monkeypatch.setattr(platforms, "libtpu_installed", lambda: True)
    monkeypatch.setattr(platforms, "jax_plugins", lambda: [])
    environ = {"HOME": "/x"}
    assert platforms.use_tpu_only_when_present(environ) == "cpu"
    assert environ == {"HOME": "/x", "JAX_PLATFORMS": "cpu"}


def test_a_command_leaves_tpu_out_before_jax_starts_when_none_is_attached():
    """`crema-jax embed --help` in a fresh process without JAX_PLATFORMS: the environment it
    ends with, against this machine's facts (libtpu installed or not, a TPU or not)."""
    import importlib.util
    import os
    import subprocess
    import sys

    script = ("import atexit, os, sys; atexit.register(lambda: print('JAX_PLATFORMS=' + "
              "os.environ.get('JAX_PLATFORMS', '<unset>'))); "
              "sys.argv = ['crema-jax', 'embed', '--help']; "
              "from crema_jax.main import run; run()")
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "JAX_PLATFORM_NAME")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    chosen = done.stdout.strip().splitlines()[-1]
    if importlib.util.find_spec("libtpu") is not None and not platforms.tpu_present():
        assert chosen.startswith("JAX_PLATFORMS=") and "tpu" not in chosen
        assert chosen.endswith("cpu")
    else:  # a TPU, or no libtpu: JAX's own choice
        assert chosen == "JAX_PLATFORMS=<unset>"
    user = subprocess.run([sys.executable, "-c", script], env={**env, "JAX_PLATFORMS": "cpu,tpu"},
                          capture_output=True, text=True, timeout=120)
    assert user.stdout.strip().splitlines()[-1] == "JAX_PLATFORMS=cpu,tpu"  # never changed
