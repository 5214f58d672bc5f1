"""Fixtures shared by the command tests."""
import types

import pytest

from crema_jax import config as config_lib
from crema_jax import main
from crema_jax.models import params as params_lib
from crema_jax.runtime import checkpoint


@pytest.fixture(scope="module")
def sit_checkpoint(tmp_path_factory):
    """A tiny random SiT pretraining checkpoint (a model checkpoint, no training state)."""
    root = tmp_path_factory.mktemp("sit")
    config = config_lib.default_config()
    config.model.size = "tiny"
    checkpoint.save_model_checkpoint(root / "ckpt", params_lib.init_params(config.model, 0),
                                     config)
    return root / "ckpt"


def assert_one_error_line(command: str, out: str, err: str, *fragments) -> str:
    """The command's refusal: exactly one stderr line `crema-jax COMMAND: error: ...` holding
    every fragment, and no traceback anywhere; returns that line."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"crema-jax {command}: error: "), lines
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert "Traceback" not in out + err
    return lines[0]


def _fails(command, argv, capsys, *fragments, code=1):
    """Run a command (its module, e.g. crema_jax.cli.embed) in this process where it must refuse;
    check the one-line error (exit `code`: 1 for data, 2 for a usage error); returns the line."""
    with pytest.raises(SystemExit) as exit_info:
        command.COMMAND.run(argv)
    captured = capsys.readouterr()
    assert exit_info.value.code == code, (exit_info.value.code, captured.err)
    return assert_one_error_line(command.COMMAND.name, captured.out, captured.err, *fragments)


def run_in_process(capsys, *args) -> types.SimpleNamespace:
    """`crema-jax ARGS` through the console script's entry point, in this process (a refusal
    that stops before any work costs no interpreter start): returncode, stdout, stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main.run(["crema-jax", *args])
    done = capsys.readouterr()
    return types.SimpleNamespace(returncode=exited.value.code, stdout=done.out, stderr=done.err)
