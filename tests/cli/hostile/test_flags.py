"""What every command's frame does with its flags: a number out of its range (NaN included), a
single-value flag given twice, a missing required input (each a usage error, exit 2, naming the
flag); --help marking a required flag and listing prepare's layouts; --verbose adding the
traceback; and a Ctrl-C ending the process at once (exit 130) whatever threads and worker
processes are left."""
import os
import pathlib
import time

import pytest

from crema_jax.cli import embed
from crema_jax.evaluate import ranges
from tests.cli.conftest import assert_one_error_line, run_in_process
from tests.cli.hostile.helpers import REPO


@pytest.mark.parametrize("command, flags, said", [
    ("finetune", ["--base_lr=nan"], "flag --base_lr=nan: expected a finite number > 0"),
    ("finetune", ["--layer_decay=nan"], "flag --layer_decay=nan: expected a finite number in "
                                        "(0, 1]"),
    ("finetune", ["--drop_path=1.5"], "flag --drop_path=1.5: expected a finite number in [0, 1)"),
    ("finetune", ["--label_smoothing=2"], "flag --label_smoothing=2.0: expected a finite number"),
    ("finetune", ["--warmup_epochs=-1"], "flag --warmup_epochs=-1.0: expected a finite number "
                                         "in [0, 1000000]"),
    # Steps are counted in int32: 1e9 warm-up epochs, 3e9 steps an epoch, or their products
    # past 2**31 had ended in an OverflowError traceback.
    ("finetune", ["--warmup_epochs=1e9"], "flag --warmup_epochs=1000000000.0: expected a finite "
                                          "number in [0, 1000000]"),
    ("finetune", ["--steps_per_epoch=3000000000"], "flag --steps_per_epoch=3000000000: "
     "3000000000 is not an integer in the range [0, 2147483647]"),
    ("finetune", ["--epochs=2000", "--steps_per_epoch=2000000"], "--epochs=2000 x "
     "--steps_per_epoch=2000000 = 4000000000 optimizer steps: expected at most 2147483647"),
    ("finetune", ["--warmup_epochs=5000", "--steps_per_epoch=1000000"], "--warmup_epochs=5000.0 "
     "x --steps_per_epoch=1000000 = 5000000000 warm-up steps: expected at most 2147483647"),
    ("probe", ["--l2_grid=nan"], "--l2_grid=nan: expected numbers, each a finite number >= 0"),
    ("probe", ["--l2_grid=-1,0"], "--l2_grid=-1,0: expected numbers, each a finite number >= 0"),
    ("probe", ["--label_fractions=0"], "--label_fractions=0: expected numbers, each a finite "
                                       "number in (0, 1]"),
    # [0, 0, 0] had been refused by a text that allowed it ("summing to at most 1").
    ("probe", ["--split_fractions=0.9,0.9,0.9"], "--split_fractions=0.9,0.9,0.9: expected three "
     "fractions, train,val,test, each in [0, 1], summing to more than 0 and at most 1"),
    ("probe", ["--split_fractions=0,0,0"], "--split_fractions=0,0,0: expected three fractions, "
     "train,val,test, each in [0, 1], summing to more than 0 and at most 1"),
    ("probe", ["--split_fractions=nan,0.5,0.5"], "--split_fractions=nan,0.5,0.5: expected"),
    ("compare", ["--checkpoint_b=random", "--alpha=nan"], "flag --alpha=nan: expected a finite"),
    ("prepare", ["--target_fs=nan"], "flag --target_fs=nan: expected a finite number in "
                                     "[50, 10000]"),
    ("prepare", ["--target_fs=-250"], "flag --target_fs=-250.0: expected a finite number"),
    ("embed", ["--input=x.npy", "--out=y.npy", "--fs=0"], "--fs=0: a sampling rate in Hz"),
    ("embed", ["--input=x.npy", "--out=y.npy", "--fs=nan"], "--fs=nan: a sampling rate in Hz"),
    ("preview", ["--mask_ratio=nan"], "flag --mask_ratio=nan: expected a finite number in [0, 1)"),
    ("preview", ["--out=figure"], "--out=figure: expected a file name ending in .png"),
    ("preview", ["--seed=-1"], "flag --seed=-1: -1 is not an integer in the range [0, "
                               "4294967295]"),
    # Past what a run can use: an OverflowError traceback; runs that never ended.
    ("probe", ["--seed=18446744073709551616"], "flag --seed=18446744073709551616: "
     "18446744073709551616 is not an integer in the range [0, 4294967295]"),
    ("compare", ["--checkpoint_b=random", "--bootstrap=1000000000"],
     "flag --bootstrap=1000000000: 1000000000 is not an integer in the range [1, 100000]"),
    ("finetune", ["--num_workers=99999999999999999999"], "flag --num_workers=9999"),
    # It had named config.model.size, a field the user never wrote.
    ("probe", ["--model_size=huge"], "--model_size='huge': expected one of ['tiny', 'small', "
                                     "'base', 'large']"),
])
def test_a_number_out_of_range_is_a_usage_error_naming_its_flag(tmp_path, monkeypatch, capsys,
                                                                command, flags, said):
    """In this process (the console script's own entry point): a usage error stops before
    anything runs."""
    common = {"finetune": ["--checkpoint=random", "--root=r", "--workdir=w"],
              "probe": ["--checkpoint=random", "--root=r", "--workdir=w"],
              "compare": ["--checkpoint=random", "--root=r", "--workdir=w"],
              "prepare": ["--root=r", "--out=o"], "embed": ["--checkpoint=c"], "preview": []}
    monkeypatch.chdir(tmp_path)
    done = run_in_process(capsys, command, *common[command], *flags)
    assert done.returncode == 2, done.stderr
    assert_one_error_line(command, done.stdout, done.stderr, said)
    assert os.listdir(tmp_path) == []   # nothing written


def test_fine_tunings_step_count_with_steps_a_run_derived_names_how():
    """--steps_per_epoch=0: the steps of one pass over the training records, known only once
    the data is; the product is checked then, naming the epochs and how the steps came."""
    ft = {"epochs": 1_000_000, "warmup_epochs": 1.0, "steps_per_epoch": 0}
    assert ranges.finetune_steps_problem(ft, "", 2148, "2148 steps per epoch (one pass)") == (
        "epochs=1000000 x 2148 steps per epoch (one pass) = 2148000000 optimizer steps: "
        "expected at most 2147483647 (steps are counted in int32)")
    assert ranges.finetune_steps_problem(ft, "", 2147, "2147 steps") is None


def test_ranges_by_hand():
    r = ranges.Range(0, 1, low_open=True)
    assert [r.ok(v) for v in (0, 1e-9, 1, 1.5, float("nan"), float("inf"), None, True, "1")] \
        == [False, True, True, False, False, False, True, False, False]
    assert ranges.COUNT.ok(3) and not ranges.COUNT.ok(2.5) and not ranges.COUNT.ok(0)
    assert ranges.FRACTION.text == "expected a finite number in [0, 1)"


def test_a_single_value_flag_given_twice_is_refused(capsys):
    """absl keeps the last value silently: `benchmark --models=m=A --models=f=B` benchmarked f
    alone, `predict --out=a.csv --out=b.csv` wrote b.csv only. Repeatable flags (--roots,
    --layout_option, config overrides) stay repeatable."""
    from crema_jax.cli import benchmark, predict, prepare
    for command, argv, fragment in (
            (benchmark, ["--models=m=/a", "--models=f=/b", "--workdir=/tmp/x"],
             "--models given 2 times; give it once (one comma-separated list)"),
            (predict, ["--checkpoint=/c", "--out=a.csv", "--out=b.csv", "r"],
             "--out given 2 times; give it once"),
            (prepare, ["--root=/r", "--out=/o", "--strict", "--nostrict"],
             "--strict given 2 times")):
        with pytest.raises(SystemExit) as exit_:
            command.COMMAND.run(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 2 and len(err) == 1 and fragment in err[0], err
    args = prepare.COMMAND.parse(["--root=/r", "--out=/o", "--layout_option=a=1",
                                  "--layout_option=b=2"])
    assert args.layout_option == ["a=1", "b=2"]


def test_a_boolean_flag_given_a_word_says_what_it_takes(capsys):
    """absl's own words had reached the user as a tuple: "flag --overwrite=2: ('Non-boolean
    argument to boolean flag', '2')"."""
    from crema_jax.cli import predict
    for value in ("maybe", "2"):
        with pytest.raises(SystemExit) as exit_:
            predict.COMMAND.run(["--checkpoint=/c", f"--derive_limb_leads={value}", "r"])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 2 and err == [
            f"crema-jax predict: error: flag --derive_limb_leads={value}: expected true or false "
            "(or --derive_limb_leads / --noderive_limb_leads)"], err


@pytest.mark.parametrize("args, message", [
    (["benchmark", "--tasks=t.py", "--workdir=w"], "--models required (usage: "),
    (["benchmark", "--models=", "--tasks=t.py", "--workdir=w"], "--models required (usage: "),
    (["predict", "--checkpoint=ck"], "no records given (usage: "),
    (["import-torch", "--out=o"], "expected one weight FILE, FOLDER or hub id, got 0"),
])
def test_a_missing_required_input_is_a_usage_error(tmp_path, capsys, monkeypatch, args,
                                                   message):
    """They had exited 1, as bad data does; the README says a usage error exits 2."""
    from tests.cli.conftest import assert_one_error_line, run_in_process
    monkeypatch.chdir(tmp_path)
    done = run_in_process(capsys, *args)
    assert done.returncode == 2, done.stderr
    assert_one_error_line(args[0], done.stdout, done.stderr, message)
    assert os.listdir(tmp_path) == []


def test_benchmark_help_marks_models_required(capsys):
    from tests.cli.conftest import run_in_process
    done = run_in_process(capsys, "benchmark", "--help")
    assert "\n  --models=VALUE (required)\n" in done.stdout, done.stdout


@pytest.mark.parametrize("name", ["prepare", "probe", "finetune", "compare"])
def test_layout_help_lists_every_layout(name):
    """probe, finetune and compare had listed six layouts, without clinical_exports."""
    import importlib
    text = importlib.import_module(f"crema_jax.cli.{name}").COMMAND.help()
    layouts = ("wfdb_folder", "ptbxl", "manifest", "code15", "mimic_iv_ecg", "numpy",
               "clinical_exports")
    assert f"Dataset layout: {', '.join(layouts)}." in " ".join(text.split()), text


def test_the_layout_registry_imports_a_layout_only_when_it_is_used():
    """--help names the layouts without loading their readers (wfdb, SciPy, pandas: 1.7 s)."""
    import subprocess
    import sys
    modules = [f"crema_jax.data.index.{m}" for m in ("wfdb_folder", "ptbxl", "manifest", "code15",
                                                     "mimic_iv_ecg", "numpy_arrays",
                                                     "clinical_exports")]
    code = (f"import sys; from crema_jax.data.index import registry; m = {modules!r}; "
            "print([x for x in m if x in sys.modules]); registry.LAYOUTS['numpy']; "
            "print([x for x in m if x in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.stdout.split("\n")[:2] == ["[]", "['crema_jax.data.index.numpy_arrays']"], \
        done.stdout


def test_verbose_adds_the_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit):
        embed.COMMAND.run(["--checkpoint=/nonexistent", f"--input={tmp_path / 'x.npy'}",
                           f"--out={tmp_path / 'y.npy'}", "--verbose"])
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith(
        "crema-jax embed: error: ")


_INTERRUPTED_COMMAND = """
import multiprocessing, sys, threading, time, types
from crema_jax import cli, main

class Command:
    def run(self, argv):
        import jax
        jax.devices()  # a JAX backend started, as in every command that compiles
        # Left running at the Ctrl-C, as XLA's compiler threads were: the interpreter's
        # shutdown waits for a thread like this one for ever (and crashed on XLA's).
        threading.Thread(target=time.sleep, args=(600,)).start()
        child = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(600,))
        child.start()
        print(child.pid, flush=True)
        raise KeyboardInterrupt

module = types.ModuleType("interrupted_command")
module.COMMAND = Command()
sys.modules["interrupted_command"] = module
cli.COMMANDS["interrupted"] = ("interrupted_command", "a command Ctrl-C stops", False)
sys.argv = ["crema-jax", "interrupted"]
main.run()
"""


def test_ctrl_c_ends_the_process_at_once_whatever_threads_are_left(tmp_path):
    """A Ctrl-C during pretrain's compile had ended in a segmentation fault (exit 139) in the
    interpreter's shutdown. A process that started a JAX backend now ends with exit 130 and
    its one line, without that shutdown, and stops the worker processes left."""
    import os
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", _INTERRUPTED_COMMAND], capture_output=True,
                          text=True, timeout=120, cwd=str(REPO),
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 130, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == "crema-jax interrupted: interrupted"
    child = int(done.stdout.split()[0])
    status = pathlib.Path(f"/proc/{child}/status")
    for _ in range(50):  # terminated: gone, or a zombie no one has reaped yet
        if not status.exists() or "\nState:\tZ" in status.read_text():
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"worker process {child} still runs")
