"""Careless and hostile use, fifth round: an output naming an input record's own file, files
that are no PyTorch weights, a .npy header announcing terabytes, a FIFO as input, array rows
dropped without a trace, numbers outside their range (NaN included) in flags and task files, an
empty dataset or one whose every record is skipped, a folder whose name has spaces around it.
Each ends in one line naming the flag or file (exit 2 for a flag, 1 for data), or is done right;
no input is modified."""
import hashlib
import io
import os
import pathlib
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest

from crema_jax.evaluate import benchmark, benchmark_tasks, ranges
from crema_jax.export import safe_load
from tests.cli.conftest import assert_one_error_line, run_in_process

CLI = [os.path.join(os.path.dirname(sys.executable), "crema-jax")]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def _cli(*args, timeout=300):
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=timeout,
                          env=ENV)


def _digests(folder: pathlib.Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def test_predict_never_writes_over_an_input_records_file(tmp_path, cinc_sample_dir):
    """`--out=E07500.hea --overwrite` replaced the record's header with the CSV (exit 0)."""
    for name in ("E07500.hea", "E07500.mat", "E07501.hea", "E07501.mat"):
        shutil.copy(cinc_sample_dir / name, tmp_path / name)
    before = _digests(tmp_path)
    for out in ("E07500.hea", "E07500.mat", "E07501.mat"):
        done = _cli("predict", "--checkpoint=/nonexistent", f"--out={tmp_path / out}",
                    "--overwrite", str(tmp_path / "E07500"), str(tmp_path / "E07501.hea"))
        assert done.returncode == 1
        assert_one_error_line("predict", done.stdout, done.stderr,
                              f"--out={tmp_path / out}: that is an input of this command")
    assert _digests(tmp_path) == before


def _torch_save(path, obj):
    import torch
    torch.save(obj, path)


@pytest.mark.parametrize("make, said", [
    (lambda p: p.write_text("hello world\n"), "not a readable torch.save file"),
    (lambda p: p.write_bytes(np.random.default_rng(0).bytes(3000)),
     "not a torch.save file of weights"),
    (lambda p: p.write_bytes(pickle.dumps({"a": 1}, protocol=4)),
     "not a torch.save file of weights"),
    (lambda p: _torch_save(p, {"when": __import__("datetime").date(2020, 1, 1)}),
     "refused. This file needs arbitrary Python objects unpickled")])
def test_files_that_are_no_weights_are_named_for_what_they_are(tmp_path, make, said):
    path = tmp_path / "weights.pth"
    make(path)
    with pytest.raises(safe_load.CheckpointFileError) as raised:
        safe_load.read_torch_file(str(path))
    assert str(raised.value).startswith(f"{path}: {said}"), str(raised.value)
    if "arbitrary" not in said:  # garbage is not called unsafe
        assert "arbitrary" not in str(raised.value)


def _npy_claiming(path, shape):
    """A .npy whose header announces `shape` float32 but holds 64 bytes of data."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False,
                                                  "shape": shape})
    path.write_bytes(buffer.getvalue() + bytes(64))


def test_embed_refuses_a_bad_npy_before_allocating_it(tmp_path, sit_checkpoint, capsys):
    huge = tmp_path / "huge.npy"
    _npy_claiming(huge, (100_000_000, 12, 5000))   # 24 TB: np.load raised MemoryError
    fifo = tmp_path / "pipe.npy"
    os.mkfifo(fifo)
    for given, said in ((huge, "is truncated: its header announces (100000000, 12, 5000)"),
                        (fifo, "is a FIFO"), (tmp_path / "none.npy", "does not exist")):
        done = run_in_process(capsys, "embed", f"--checkpoint={sit_checkpoint}",
                              f"--input={given}", f"--out={tmp_path / 'y.npy'}")
        assert done.returncode == 1
        assert_one_error_line("embed", done.stdout, done.stderr, f"--input={given} {said}")
    assert not (tmp_path / "y.npy").exists()


def test_embed_names_each_rows_ecg_when_an_array_row_is_skipped(tmp_path, sit_checkpoint):
    """Row 1 (all Inf) is skipped: Y held 2 rows and nothing said they were rows 0 and 2."""
    x = np.random.default_rng(0).normal(size=(3, 12, 2500)).astype(np.float32)
    x[1] = np.inf
    np.save(tmp_path / "x.npy", x)
    done = _cli("embed", f"--checkpoint={sit_checkpoint}", f"--input={tmp_path / 'x.npy'}",
                f"--out={tmp_path / 'y.npy'}")
    assert done.returncode == 0, done.stderr
    assert np.load(tmp_path / "y.npy").shape[0] == 2
    assert (tmp_path / "y.records.txt").read_text().split() == ["0", "2"]


@pytest.mark.parametrize("command, flags, said", [
    ("finetune", ["--base_lr=nan"], "flag --base_lr=nan: expected a finite number > 0"),
    ("finetune", ["--layer_decay=nan"], "flag --layer_decay=nan: expected a finite number in "
                                        "(0, 1]"),
    ("finetune", ["--drop_path=1.5"], "flag --drop_path=1.5: expected a finite number in [0, 1)"),
    ("finetune", ["--label_smoothing=2"], "flag --label_smoothing=2.0: expected a finite number"),
    ("finetune", ["--warmup_epochs=-1"], "flag --warmup_epochs=-1.0: expected a finite number "
                                         ">= 0"),
    ("probe", ["--l2_grid=nan"], "--l2_grid=nan: expected numbers, each a finite number >= 0"),
    ("probe", ["--l2_grid=-1,0"], "--l2_grid=-1,0: expected numbers, each a finite number >= 0"),
    ("probe", ["--label_fractions=0"], "--label_fractions=0: expected numbers, each a finite "
                                       "number in (0, 1]"),
    ("probe", ["--split_fractions=0.9,0.9,0.9"], "--split_fractions=0.9,0.9,0.9: expected three"),
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


def test_ranges_by_hand():
    r = ranges.Range(0, 1, low_open=True)
    assert [r.ok(v) for v in (0, 1e-9, 1, 1.5, float("nan"), float("inf"), None, True, "1")] \
        == [False, True, True, False, False, False, True, False, False]
    assert ranges.COUNT.ok(3) and not ranges.COUNT.ok(2.5) and not ranges.COUNT.ok(0)
    assert ranges.FRACTION.text == "expected a finite number in [0, 1)"


def _task_file(tmp_path, root, extra: str) -> pathlib.Path:
    path = tmp_path / "tasks.py"
    path.write_text(
        "import ml_collections\n\ndef get_config():\n    c = ml_collections.ConfigDict()\n"
        f"    c.datasets = {{'d': {{'root': {str(root)!r}}}}}\n"
        "    c.tasks = [{'name': 't', 'dataset': 'd'}]\n"
        "    c.protocols = {'probe': {}}\n" + extra + "    return c\n")
    return path


@pytest.mark.parametrize("extra, said", [
    ("    c.bootstrap = float('nan')\n", "bootstrap=nan: expected an integer in [1, 100000]"),
    ("    c.bootstrap = -3\n", "bootstrap=-3: expected an integer in [1, 100000]"),
    ("    c.batch_size = 0\n", "batch_size=0: expected an integer in [1, 65536]"),
    ("    c.alpha = 1.0\n", "alpha=1.0: expected a finite number in (0, 1)"),
    ("    c.tasks = [{'name': 't', 'dataset': 'd', 'label_fractions': [0.0]}]\n",
     "tasks 't': label_fractions=[0.0]: each expected a finite number in (0, 1]")])
def test_a_task_files_numbers_are_checked(tmp_path, extra, said):
    path = _task_file(tmp_path, tmp_path, extra)
    with pytest.raises(ValueError) as raised:
        benchmark_tasks.load_suite(path)
    assert str(raised.value) == f"task file {path}: {said}"


@pytest.mark.parametrize("protocol, fields, said", [
    ("probe", {"steps": -5}, "protocols['probe'].steps=-5: expected an integer >= 1"),
    ("probe", {"l2_grid": [float("nan")]}, "protocols['probe'].l2_grid=[nan]: expected"),
    ("mlp", {"learning_rate": 0.0}, "protocols['mlp'].learning_rate=0.0: expected a finite"),
    ("finetune", {"drop_path": 1.0}, "protocols['finetune'].drop_path=1.0: expected")])
def test_a_task_files_protocol_numbers_are_checked(protocol, fields, said):
    with pytest.raises(ValueError, match=r"^task file: " + __import__("re").escape(said)):
        benchmark.recipe({"protocols": {protocol: fields}}, protocol)


def test_prepare_refuses_an_empty_dataset_and_an_all_skipped_one(tmp_path):
    (tmp_path / "empty").mkdir()
    done = _cli("prepare", f"--root={tmp_path / 'empty'}", f"--out={tmp_path / 'c1'}")
    assert done.returncode == 1
    assert_one_error_line("prepare", "", done.stderr, f"--root={tmp_path / 'empty'}: the "
                          "wfdb_folder layout finds no record there; nothing to prepare")
    assert not (tmp_path / "c1").exists()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.hea").write_text("garbage\n")
    (tmp_path / "junk" / "b.hea").write_text("x")
    done = _cli("prepare", f"--root={tmp_path / 'junk'}", f"--out={tmp_path / 'c2'}")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"crema-jax prepare: error: --out={tmp_path / 'c2'}: no record could be prepared (2 "
        f"header_syntax); {tmp_path / 'c2'}/summary.json lists each skipped file")
    assert (tmp_path / "c2" / "summary.json").is_file()


def test_a_folder_named_with_spaces_around_is_read_as_named(tmp_path, cinc_sample_dir):
    from crema_jax.data.index import dataset_index

    folder = tmp_path / " sp "
    folder.mkdir()
    for name in ("E07500.hea", "E07500.mat"):
        shutil.copy(cinc_sample_dir / name, folder / name)
    assert dataset_index.expand_records(str(folder)) == [str(folder / "E07500")]
    assert dataset_index.expand_records(f" {folder / 'E07500'} , {folder / 'E07500'}") == [
        str(folder / "E07500")]


def test_a_weights_path_that_is_no_regular_file_is_named_as_such(tmp_path):
    """A FIFO or a folder was "no such file" (and a FIFO must never be opened: it blocks)."""
    os.mkfifo(tmp_path / "pipe.pth")
    (tmp_path / "folder.safetensors").mkdir()
    for name, what in (("pipe.pth", "not a regular file (a FIFO, a device or a socket)"),
                       ("folder.safetensors", "a folder"), ("none.pth", "no such file")):
        with pytest.raises(safe_load.CheckpointFileError) as raised:
            safe_load.read_weight_file(str(tmp_path / name))
        assert str(raised.value) == (f"{tmp_path / name}: {what}; expected a .safetensors or "
                                     "torch.save file")


def test_a_cache_dir_that_is_a_file_is_named_as_such(tmp_path):
    """It said to build the cache with `prepare --out=x.npy`, which prepare refuses."""
    from crema_jax.data.cache import source

    (tmp_path / "x.npy").write_bytes(b"not a folder")
    with pytest.raises(NotADirectoryError, match=r"^" + __import__("re").escape(
            f"{tmp_path / 'x.npy'}: a file, not a cache folder")):
        source.load_index(str(tmp_path / "x.npy"))
