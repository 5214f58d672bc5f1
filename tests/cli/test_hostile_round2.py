"""Careless and hostile use, second round: config files that give no config, numbers outside
their field's domain, special files and a full disk as outputs, conflicting flags, two `prepare`
runs on one --out, and the warning an `embed` from a training checkpoint used to print. Each case
runs the real command in a subprocess under a time limit and ends in one line on stderr naming
the file, field or flag (exit 1), no traceback, and every input and pre-existing file unchanged.

The full disk is RLIMIT_FSIZE set on the subprocess with SIGXFSZ ignored: the kernel fails
every write past the limit with EFBIG, as a full disk fails it with ENOSPC (a tmpfs needs root).
A failed checkpoint save has its own drill: tests/train/test_save_failure.py.
"""
import hashlib
import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from crema_jax import config as config_lib
from crema_jax import config_checks
from crema_jax.data.cache import prepare as prepare_lib
from crema_jax.models import params as params_lib
from crema_jax.runtime import checkpoint, files
from tests.cli.conftest import assert_one_error_line
from tests.train.helpers import cli_env

REPO = pathlib.Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "crema_tiny.py")
TIMEOUT = 180
MEMORY = 8 << 30   # address space: JAX and a tiny model's embed fit in a fraction of it


def _hashes(*roots) -> dict:
    """sha256 of every file under the roots (special files and links by kind)."""
    out = {}
    for root in roots:
        root = pathlib.Path(root)
        for p in [root] if not root.is_dir() or root.is_symlink() else sorted(root.rglob("*")):
            if p.is_symlink():
                out[str(p)] = "link:" + os.readlink(p)
            elif p.is_fifo() or p.is_char_device():
                out[str(p)] = "special"
            elif p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
            elif p.is_dir():
                out[str(p)] = "dir"
    return out


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
    TIMEOUT seconds; file_size_limit: RLIMIT_FSIZE in bytes (the full disk)."""
    size = -1 if file_size_limit is None else int(file_size_limit)
    return subprocess.run([sys.executable, "-c", _LIMITED, str(MEMORY), str(size), *args],
                          env=_env(file_size_limit), cwd=str(REPO), capture_output=True, text=True,
                          timeout=TIMEOUT)


def _one_line(done, command, *fragments) -> str:
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    return assert_one_error_line(command, done.stdout, done.stderr, *fragments)


# ----------------------------------------------------------------------------- config files
@pytest.mark.parametrize("text,message", [
    ("", "defines no get_config()"),
    ("def get_config():\n    raise RuntimeError('no data here')\n",
     "RuntimeError: no data here"),
    ("def get_config(:\n    pass\n", "SyntaxError: invalid syntax (line 1)"),
    ("def get_config():\n    return None\n", "get_config() returned NoneType; expected an "
     "ml_collections.ConfigDict"),
    (None, "no such file"),
])
def test_a_config_file_that_gives_no_config_is_one_line_naming_it(tmp_path, text, message):
    path = tmp_path / "my_config.py"
    if text is not None:
        path.write_text(text)
    before = _hashes(tmp_path)
    done = _cli("pretrain", f"--config={path}", f"--workdir={tmp_path / 'run'}")
    _one_line(done, "pretrain", f"--config: config file {path}: {message}")
    assert _hashes(tmp_path) == before                      # no workdir made, file unchanged


# ----------------------------------------------------------------------------- numeric fields
@pytest.mark.parametrize("override,expected", [
    ("optim.weight_decay=nan", "flag --config.optim.weight_decay=nan: expected a finite number"),
    ("optim.grad_clip_norm=nan",
     "flag --config.optim.grad_clip_norm=nan: expected a finite number"),
    ("data.seed=-1", "flag --config.data.seed=-1: expected an integer >= 0"),
])
def test_a_number_outside_its_domain_is_refused_before_any_work(tmp_path, override, expected):
    """A value set by an override is a usage error (exit 2) naming the flag."""
    done = _cli("pretrain", f"--config={TINY}", f"--workdir={tmp_path / 'run'}",
                f"--config.{override}")
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert (assert_one_error_line("pretrain", done.stdout, done.stderr)
            == f"crema-jax pretrain: error: {expected}")
    assert not (tmp_path / "run").exists()


def test_a_config_file_value_outside_its_domain_is_an_input_error(tmp_path):
    """The same value set in the config file: exit 1, the field named, no flag."""
    path = tmp_path / "bad.py"
    path.write_text(f"import importlib.util\nspec = importlib.util.spec_from_file_location("
                    f"'tiny', {TINY!r})\nbase = importlib.util.module_from_spec(spec)\n"
                    "spec.loader.exec_module(base)\n\n\ndef get_config():\n"
                    "    c = base.get_config()\n    c.data.seed = -1\n    return c\n")
    done = _cli("pretrain", f"--config={path}", f"--workdir={tmp_path / 'run'}")
    assert (_one_line(done, "pretrain")
            == "crema-jax pretrain: error: config.data.seed=-1: expected an integer >= 0")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("field,value,expected", [
    ("optim.weight_decay", float("inf"), "a finite number"),
    ("optim.grad_clip_norm", -1.0, ">= 0 (0 = no clipping)"),
    ("optim.eps", 0.0, "> 0"),
    ("optim.betas", (0.9, 1.0), "two decay rates in [0, 1)"),
    ("optim.betas", (float("nan"), 0.95), "a finite number"),
    ("optim.min_lr", -1e-6, ">= 0"),
    ("loss.temperature", 0.0, "> 0"),
    ("loss.contrastive_weight", -0.1, ">= 0"),
    ("train.seed", -3, "an integer >= 0"),
    ("train.stop_after_steps", -1, "an integer >= 0"),
    ("data.num_workers", -2, "an integer >= 0"),
    ("data.prefetch_buffer_size", 0, "an integer >= 1"),
    ("checkpoint.lock_stale_seconds", 0.0, "> 0"),
    ("mesh.fsdp", 0, "-1 (every device the other axes leave) or an integer >= 1"),
    ("model.drop_path", 1.0, "a rate in [0, 1)"),
    ("evals.fewshot_probe.label_fraction", 0.0, "a fraction in (0, 1]"),
    ("evals.fewshot_probe.l2_grid", (1.0, -1.0), "one or more penalties > 0"),
    ("data.augment.gaussian_noise.prob", 1.5, "a probability in [0, 1]"),
    ("data.augment.gaussian_noise.std", -0.05, ">= 0"),
    # Each below had passed: 1 Hz put every record past its filters' Nyquist limit (an endless
    # loop of skips), 1e9 Hz asked for 449 GiB a record, num_epochs=1 ended in a StopIteration
    # traceback, the augmentations failed after the compile naming no field.
    ("data.target_fs", 1.0, "a rate in Hz in [50, 10000]"),
    ("data.target_fs", 1e9, "a rate in Hz in [50, 10000]"),
    ("data.num_epochs", 1, "None for pretraining (an endless stream; train.num_steps ends the "
                           "run)"),
    ("data.augment.amplitude_scale.low", 3.0, "<= data.augment.amplitude_scale.high=1.2"),
    ("data.augment.baseline_wander.max_freq_hz", 0.01, ">= 0.05 Hz"),
    ("data.augment.baseline_wander.num_components", 100_000, "<= 64"),
    ("data.augment.time_shift.max_shift_s", 1e30, "<= 60.0"),
])
def test_every_numeric_field_names_itself_when_out_of_domain(field, value, expected):
    config = config_lib.load_config_file(TINY)
    config_checks.validate(config)                             # the preset itself is valid
    *sections, name = field.split(".")
    node = config
    for section in sections:
        node = node[section]
    node[name] = value
    with pytest.raises(ValueError) as err:
        config_checks.validate(config)
    assert str(err.value) == f"config.{field}={value!r}: expected {expected}"


@pytest.mark.parametrize("field,value,expected", [
    ("optim.min_lr", 0.5, "expected <= the peak learning rate "),   # the rate had climbed
    ("optim.base_lr", 1e300, "expected a learning rate float32 holds"),  # a NaN checkpoint
])
def test_learning_rates_that_cannot_train_are_refused(field, value, expected):
    config = config_lib.load_config_file(TINY)
    section, name = field.split(".")
    config[section][name] = value
    peak = config.optim.base_lr * config.train.global_batch_size / 256
    with pytest.raises(ValueError) as err:
        config_checks.validate(config)
    assert str(err.value).startswith(f"config.{field}={value!r}: {expected}")
    assert f"{peak:g}" in str(err.value)


def test_a_preset_renamed_by_an_override_is_refused(tmp_path):
    """--config.data.preset=ecgfounder on the crema path trained crema's path under the
    ecgfounder name (the fine-tuning recipe and the model card trust the name)."""
    done = _cli("pretrain", f"--config={TINY}", "--config.data.preset=ecgfounder",
                f"--workdir={tmp_path / 'run'}")
    assert done.returncode == 2, done.stderr  # a flag's value: a usage error
    line = assert_one_error_line("pretrain", done.stdout, done.stderr)
    assert line.startswith("crema-jax pretrain: error: flag --config.data.preset='ecgfounder': "
                           "expected the data path whose fields this config holds; nan_policy="
                           "'interpolate' (ecgfounder: 'zero'), "), line
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- outputs
@pytest.fixture()
def ecgs(tmp_path):
    path = tmp_path / "x.npy"
    rng = np.random.default_rng(0)
    np.save(path, rng.normal(size=(16, 12, 2500)).astype(np.float32))
    return path


def test_embed_refuses_special_files_even_with_overwrite(tmp_path, ecgs, sit_checkpoint):
    fifo = tmp_path / "out.npy"
    os.mkfifo(fifo)
    before = _hashes(tmp_path, sit_checkpoint)
    done = _cli("embed", f"--checkpoint={sit_checkpoint}", f"--input={ecgs}", f"--out={fifo}",
                "--overwrite")
    _one_line(done, "embed", f"--out={fifo}: a FIFO, not a regular file")
    assert _hashes(tmp_path, sit_checkpoint) == before
    assert fifo.is_fifo()
    # A device (making one needs root: the one every machine has).
    with pytest.raises(files.OutputError, match="^--out=/dev/null: a character device, not a "
                                                "regular file"):
        files.check_output_file("/dev/null", overwrite=True)


def test_prepare_refuses_a_cache_whose_settings_are_a_fifo(tmp_path, cinc_sample_dir):
    out = tmp_path / "cache"
    out.mkdir()
    os.mkfifo(out / "settings.json")
    before = _hashes(tmp_path)
    done = _cli("prepare", f"--root={cinc_sample_dir}", f"--out={out}", "--workers=1")
    _one_line(done, "prepare", f"--out={out}: settings.json is a FIFO, not a regular file")
    assert _hashes(tmp_path) == before


def test_a_full_disk_under_embed_is_one_line_naming_the_output(tmp_path, ecgs,
                                                                sit_checkpoint):
    out = tmp_path / "features.npy"
    before = _hashes(tmp_path, sit_checkpoint)
    # 16 ECGs x 64 features x 4 bytes = 4 KiB of output, 2 KiB of room.
    done = _cli("embed", f"--checkpoint={sit_checkpoint}", f"--input={ecgs}", f"--out={out}",
                file_size_limit=2048)
    _one_line(done, "embed", f"cannot write {out}: File too large")
    assert _hashes(tmp_path, sit_checkpoint) == before    # no output, no temporary left


# ----------------------------------------------------------------------------- flags, locks
def test_root_and_cache_dir_together_are_refused(tmp_path, cinc_sample_dir, sit_checkpoint):
    cache = tmp_path / "cache"
    cache.mkdir()
    before = _hashes(tmp_path, sit_checkpoint)
    done = _cli("probe", f"--checkpoint={sit_checkpoint}", f"--root={cinc_sample_dir}",
                f"--cache_dir={cache}", f"--workdir={tmp_path / 'probe'}")
    _one_line(done, "probe", f"--root={cinc_sample_dir} and --cache_dir={cache}: give one")
    assert _hashes(tmp_path, sit_checkpoint) == before


def test_a_second_prepare_on_one_out_stops_naming_the_first(tmp_path, cinc_sample_dir):
    """The first writer is this test process (alive, on this host): its lock in --out."""
    out = tmp_path / "cache"
    out.mkdir()
    lock = out / prepare_lib.lock_name(0)
    lock.write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename,
                                "started": "now"}))
    before = _hashes(tmp_path)
    done = _cli("prepare", f"--root={cinc_sample_dir}", f"--out={out}", "--workers=1")
    _one_line(done, "prepare", f"{out} is in use: a run by pid {os.getpid()}", str(lock))
    assert _hashes(tmp_path) == before


def test_embed_from_a_training_checkpoint_warns_of_nothing(tmp_path, ecgs):
    """A training checkpoint holds the data iterator's state, which embed does not read: Orbax
    used to warn, twice, that it could not restore it."""
    import grain

    config = config_lib.default_config()
    config.model.size = "tiny"
    params = params_lib.init_params(config.model, 0)
    data_iter = iter(grain.MapDataset.range(4).to_iter_dataset())
    next(data_iter)
    with checkpoint.make_manager(tmp_path / "run", async_save=False) as manager:
        checkpoint.save_train_state(manager, 1, params=params, opt_state={"count": np.zeros(2)},
                                    rng=jax.random.key(0), config=config, data_iter=data_iter)
    assert (tmp_path / "run" / "checkpoints" / "1" / "data_iter").is_dir()
    out = tmp_path / "features.npy"
    done = _cli("embed", f"--checkpoint={tmp_path / 'run'}", f"--input={ecgs}", f"--out={out}")
    assert done.returncode == 0, done.stderr
    assert "data_iter" not in done.stderr, done.stderr
    assert np.load(out).shape == (16, 64)


def test_a_workdir_that_cannot_be_made_is_one_line_naming_it(tmp_path):
    """Any OSError of a command (here: a folder asked for under a regular file) is one line
    naming the path (read-only folders cannot be tested as root, which ignores permissions)."""
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine")
    before = _hashes(tmp_path)
    done = _cli("pretrain", f"--config={TINY}", f"--workdir={blocker / 'run'}",
                "--config.train.num_steps=1")
    _one_line(done, "pretrain", f"{blocker / 'run'}: {blocker} is a file, not a folder")
    assert _hashes(tmp_path) == before
