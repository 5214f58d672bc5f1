"""Careless and hostile inputs, twelfth round: paired outputs written as a pair, damaged lock
files, JSON nested too deeply, crafted safetensors headers and sidecar configs, an interrupted
import, and messages that name the file. Each refusal is one line naming the file, with the
user's files as they were."""
import errno
import json
import os
import tempfile
import time

import numpy as np
import pytest

from crema_jax.cli import embed, export_torch, import_torch, pretrain
from crema_jax.runtime import files, storage
from crema_jax.runtime import workdir as workdir_lib
from tests.cli.conftest import _fails
from tests.cli.test_hostile import REPO, _hashes, _safetensors

# The demo's mesh (data 1) on the test process's 8 devices: data -1 takes them all.
DEMO = f"--config={REPO / 'configs' / 'demo.py'}"
MESH = "--config.mesh.data=-1"


def _full_disk_for(monkeypatch, name: str) -> None:
    """The disk is full when the temporary file of output `name` is created (the outputs before
    it in the same group already written to their temporaries)."""
    real = tempfile.mkstemp

    def mkstemp(*args, prefix="", **kwargs):
        if prefix == f".{name}.":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, prefix=prefix, **kwargs)
    monkeypatch.setattr(files.tempfile, "mkstemp", mkstemp)


def test_embed_writes_y_and_its_records_as_a_pair(sit_checkpoint, tmp_path, capsys,
                                                   monkeypatch):
    """A full disk while writing Y.records.txt had left the new Y.npy beside the old
    Y.records.txt; both stay as they were now."""
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(0).normal(size=(2, 12, 2250)).astype(np.float32))
    out = tmp_path / "y.npy"
    out.write_bytes(b"old y")
    (tmp_path / "y.records.txt").write_text("old\nnames\n")
    before = _hashes(tmp_path)
    _full_disk_for(monkeypatch, "y.records.txt")
    _fails(embed, [f"--checkpoint={sit_checkpoint}", f"--input={x}", f"--out={out}",
                   "--overwrite", "--raw"], capsys,
           f"cannot write {tmp_path / 'y.records.txt'}: No space left on device")
    assert _hashes(tmp_path) == before


def test_export_torch_writes_weights_and_config_as_a_pair(sit_checkpoint, tmp_path, capsys,
                                                          monkeypatch):
    """--out=F.safetensors --overwrite had replaced F.safetensors before F.json, and
    --hub_folder=DIR --overwrite model.safetensors before config.json: a failure between left
    new weights with the old config (import-torch of that folder then restored a wrong data
    path). Every file of the output is written before any replaces an old one."""
    hub = tmp_path / "hub"
    export_torch.COMMAND.run([f"--checkpoint={sit_checkpoint}", f"--hub_folder={hub}"])
    out = tmp_path / "f.safetensors"
    export_torch.COMMAND.run([f"--checkpoint={sit_checkpoint}", f"--out={out}"])
    for path in (hub / "model.safetensors", out):
        path.write_bytes(path.read_bytes()[:-4] + b"\1\2\3\4")  # "old" weights, told apart
    before = _hashes(tmp_path)
    capsys.readouterr()
    _full_disk_for(monkeypatch, "config.json")
    _fails(export_torch, [f"--checkpoint={sit_checkpoint}", f"--hub_folder={hub}",
                          "--overwrite"], capsys,
           f"cannot write {hub / 'config.json'}: No space left on device")
    _full_disk_for(monkeypatch, "f.json")
    _fails(export_torch, [f"--checkpoint={sit_checkpoint}", f"--out={out}", "--overwrite"],
           capsys, f"cannot write {tmp_path / 'f.json'}: No space left on device")
    assert _hashes(tmp_path) == before
    assert not [p for p in tmp_path.rglob(".*") if p.name.endswith(".tmp")]


def test_an_unreadable_lock_is_named_as_such_and_taken_over_once_old(tmp_path, capsys):
    """An empty crema_jax.lock (a full disk or a crash while a run created it) had made every
    run say "in use: a run by pid ? on ? since ?" for an hour. A fresh one is named as an
    unreadable lock; one older than a few seconds is taken over with a note."""
    workdir = tmp_path / "run"
    workdir.mkdir()
    lock = workdir / workdir_lib.WorkdirLock.NAME
    lock.write_bytes(b"")
    _fails(pretrain, [DEMO, MESH, f"--workdir={workdir}", "--config.train.num_steps=1"], capsys,
           f"{lock}: an unreadable lock (empty or damaged) that names no run")
    assert lock.read_bytes() == b"" and sorted(os.listdir(workdir)) == [lock.name]
    for text in (b"", b"{", b"[" * 5000 + b"]" * 5000, b"{}"):  # nested: a RecursionError
        lock.write_bytes(text)
        old = time.time() - 60
        os.utime(lock, (old, old))
        held = workdir_lib.WorkdirLock(workdir)
        note = held.acquire()
        assert note.startswith(f"took over the unreadable lock {lock}"), note
        held.release()
        assert not lock.exists()


def test_a_damaged_lock_another_run_took_over_meanwhile_is_not_removed(tmp_path, monkeypatch):
    """Two runs that both saw the same old unreadable lock had both taken it: the second
    removed the first one's new, valid lock and wrote its own."""
    lock = tmp_path / workdir_lib.WorkdirLock.NAME
    lock.write_bytes(b"")
    old = time.time() - 60
    os.utime(lock, (old, old))
    first, second = workdir_lib.WorkdirLock(tmp_path), workdir_lib.WorkdirLock(tmp_path)
    modified = storage.modified
    calls = []

    def first_runs_between(path):   # after second's age check, first takes the lock over
        calls.append(path)
        if len(calls) == 2:
            assert first.acquire().startswith("took over the unreadable lock")
        return modified(path)
    monkeypatch.setattr(storage, "modified", first_runs_between)
    with pytest.raises(workdir_lib.WorkdirLockedError, match="another run took the lock first"):
        second.acquire()
    monkeypatch.setattr(storage, "modified", modified)
    assert first.held and not second.held
    assert json.loads(lock.read_text())["id"] == first.info["id"]   # first's lock is intact
    first.release()


def test_a_full_disk_while_creating_the_lock_names_it(tmp_path, monkeypatch):
    """"[Errno 28] No space left on device" had named no file."""
    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(storage, "create_exclusive", full)
    lock = workdir_lib.WorkdirLock(tmp_path)
    with pytest.raises(OSError, match="^.Errno 28. cannot create the lock "
                       f"{tmp_path / lock.NAME}: No space left on device$"):
        lock.acquire()


DEEP = "[" * 100000 + "]" * 100000
LONG_NUMBER = '{"library_name": "crema_jax", "n": ' + "9" * 5000 + "}"


@pytest.mark.parametrize("text, why", [(DEEP, "nested too deeply"),
                                       (LONG_NUMBER, "a number of more than 4300 digits")])
def test_json_nested_too_deeply_or_with_a_huge_number_is_named(sit_checkpoint, tmp_path, capsys,
                                                               text, why):
    """A hub folder's config.json (import-torch DIR, export-torch --hub_folder=DIR --overwrite)
    nested 100000 deep had ended in a RecursionError traceback, a 5000-digit number in Python's
    advice to call sys.set_int_max_str_digits()."""
    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "config.json").write_text(text)
    before = _hashes(tmp_path)
    _fails(import_torch, [str(hub), f"--out={tmp_path / 'out'}"], capsys,
           f"{hub / 'config.json'}: not valid JSON ({why})")
    _fails(export_torch, [f"--checkpoint={sit_checkpoint}", f"--hub_folder={hub}",
                          "--overwrite"], capsys,
           f"--hub_folder={hub}: its config.json is missing or was not written by export-torch")
    assert _hashes(tmp_path) == before


@pytest.mark.parametrize("header, fragment", [
    ({"w": {"dtype": "F32", "shape": [1] * 100, "data_offsets": [0, 4]}},
     "w: shape [1, 1, 1"),                   # numpy: "maximum supported dimension ... 64"
    ({"w": {"dtype": "F32", "shape": [2**62, 2**62, 0], "data_offsets": [0, 0]},
      "v": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
     "w: shape [4611686018427387904, 4611686018427387904, 0]: expected at most 8 dimensions "
     "of at most 2**48 elements in all"),    # "Maximum allowed dimension exceeded"
    ({"w": {"dtype": "F8_E4M3", "shape": [4], "data_offsets": [0, 4]}},
     "not a valid safetensors file: w: unsupported dtype 'F8_E4M3' (expected one of F64"),
    (b'{"w": {"dtype": "F32", "shape": [' + b"9" * 5000 + b'], "data_offsets": [0, 4]}}',
     "unreadable safetensors header (not valid JSON: a number of more than 4300 digits)"),
])
def test_crafted_safetensors_entries_are_named_with_the_file(tmp_path, capsys, header,
                                                             fragment):
    """Each had been numpy's or Python's message without the file, or (an unknown dtype) "not a
    complete safetensors file (truncated?)"."""
    path = _safetensors(tmp_path / "w.safetensors", header, b"\0" * 4)
    before = _hashes(tmp_path)
    _fails(import_torch, ["--format=crema", f"--out={tmp_path / 'out'}", str(path)], capsys,
           f"{path}: ", fragment)
    assert _hashes(tmp_path) == before and not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def crema_export(sit_checkpoint, tmp_path_factory):
    """(tensors, model config) of the tiny SiT as export-torch writes them."""
    import safetensors
    import safetensors.numpy
    out = tmp_path_factory.mktemp("export") / "w.safetensors"
    export_torch.COMMAND.run([f"--checkpoint={sit_checkpoint}", f"--out={out}"])
    with safetensors.safe_open(str(out), "np") as f:
        model = json.loads(f.metadata()["crema_model_config"])
    return safetensors.numpy.load_file(str(out)), model


@pytest.mark.parametrize("field, value, fragment", [
    ("dtype", "float8", "config.model.dtype='float8': expected one of ['bfloat16', 'float32']"),
    ("dtype", None, "config.model.dtype=None: expected one of ['bfloat16', 'float32']"),
    ("lead_embedding", "bogus", "config.model.lead_embedding='bogus': expected one of "
     "['canonical', 'position']"),
    ("logit_scale_init", float("inf"), "config.model.logit_scale_init=inf: expected a finite "
     "number"),
])
@pytest.mark.parametrize("where", ["sidecar", "metadata"])
def test_a_weight_files_model_config_is_checked_like_a_runs(crema_export, tmp_path, capsys,
                                                            field, value, fragment, where):
    """A dtype, lead embedding or non-finite number in F.json or the crema_model_config
    metadata had been refused only when the model was built, naming no file, and
    "logit_scale_init": Infinity imported (exit 0) though pretrain refuses it."""
    import safetensors.numpy
    tensors, model = crema_export
    text = json.dumps({**model, field: value})
    path = tmp_path / "w.safetensors"
    if where == "sidecar":
        safetensors.numpy.save_file(tensors, str(path), metadata={"format": "pt"})
        (tmp_path / "w.json").write_text('{"layout": "crema", "model": ' + text + "}")
        named = f"{path}: its model config in {tmp_path / 'w.json'} has "
    else:
        safetensors.numpy.save_file(tensors, str(path), metadata={
            "format": "pt", "crema_model_config": text})
        named = f"{path}: its model config has "
    before = _hashes(tmp_path)
    _fails(import_torch, ["--format=crema", f"--out={tmp_path / 'out'}", str(path)], capsys,
           named + fragment)
    assert _hashes(tmp_path) == before and not (tmp_path / "out").exists()


def test_an_interrupted_import_is_named_as_one(tmp_path, capsys):
    """A Ctrl-C while Orbax saved had left DIR/checkpoints/0.orbax-checkpoint-tmp-..., and the
    rerun said the folder held "files this command did not write (checkpoints)". Nothing in
    the folder is deleted."""
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"not read: the output is checked first")
    out = tmp_path / "out"
    step = out / "checkpoints" / "0.orbax-checkpoint-tmp-1733480000123456"
    (step / "params").mkdir(parents=True)
    (step / "params" / "manifest.ocdbt").write_bytes(b"half")
    before = _hashes(tmp_path)
    _fails(import_torch, ["--format=crema", f"--out={out}", str(weights)], capsys,
           f"--out={out}: an unfinished import from an interrupted run (checkpoints/"
           f"{step.name}); remove the folder or choose another --out")
    (out / "checkpoints" / "notes.txt").write_text("mine")  # not only the import's own step
    _fails(import_torch, ["--format=crema", f"--out={out}", str(weights)], capsys,
           f"--out={out}: the folder holds files this command did not write (checkpoints)")
    (out / "checkpoints" / "notes.txt").unlink()
    assert _hashes(tmp_path) == before


def test_the_reasons_a_model_is_no_st_mem_one_are_told_apart(tmp_path, capsys):
    """export-torch --layout=stmem had run its reasons together ("...ST-MEM heads have 64 dims
    model.patch_norms=False: ...")."""
    from crema_jax import config as config_lib
    from crema_jax.models import params as params_lib
    from crema_jax.runtime import checkpoint

    config = config_lib.default_config()
    config.model.size, config.model.patch_norms = "tiny", False
    checkpoint.save_model_checkpoint(tmp_path / "ckpt", params_lib.init_params(config.model, 0),
                                     config)
    _fails(export_torch, [f"--checkpoint={tmp_path / 'ckpt'}", "--layout=stmem",
                          f"--out={tmp_path / 'w.pth'}"], capsys,
           "this model cannot be written as an ST-MEM checkpoint: model.head_dim=32: ST-MEM "
           "heads have 64 dims; model.patch_norms=False: ST-MEM's patch embedding")
    assert not (tmp_path / "w.pth").exists() and not (tmp_path / "w.json").exists()


def test_a_format_the_sidecar_contradicts_is_pointed_at_it(crema_export, tmp_path, capsys):
    """--format=stmem on a crema-layout file whose F.json says so had said only "cannot infer
    the model size: none of [...] is in the file"."""
    import safetensors.numpy
    tensors, model = crema_export
    path = tmp_path / "w.safetensors"
    safetensors.numpy.save_file(tensors, str(path), metadata={
        "format": "pt", "crema_model_config": json.dumps(model)})
    (tmp_path / "w.json").write_text(json.dumps({"layout": "crema", "model": model}))
    _fails(import_torch, ["--format=stmem", f"--out={tmp_path / 'out'}", str(path)], capsys,
           f"{path}: cannot infer the model size: none of [", f"is in the file; "
           f"{tmp_path / 'w.json'} says layout 'crema': use --format=crema")
    assert not (tmp_path / "out").exists()


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


@pytest.mark.parametrize("shape, message", [
    ((2, 15, 2500), "expected an array (N, 12, samples) in canonical lead order, or (N, 1, "
     "samples) of lead I, with N >= 1; got shape (2, 15, 2500)"),
    ((2, 12, 10), "ECGs of 10 samples at 250 Hz (0.04 s), expected at least"),
])
def test_an_arrays_shape_is_named_with_its_file(sit_checkpoint, tmp_path, capsys, shape,
                                                message):
    """They had said "error: expected an array ..." and "error: ECGs of 10 samples ...",
    naming no file."""
    x = tmp_path / "x.npy"
    np.save(x, np.zeros(shape, np.float32))
    _fails(embed, [f"--checkpoint={sit_checkpoint}", f"--input={x}",
                   f"--out={tmp_path / 'y.npy'}"], capsys, f"error: --input={x}: {message}")
    assert not (tmp_path / "y.npy").exists()


def test_an_ecg_with_no_finite_sample_is_not_counted_as_repaired(sit_checkpoint, tmp_path,
                                                                 capsys):
    """One all-NaN ECG of three, skipped, had been counted as "interpolated": "60005
    non-finite samples ... in 2 of 3 ECGs, interpolated" beside "skipped 1 unreadable
    records"."""
    x = np.random.default_rng(0).normal(size=(3, 12, 5000)).astype(np.float32)
    x[1] = np.nan
    x[2, 4, 10:15] = np.nan
    np.save(tmp_path / "x.npy", x)
    embed.COMMAND.run([f"--checkpoint={sit_checkpoint}", f"--input={tmp_path / 'x.npy'}",
                       f"--out={tmp_path / 'y.npy'}", "--fs=500"])
    printed = capsys.readouterr().out
    assert ("input: 5 non-finite samples (NaN/Inf) in 1 of 3 ECGs, interpolated (a lead with "
            "no finite sample left out); 1 of 3 ECGs hold no finite sample at all (nothing to "
            "repair)") in printed, printed
    assert "skipped 1 unreadable records" in printed, printed
    assert np.load(tmp_path / "y.npy").shape[0] == 2
