"""Native CPU kernels: C++ sources of XLA FFI handlers, compiled once per machine, then loaded.

A kernel's source ships inside the package (models/cpu_kernels.cc). The first process that needs
it compiles it with the host's C++ compiler (`$CXX`, else c++, g++ or clang++; -O3
-march=native, a few seconds) against the XLA FFI headers jaxlib ships, into this user's kernel
folder, and every later process loads that library. The library's name holds a digest of
everything that shapes it: the source, the compiler and its version, the flags, jaxlib's
version and the CPU's model and feature flags. A kernel folder that machines of different CPUs
share thus holds one library per CPU, and no library runs on a CPU it was not built for. The
compiler writes under a temporary name that is renamed into place when complete: an interrupted
or concurrent build never leaves a partial library under the final name.

Where there is no compiler or the build fails, `load` returns None and says why in one warning
line; the caller then runs its XLA formulation (same results, slower).

- CREMA_JAX_NATIVE=0: no native kernel (XLA's formulations everywhere), e.g. to compare the two.
- CREMA_JAX_NATIVE_CACHE: the kernel folder (default $XDG_CACHE_HOME/crema_jax/native, else
  ~/.cache/crema_jax/native). It must be a folder of this user's (made mode 0700): a library
  loaded from it runs as this user's code.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import platform
import shlex
import shutil
import subprocess
import tempfile

from absl import logging

from crema_jax.runtime import files

ENV_SWITCH = "CREMA_JAX_NATIVE"
ENV_CACHE = "CREMA_JAX_NATIVE_CACHE"
# -fno-predictive-commoning: GCC's -O3 otherwise carries the broadcast inputs of one tap over to
# the next in spilled registers, which halved the grouped convolution's rate.
FLAGS = ("-O3", "-fno-predictive-commoning", "-march=native", "-std=c++17", "-shared", "-fPIC",
         "-w")
COMPILERS = ("c++", "g++", "clang++")
BUILD_TIMEOUT_S = 300


class Unavailable(Exception):
    """Why a native kernel cannot be used here (one line)."""


def enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


def compiler() -> list[str]:
    """The C++ compiler's command: $CXX (a name or a path, with any wrapper or options before
    or after it, as in "ccache g++"; split as a shell would), else the first of COMPILERS found.
    Its first word is resolved on PATH."""
    chosen = os.environ.get("CXX", "").strip()
    try:
        words = shlex.split(chosen)
    except ValueError as err:
        raise Unavailable(f"CXX={chosen!r} does not parse as a command: {err}") from None
    for command in ([words] if words else [[name] for name in COMPILERS]):
        found = shutil.which(command[0])
        if found:
            return [found, *command[1:]]
    if not words:
        looked = f"none of {', '.join(COMPILERS)} is"
    else:
        looked = (f"CXX={chosen} is not" if len(words) == 1
                  else f"{words[0]} (from CXX={chosen}) is not")
    raise Unavailable(f"no C++ compiler: {looked} on PATH (set CXX)")


def cache_dir() -> pathlib.Path:
    chosen = os.environ.get(ENV_CACHE)
    if chosen:
        folder = pathlib.Path(chosen)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        folder = pathlib.Path(base) / "crema_jax" / "native"
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        files.own_folder(str(folder))
    except OSError as err:
        raise Unavailable(f"kernel folder {folder}: {err} (set {ENV_CACHE} to a folder of "
                          "yours)") from None
    return folder


def _cpu_identity() -> str:
    """The CPU's model name and feature flags (what -march=native compiles for)."""
    try:
        text = pathlib.Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.machine() + platform.processor()
    keep = [line for line in text.splitlines()
            if line.split(":")[0].strip() in ("model name", "flags", "Features", "CPU part")]
    return platform.machine() + "\n" + "\n".join(sorted(set(keep)))


def _version_of(cxx: list[str]) -> str:
    try:
        done = subprocess.run([*cxx, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise Unavailable(f"{shlex.join(cxx)} --version failed: {err}") from None
    return done.stdout


def library_path(source: pathlib.Path, cxx: list[str], include_dir: str) -> pathlib.Path:
    """Where `source`'s library for this compiler, jaxlib and CPU lives."""
    import jaxlib

    digest = hashlib.sha256()
    for part in (source.read_bytes(), shlex.join(cxx).encode(), _version_of(cxx).encode(),
                 " ".join(FLAGS).encode(), include_dir.encode(), jaxlib.__version__.encode(),
                 _cpu_identity().encode()):
        digest.update(hashlib.sha256(part).digest())
    return cache_dir() / f"{source.stem}-{digest.hexdigest()[:20]}.so"


def build(source: pathlib.Path, target: pathlib.Path, cxx: list[str], include_dir: str) -> None:
    """Compiles `source` to `target`, written under a temporary name and renamed when whole."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        cmd = [*cxx, *FLAGS, f"-I{include_dir}", str(source), "-o", tmp]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise Unavailable(f"{shlex.join(cxx)} took over {BUILD_TIMEOUT_S} s on "
                              f"{source.name}") from None
        if done.returncode:
            lines = done.stderr.strip().splitlines()
            first = next((line for line in lines if "error" in line), None)
            said = (first or (lines or ["(no message)"])[-1]).strip()
            raise Unavailable(f"{shlex.join(cxx)} failed on {source.name} (exit "
                              f"{done.returncode}): {said}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def load(source: str) -> ctypes.CDLL | None:
    """The library of the kernel source `source` (a path), built first if needed; None, with
    one warning line saying why, where native kernels are off or cannot be built here. Once
    per process and source."""
    name = pathlib.Path(source).name
    if not enabled():
        logging.info("native kernel %s: off (%s=0); using XLA's formulation", name, ENV_SWITCH)
        return None
    try:
        return _load(pathlib.Path(source))
    except Unavailable as why:
        logging.warning("native kernel %s unavailable, using XLA's formulation (slower): %s",
                        name, why)
        return None


def _load(source: pathlib.Path) -> ctypes.CDLL:
    import jax

    cxx = compiler()
    include_dir = jax.ffi.include_dir()
    target = library_path(source, cxx, include_dir)
    if target.is_file():
        try:
            return ctypes.CDLL(str(target))
        except OSError as err:  # damaged (not one this module wrote whole): built again below
            logging.warning("native kernel %s: %s does not load (%s); building it again",
                            source.name, target, err)
    build(source, target, cxx, include_dir)
    try:
        return ctypes.CDLL(str(target))
    except OSError as err:
        raise Unavailable(f"{target} does not load: {err}") from None
