"""runtime/native.py: compile once per machine, load, and say why not in one line."""
import logging
import os
import shutil

import pytest

from crema_jax.runtime import native
from tests.models.helpers import HAS_COMPILER

pytestmark = pytest.mark.skipif(
    not HAS_COMPILER,
    reason="no C++ compiler on this machine (the callers' XLA fallback is tested without one)")

SOURCE = 'extern "C" int crema_answer() { return 6 * 7; }\n'


@pytest.fixture
def kernels(tmp_path, monkeypatch):
    """A fresh kernel folder, native kernels on, load's per-process memory cleared."""
    folder = tmp_path / "native"
    monkeypatch.setenv(native.ENV_CACHE, str(folder))
    monkeypatch.delenv(native.ENV_SWITCH, raising=False)
    native.load.cache_clear()
    yield folder
    native.load.cache_clear()


def _source(tmp_path, text=SOURCE, name="answer.cc"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_built_once_then_loaded_from_the_folder(kernels, tmp_path):
    source = _source(tmp_path)
    library = native.load(str(source))
    assert library.crema_answer() == 42
    built = os.listdir(kernels)
    assert len(built) == 1 and built[0].startswith("answer-") and built[0].endswith(".so")
    assert oct(os.stat(kernels).st_mode & 0o777) == "0o700"
    mtime = os.stat(kernels / built[0]).st_mtime_ns
    native.load.cache_clear()
    assert native.load(str(source)).crema_answer() == 42
    assert os.stat(kernels / built[0]).st_mtime_ns == mtime  # loaded, not built again


def test_the_library_name_follows_source_and_cpu(kernels, tmp_path, monkeypatch):
    cxx = native.compiler()
    one = native.library_path(_source(tmp_path), cxx, "/inc")
    other_source = native.library_path(_source(tmp_path, SOURCE + "// changed\n"), cxx, "/inc")
    monkeypatch.setattr(native, "_cpu_identity", lambda: "x86_64\nflags : sse2")
    other_cpu = native.library_path(_source(tmp_path), cxx, "/inc")
    assert len({one, other_source, other_cpu}) == 3


def test_a_damaged_library_is_built_again(kernels, tmp_path):
    source = _source(tmp_path)
    cxx = native.compiler()
    import jax
    target = native.library_path(source, cxx, jax.ffi.include_dir())
    target.write_bytes(b"not an ELF file")
    assert native.load(str(source)).crema_answer() == 42
    assert target.read_bytes()[:4] == b"\x7fELF"


def test_a_failed_build_says_why_in_one_line_and_leaves_nothing(kernels, tmp_path, caplog):
    source = _source(tmp_path, "int broken( {\n", name="broken.cc")
    with caplog.at_level(logging.WARNING):
        assert native.load(str(source)) is None
    [record] = [r for r in caplog.records if "broken.cc" in r.getMessage()]
    message = record.getMessage()
    assert "\n" not in message and "failed on broken.cc" in message and "error" in message
    assert os.listdir(kernels) == []  # no temporary or partial library left


def test_no_compiler_and_switched_off(kernels, tmp_path, monkeypatch, caplog):
    source = _source(tmp_path)
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    with caplog.at_level(logging.WARNING):
        assert native.load(str(source)) is None
    assert any("no C++ compiler: CXX=/nonexistent/c++ is not on PATH" in r.getMessage()
               for r in caplog.records)
    monkeypatch.delenv("CXX")
    monkeypatch.setenv(native.ENV_SWITCH, "0")
    native.load.cache_clear()
    assert native.load(str(source)) is None
    assert not kernels.exists()


def test_cxx_may_hold_a_wrapper_and_options(kernels, tmp_path, monkeypatch, caplog):
    """CXX="env VAR=1 c++" (a wrapper before the compiler, as "ccache g++") builds and loads;
    an unparsable CXX is one warning line naming it."""
    source = _source(tmp_path)
    cxx = native.compiler()[0]
    monkeypatch.setenv("CXX", f"env CREMA_TEST_WRAPPED=1 '{cxx}'")
    assert native.compiler() == [shutil.which("env"), "CREMA_TEST_WRAPPED=1", cxx]
    assert native.load(str(source)).crema_answer() == 42
    monkeypatch.setenv("CXX", "g++ 'unterminated")
    native.load.cache_clear()
    with caplog.at_level(logging.WARNING):
        assert native.load(str(source)) is None
    assert any("CXX=\"g++ 'unterminated\" does not parse as a command" in r.getMessage()
               for r in caplog.records)


def test_a_kernel_folder_that_is_a_link_is_refused(kernels, tmp_path, caplog):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, kernels)
    with caplog.at_level(logging.WARNING):
        assert native.load(str(_source(tmp_path))) is None
    assert any(f"kernel folder {kernels}" in r.getMessage() and native.ENV_CACHE in r.getMessage()
               for r in caplog.records)
    assert os.listdir(elsewhere) == []

