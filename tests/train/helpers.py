"""Helpers for the training tests: a tiny config and a CLI launcher for subprocesses."""
import os
import pathlib
import subprocess
import sys

from crema_jax.train.hooks import FaultDrill

REPO = pathlib.Path(__file__).resolve().parents[2]


def tiny_config(**overrides):
    """configs/crema_tiny.py on 16 synthetic ECGs, batch 8, 5 steps, checkpoints every 2."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("crema_tiny", REPO / "configs" / "crema_tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.data.synthetic_records = 16
    config.train.num_steps = 5
    config.train.tensorboard = False
    config.train.fast_compile = True    # five steps: compile time dominates
    config.optim.warmup_steps = 2
    config.optim.base_lr = 1e-2    # big enough that 5 steps move the loss visibly
    config.checkpoint.every_steps = 2
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 1, 1
    for key, value in overrides.items():
        section, field = key.split(".")
        config[section][field] = value
    return config


def cli_env(num_devices: int) -> dict:
    """Environment of a fresh `crema-jax` process with `num_devices` CPU devices (this test
    process's 8-device XLA_FLAGS must not leak into it)."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
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
