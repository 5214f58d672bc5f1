"""Running hostile reads in a child process with a wall-clock bound and an address-space limit
(a helper module, not a test file): a read that blocks fails the test by its timeout, one that
allocates without bound by its MemoryError.

    result = run_bounded("from crema_jax.data.reading import read; ...", memory_gib=2)
    assert result.returncode == 0, result.stderr

`hashes(*roots)` is the sha256 of every file below the roots (links by their target, special
files by their kind, never opened), to show a run changed nothing.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import stat
import subprocess
import sys
import textwrap

REPO = pathlib.Path(__file__).resolve().parents[2]
_PREAMBLE = """\
import resource
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
"""


def run_bounded(code: str, *, timeout_s: float = 120.0, memory_gib: float = 2.0,
                argv: tuple = ()) -> subprocess.CompletedProcess:
    """`code` run by a fresh Python in the repository root, under RLIMIT_AS = memory_gib; a
    run longer than timeout_s raises subprocess.TimeoutExpired (the child is killed)."""
    limit = int(memory_gib * (1 << 30))
    program = _PREAMBLE.format(limit=limit) + textwrap.dedent(code)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", program, *argv], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout_s, check=False)


def hashes(*roots) -> dict:
    out = {}
    for root in roots:
        root = pathlib.Path(root)
        paths = [root] if not root.is_dir() or root.is_symlink() else [root, *sorted(
            _walk(root))]
        for p in paths:
            mode = os.lstat(p).st_mode
            if stat.S_ISLNK(mode):
                out[str(p)] = "link:" + os.readlink(p)
            elif stat.S_ISREG(mode):
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[str(p)] = f"mode:{stat.S_IFMT(mode):o}"
    return out


def _walk(root: pathlib.Path):
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            yield pathlib.Path(folder) / name
