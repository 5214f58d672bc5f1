"""Fixtures of the training tests."""
import pytest


@pytest.fixture(scope="session")
def jax_cache_dir(tmp_path_factory):
    """A compilation cache shared by this session's subprocesses (same program: compile once)."""
    return tmp_path_factory.mktemp("jax_cache")
