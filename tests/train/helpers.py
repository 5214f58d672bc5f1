"""The training tests' launcher of `crema-jax pretrain` subprocesses on the tiny config."""
import json
import os
import pathlib
import subprocess
import sys

from crema_jax.train.hooks import FaultDrill
from tests import xla_flags

REPO = pathlib.Path(__file__).resolve().parents[2]


def cli_env(num_devices: int) -> dict:
    """Environment of a fresh `crema-jax` process with `num_devices` CPU devices (this test
    process's 8-device XLA_FLAGS must not leak into it)."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = xla_flags.cpu_devices(num_devices)
    env["JAX_NUM_CPU_DEVICES"] = str(num_devices)
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


TINY_CLI_OVERRIDES = (
    "--config.data.synthetic_records=16", "--config.optim.warmup_steps=2",
    "--config.optim.base_lr=0.01", "--config.train.tensorboard=False",
    "--config.mesh.data=-1", "--config.train.fast_compile=True",
)


def start_cli(workdir, *extra, num_devices=1, cache_dir=None, step_delay_seconds=0.0,
              env_extra=None, **popen_kwargs):
    """A `crema-jax pretrain` process on the tiny config; step_delay_seconds > 0 slows every
    step (the fault drill a kill or preemption test needs, train/hooks.py FaultDrill);
    env_extra: more environment variables (other drills). stderr joins stdout unless given."""
    env = {**cli_env(num_devices), **(env_extra or {})}
    if step_delay_seconds:
        env[FaultDrill.ENV_DELAY] = str(step_delay_seconds)
    args = [sys.executable, "-m", "crema_jax.main", "pretrain",
            f"--config={REPO / 'configs' / 'crema_tiny.py'}", f"--workdir={workdir}",
            *TINY_CLI_OVERRIDES, *extra]
    if cache_dir:
        args.append(f"--config.train.compilation_cache_dir={cache_dir}")
    popen_kwargs.setdefault("stderr", subprocess.STDOUT)
    return subprocess.Popen(args, env=env, cwd=str(REPO), stdout=subprocess.PIPE, text=True,
                            **popen_kwargs)


def losses_by_step(workdir) -> dict[int, list[float]]:
    """metrics.jsonl's training losses: step -> every logged value (a step redone after a
    restart logs again)."""
    out: dict[int, list[float]] = {}
    for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        out.setdefault(row["step"], []).append(row["loss"])
    return out
