"""The pretrain CLI's dry run, every config file, the TPU scripts and the step benchmark."""
import json
import pathlib
import shutil
import subprocess
import sys

import pytest

from crema_jax import config as config_lib
from crema_jax import config_checks
from crema_jax.cli import pretrain
from crema_jax.models import params as params_lib
from crema_jax.models.config import resolve_size
from crema_jax.runtime import checkpoint
from tests.cli.conftest import _fails
from tests.configs import load_config_file
from tests.train.helpers import REPO, cli_env, start_cli

CONFIGS = {"crema_tiny": ("tiny", "crema"), "crema_small": ("small", "crema"),
           "crema_base": ("base", "crema"), "crema_large": ("large", "crema"),
           "stmem_base": ("base", "stmem"), "mae_base": ("base", "mae"),
           "simclr_base": ("base", "simclr"), "demo": ("tiny", "crema")}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_files(name):
    module = load_config_file(name)
    assert "crema-jax pretrain --config=configs/" + name + ".py" in module.__doc__
    config = module.get_config()
    assert (config.model.size, config.loss.name) == CONFIGS[name]
    assert config.data.num_views == (1 if config.loss.name in ("mae", "stmem") else 2)
    if name == "demo":
        assert pathlib.Path(config.data.root).is_dir() and config.train.reconstruction_png


@pytest.mark.slow
def test_dry_run_reports_flops_and_memory(tmp_path):
    proc = start_cli(tmp_path, "--dry_run", "--config.train.global_batch_size=4", num_devices=2)
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out
    report = json.loads(out.strip().splitlines()[-1])
    assert report["mesh"] == {"data": 2, "fsdp": 1, "tensor": 1}
    assert "FLOPs per step" in out and "memory per device" in out
    # Lower bound by hand: the encoder's matmuls alone, forward + backward (x3), on
    # 2 views x 4 ECGs x (84 visible + 24 SEP) tokens; the decoder and attention come on top.
    config = load_config_file("crema_tiny").get_config()
    size = resolve_size(config.model)
    w = size["width"]
    per_token = 2 * (w * 3 * w + w * w + 2 * w * 4 * w) * size["depth"]
    encoder = 3 * per_token * 2 * 4 * 108
    assert encoder < report["flops_per_step"] < 50 * encoder
    assert report["memory_per_device"]["argument_size_in_bytes"] > 0
    assert not (tmp_path / "checkpoints").exists()     # nothing trained, nothing written


def _start_dry_run(tmp_path, *extra):
    return start_cli(tmp_path, "--dry_run", "--config.mesh.fsdp=4", *extra)


def _dry_run_report(proc) -> dict:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.slow
def test_dry_run_for_a_tpu_pod_slice_and_for_n_cpu_devices(tmp_path):
    """A v5e 4x4 slice (16 chips on 4 hosts) compiled here by the TPU compiler from libtpu, and
    the same mesh on 16 CPU devices of this one process."""
    # Two independent processes (a dry run writes nothing), run side by side: each spends
    # seconds in start-up and single-threaded tracing and compiling.
    procs = [_start_dry_run(tmp_path, target, "--config.train.global_batch_size=16")
             for target in ("--topology=v5e:4x4", "--num_devices=16")]
    try:
        tpu, cpu = [_dry_run_report(proc) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert tpu["device_kind"] == "TPU v5 lite" and tpu["devices"] == 16
    assert tpu["processes"] == 4 and tpu["global_batch"] == 16   # 4 ECGs per host
    assert tpu["mesh"] == {"data": 4, "fsdp": 4, "tensor": 1}
    assert tpu["memory_per_device"]["total_bytes"] > 0
    assert tpu["step_seconds_at_peak"] > 0

    assert cpu["device_kind"] == "cpu" and cpu["devices"] == 16 and cpu["processes"] == 1
    assert cpu["mesh"] == tpu["mesh"] and cpu["global_batch"] == 16
    assert "step_seconds_at_peak" not in cpu   # no table peak for a CPU
    # The same step for the same 16 ECGs, costed by two different compilers (XLA:TPU, XLA:CPU):
    # they agree on the work to within the elementwise ops they count differently.
    assert cpu["flops_per_step"] == pytest.approx(tpu["flops_per_step"], rel=0.15)
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
@pytest.mark.parametrize("extra, message", [
    (("--dry_run", "--topology=v5e"), "expected a TPU type and chip grid"),
    (("--dry_run", "--topology=v9z:2x2"), "unknown TPU type 'v9z'"),
    (("--topology=v5e:2x2",), "only go with --dry_run"),
    (("--dry_run", "--num_devices=3", "--config.train.global_batch_size=4"),
     "expected a multiple of the 3 batch shards of the mesh axes ('data', 'fsdp') (data 3 x "
     "fsdp 1)"),
    (("--dry_run", "--config.data.batch_size=4"), "set that instead"),
])
def test_dry_run_rejects_a_bad_target(tmp_path, extra, message):
    proc = start_cli(tmp_path, *extra)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0 and message in out, out


def test_tpu_scripts_parse_and_pass_shellcheck():
    scripts = sorted((REPO / "tpu_scripts").glob("*.sh"))
    assert {s.name for s in scripts} >= {"create_pod.sh", "install.sh", "launch_pretrain.sh",
                                         "stream_logs.sh", "delete_pod.sh"}
    for script in scripts:
        subprocess.run(["bash", "-n", str(script)], check=True)
    text = (REPO / "tpu_scripts" / "create_pod.sh").read_text()
    assert "gcloud compute tpus tpu-vm create" in text
    assert "--worker=all" in (REPO / "tpu_scripts" / "install.sh").read_text()
    if shutil.which("shellcheck"):  # Linted when installed (apt-get install shellcheck).
        result = subprocess.run(["shellcheck", "-x", *map(str, scripts)], capture_output=True,
                                text=True, cwd=REPO / "tpu_scripts")
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_bench_runs_from_outside_the_repo(tmp_path):
    env = cli_env(1)
    env.pop("PYTHONPATH")   # the script must find crema_jax on its own
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "train_step.py"),
                           "--model=tiny", "--batch=2", "--steps=2"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["step_seconds"] > 0 and result["flops"] > 0 and result["batch"] == 2


# ------------------------------------------------------------------ refused before any compile
DEMO = f"--config={REPO / 'configs' / 'demo.py'}"
DRY = [DEMO, "--dry_run", "--config.mesh.data=-1"]  # demo.py's mesh: 1 device; the tests have 8


@pytest.mark.parametrize("rules, said", [
    ('(("embed","fsdpp"),)', "flag --config.mesh.rules=(('embed', 'fsdpp'),): expected mesh axes "
     "among ['data', 'fsdp', 'tensor'], a tuple of them or None; 'fsdpp' (for 'embed') is no "
     "mesh axis (did you mean 'fsdp'?)"),
    ('(("embedd","fsdp"),)', "flag --config.mesh.rules=(('embedd', 'fsdp'),): expected logical "
     "axes among ['activation_batch', 'activation_length', 'activation_embed', 'embed', 'mlp', "
     "'heads', 'qkv', 'head_dim', 'patch', 'leads', 'layers', 'norm', 'classes', 'proj']; "
     "'embedd' is none of them (did you mean 'embed'?)"),
    ('(("embed",("fsdp","fsdp")),)', "flag --config.mesh.rules=(('embed', ('fsdp', 'fsdp')),): "
     "expected each mesh axis once per entry; ('embed', ('fsdp', 'fsdp')) repeats one"),
])
def test_mesh_rules_naming_no_axis_are_refused(capsys, rules, said):
    """An unknown mesh axis had been dropped (the parameter replicated) and an unknown logical
    axis ignored: both compiled, exit 0."""
    line = _fails(pretrain, [DEMO, "--dry_run", "--config.mesh.fsdp=4",
                             f"--config.mesh.rules={rules}"], capsys, code=2)
    assert line == f"crema-jax pretrain: error: {said}"


def test_mesh_rules_putting_two_axes_of_a_parameter_on_one_mesh_axis_are_refused(capsys):
    """jax's DuplicateSpecError had ended the dry run in a 113-line traceback."""
    line = _fails(pretrain, [DEMO, "--dry_run", "--config.mesh.data=-1",
                             '--config.mesh.rules=(("embed","tensor"),)'], capsys, code=2)
    assert line == ("crema-jax pretrain: error: flag --config.mesh.rules=(('embed', 'tensor'),): "
                    "logical axes 'heads' and 'embed' of parameter decoder/blocks/0/attn/out/"
                    "kernel (axes heads, head_dim, embed) both map to mesh axis 'tensor'; "
                    "expected rules that put the axes of a parameter on different mesh axes")


def test_a_bad_topology_is_a_flag_error(capsys):
    """Every --topology refusal had exited 1, as for bad data; v5e:32x32 had aborted libtpu."""
    line = _fails(pretrain, [DEMO, "--dry_run", "--topology=v5e:32x32"], capsys, code=2)
    assert line == ("crema-jax pretrain: error: --topology=v5e:32x32: larger than any v5e slice; "
                    "expected a chip grid within 16x16, the largest single v5e slice")


def test_the_dry_run_refuses_what_the_run_refuses(tmp_path, capsys):
    """An unknown evaluator and an init_from naming no checkpoint (or another architecture's)
    had passed --dry_run with exit 0; the run refused them. The evaluator name is a flag error."""
    line = _fails(pretrain, [*DRY, '--config.evals.names=("reconstructoin",)'],
                  capsys, code=2)
    assert line == ("crema-jax pretrain: error: flag --config.evals.names=('reconstructoin',): "
                    "unknown ['reconstructoin']; expected names from ['fewshot_probe', "
                    "'reconstruction']")
    missing = tmp_path / "nonexistent"
    line = _fails(pretrain, [*DRY, f"--config.train.init_from={missing}"], capsys)
    assert line == (f"crema-jax pretrain: error: {missing}: no complete checkpoint found "
                    "(expected a workdir with checkpoints/<step>/, a checkpoints dir, or a step "
                    "dir containing 'params')")
    other = config_lib.default_config()
    other.model.size = "tiny"
    checkpoint.save_model_checkpoint(tmp_path / "ckpt", params_lib.init_params(other.model, 0),
                                     other)
    line = _fails(pretrain, [*DRY, f"--config.train.init_from={tmp_path / 'ckpt'}"],
                  capsys)
    assert line.startswith(f"crema-jax pretrain: error: {tmp_path / 'ckpt'}: the checkpoint's "
                           "model architecture differs from this run's config.model (")


def test_a_mesh_axis_a_model_dimension_does_not_divide_by_is_refused_naming_both(capsys):
    """jax had said "Sharding NamedSharding(...) implies that array axis 0 is partitioned 8
    times, but the dimension size is 2", exit 1, naming neither the field nor the parameter."""
    line = _fails(pretrain, [DEMO, "--dry_run", "--config.mesh.data=1", "--config.mesh.tensor=8"],
                  capsys, code=2)
    assert line == ("crema-jax pretrain: error: flag --config.mesh.tensor=8: the model's 'heads' "
                    "axis does not divide over it (parameter decoder/blocks/0/attn/out/kernel has "
                    "2 along 'heads', set by model.decoder_num_heads, split 8 ways over "
                    "mesh.tensor=8 by the rule ('heads', 'tensor')); expected mesh sizes that "
                    "divide 2, or a mesh.rules entry ('heads', None) to keep it whole")
    line = _fails(pretrain, [DEMO, "--dry_run", "--config.mesh.data=-1",
                             '--config.mesh.rules=(("embed",("data","fsdp")),)',
                             "--config.train.global_batch_size=24", "--config.model.width=36"],
                  capsys, code=2)
    assert line == ("crema-jax pretrain: error: flag --config.mesh.data=-1 (8 devices): the "
                    "model's 'embed' axis does not divide over it (parameter decoder/embed/kernel "
                    "has 36 along 'embed', set by model.width, split 8 ways over mesh.data=-1 "
                    "(8 devices) x mesh.fsdp=1 by the rule ('embed', ('data', 'fsdp'))); expected "
                    "mesh sizes that divide 36, or a mesh.rules entry ('embed', None) to keep it "
                    "whole")


@pytest.mark.parametrize("flags, said", [
    (("--config.mesh.data=-1", "--config.mesh.fsdp=-1"),
     "flag --config.mesh.data=-1: config.mesh (data=-1, fsdp=-1, tensor=1): expected at most one "
     "axis of size -1 (the one that takes every device the others leave)"),
    (("--config.mesh.data=3",),
     "flag --config.mesh.data=3: config.mesh {'data': 3, 'fsdp': 1, 'tensor': 1} needs 3 "
     "devices; 8 are available (use -1 on one axis to fill)"),
    (("--config.mesh.data=-1", "--config.train.global_batch_size=6"),
     "flag --config.train.global_batch_size=6: expected a multiple of the 8 batch shards of the "
     "mesh axes ('data', 'fsdp') (data 8 x fsdp 1)"),
    (("--config.mesh.data=4", "--config.mesh.fsdp=-1", "--config.train.global_batch_size=12"),
     "flag --config.train.global_batch_size=12: expected a multiple of the 8 batch shards of the "
     "mesh axes ('data', 'fsdp') (data 4 x fsdp 2)"),
    (("--config.optim.grad_accum_steps=3",),
     "flag --config.optim.grad_accum_steps=3: expected a divisor of train.global_batch_size=16 "
     "(each optimizer step's batch is split into this many equal micro-batches)"),
])
def test_a_mesh_or_batch_that_does_not_fit_is_a_flag_error(tmp_path, capsys, flags, said):
    """Each had exited 1 as for bad data; grad_accum_steps=3 had also created WORKDIR/checkpoints
    before refusing. Each is refused before anything is built or written, the run's as the dry
    run's."""
    for target in (["--dry_run"], [f"--workdir={tmp_path / 'run'}"]):
        line = _fails(pretrain, [DEMO, *target, *flags], capsys, code=2)
        assert line == f"crema-jax pretrain: error: {said}"
        assert not (tmp_path / "run").exists()


def test_a_python_call_of_train_or_dry_run_gets_the_commands_layout_checks(tmp_path):
    """The layout checks had run in the pretrain command only: `trainer.train` called from
    Python with a mesh axis the heads do not divide by ended in jax's own message, after the
    workdir was created and locked."""
    from crema_jax.evaluate import evaluators
    from crema_jax.train import trainer

    config = load_config_file("demo").get_config()
    config.mesh.data, config.mesh.tensor = 1, 8   # the decoder has 2 heads
    workdir = tmp_path / "run"
    for call in (lambda: trainer.train(config, workdir, evaluators=evaluators.build),
                 lambda: trainer.dry_run(config)):
        with pytest.raises(config_checks.ConfigValueError) as err:
            call()
        assert err.value.config_field == "mesh.tensor"
        assert "parameter decoder/blocks/0/attn/out/kernel has 2 along 'heads'" in str(err.value)
    assert not workdir.exists()
