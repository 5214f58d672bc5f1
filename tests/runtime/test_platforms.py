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
