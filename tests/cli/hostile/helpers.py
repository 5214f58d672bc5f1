"""What the hostile-input tests share (a helper module, not a test file): the paths they use, the
sha256 of a tree that shows a run changed nothing, two ways to run `crema-jax` in a child
process under bounds, sample records copied under a new name, and a disk that fills at one
output. The in-process refusal check, `_fails`, is tests/cli/conftest.py's."""
import errno
import os
import shutil
import subprocess
import sys
import tempfile

from crema_jax.data.index import dataset_index
from crema_jax.runtime import files
from tests.cli.conftest import assert_one_error_line
from tests.data.bounded import REPO, hashes, run_bounded
from tests.train.helpers import cli_env

_hashes = hashes   # sha256 of every file under the roots (links by target, special files by kind)

SAMPLE = dataset_index.sample_data_dir()
TINY = str(REPO / "configs" / "crema_tiny.py")
CLI = [os.path.join(os.path.dirname(sys.executable), "crema-jax")]   # the console script

TIMEOUT = 180
MEMORY = 8 << 30   # address space: JAX and a tiny model's embed fit in a fraction of it

# Sets the limits, then becomes `python -m crema_jax.main ARGS` (limits and an ignored signal
# survive exec); a preexec_fn would fork this multithreaded (JAX) test process.
_LIMITED = """
import os, resource, signal, sys
memory, file_size, *args = sys.argv[1:]
resource.setrlimit(resource.RLIMIT_AS, (int(memory), int(memory)))
if int(file_size) >= 0:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # EFBIG instead of a kill
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(file_size), int(file_size)))
os.execv(sys.executable, [sys.executable, "-m", "crema_jax.main", *args])
"""


def _env(file_size_limit) -> dict:
    """cli_env(1); under a file-size limit without the suite's shared XLA compilation cache, which
    the limit would also stop (JAX warns, on stderr, of each entry it cannot write)."""
    env = cli_env(1)
    if file_size_limit is not None:
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
    return env


def _cli(*args, file_size_limit=None) -> subprocess.CompletedProcess:
    """`crema-jax ARGS` in a fresh process with at most MEMORY bytes of address space, within
    TIMEOUT seconds; file_size_limit: RLIMIT_FSIZE in bytes, a full disk (with SIGXFSZ ignored
    the kernel fails every write past the limit with EFBIG, as a full disk fails it with ENOSPC;
    a tmpfs needs root)."""
    size = -1 if file_size_limit is None else int(file_size_limit)
    return subprocess.run([sys.executable, "-c", _LIMITED, str(MEMORY), str(size), *args],
                          env=_env(file_size_limit), cwd=str(REPO), capture_output=True, text=True,
                          timeout=TIMEOUT)


def _one_line(done, command, *fragments) -> str:
    """A `_cli` run that refused bad data: exit 1 and one stderr line holding every fragment."""
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    return assert_one_error_line(command, done.stdout, done.stderr, *fragments)


_BOUNDED_MAIN = "import sys\nfrom crema_jax.main import run\nrun(['crema-jax', *sys.argv[1:]])\n"


def _crema_jax(*argv, timeout_s: float = 300, memory_gib: float = 3.0):
    """`crema-jax ARGV` through tests/data/bounded.py's child process: a timeout and an
    address-space limit, the test process's devices."""
    return run_bounded(_BOUNDED_MAIN, argv=tuple(map(str, argv)), timeout_s=timeout_s,
                       memory_gib=memory_gib)


def _one_error_line(result, command: str, *fragments: str) -> str:
    """A `_crema_jax` run that refused: exit 1, no traceback, and among its stderr lines (a
    skip's warning may precede it) exactly one error line holding every fragment."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-3000:]
    errors = [line for line in lines if line.startswith(f"crema-jax {command}: error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def _copy_record(folder, name: str, source: str = "E07500") -> str:
    """The sample record `source` copied into `folder` as `name`; returns its header's text."""
    text = (SAMPLE / f"{source}.hea").read_text().replace(source, name)
    (folder / f"{name}.hea").write_text(text)
    shutil.copyfile(SAMPLE / f"{source}.mat", folder / f"{name}.mat")
    return text


def _full_disk_for(monkeypatch, name: str) -> None:
    """The disk is full when the temporary file of output `name` is created (the outputs before
    it in the same group already written to their temporaries)."""
    real = tempfile.mkstemp

    def mkstemp(*args, prefix="", **kwargs):
        if prefix == f".{name}.":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, prefix=prefix, **kwargs)
    monkeypatch.setattr(files.tempfile, "mkstemp", mkstemp)
