"""import-torch and the weight files it reads: an --out in use or left by an interrupted import, a
hub folder's config.json nested too deeply or holding a huge number; safetensors headers that
are malformed or crafted, files that are no weights or no regular file, a truncated file,
tensors of NaN or integers; a model config (metadata or F.json sidecar) that contradicts the
tensors, holds a value a run would refuse, or says another layout than --format. Each is one
line naming the file, with nothing written."""
import json
import os
import pickle
import struct

import numpy as np
import pytest

from crema_jax import config as config_lib
from crema_jax.cli import export_torch, import_torch
from crema_jax.export import safe_load
from crema_jax.models import params as params_lib
from tests.cli.conftest import _fails
from tests.cli.hostile.helpers import _hashes


def test_import_torch_refuses_a_used_folder(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.md").write_text("mine")
    before = _hashes(tmp_path)
    _fails(import_torch, ["--format=crema", f"--out={out}", str(tmp_path / "w.safetensors")],
           capsys, f"--out={out}")
    assert _hashes(tmp_path) == before


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


def test_a_second_import_into_its_own_output_is_told_so(sit_checkpoint, tmp_path, capsys):
    """import-torch --out=DIR again into the folder its first run wrote had said the folder
    "holds files this command did not write (checkpoints)"."""
    weights = tmp_path / "w.safetensors"
    export_torch.COMMAND.run([f"--checkpoint={sit_checkpoint}", f"--out={weights}"])
    out = tmp_path / "out"
    import_torch.COMMAND.run(["--format=crema", f"--out={out}", str(weights)])
    assert os.listdir(out / "checkpoints") == ["0"]
    before = _hashes(tmp_path)
    _fails(import_torch, ["--format=crema", f"--out={out}", str(weights)], capsys,
           f"--out={out}: already holds an import (checkpoints/0); remove the folder to import "
           "again, or choose another --out")
    assert _hashes(tmp_path) == before


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


def _safetensors(path, header, data=b""):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@pytest.mark.parametrize("name, header, fragment", [
    ("deep", b"[" * 100000 + b"]" * 100000, "unreadable safetensors header"),
    ("list", [1, 2, 3], "is a JSON list"),
    ("string_entry", {"w": "abc"}, "w: expected an object"),
    ("negative_shape", {"w": {"dtype": "F32", "shape": [-1, 4], "data_offsets": [0, 16]}},
     "non-negative"),
    ("list_dtype", {"w": {"dtype": ["F32"], "shape": [4], "data_offsets": [0, 16]}},
     "dtype must be a string"),
    ("float_offsets", {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0.0, 16.5]}},
     "data_offsets must be two integers"),
    ("list_metadata", {"__metadata__": ["a"], "w": {"dtype": "F32", "shape": [4],
                                                    "data_offsets": [0, 16]}},
     "__metadata__ must map strings"),
])
def test_malformed_safetensors_headers(tmp_path, capsys, name, header, fragment):
    path = _safetensors(tmp_path / f"{name}.safetensors", header, b"\0" * 16)
    before = _hashes(tmp_path)
    _fails(import_torch, ["--format=crema", f"--out={tmp_path / 'out'}", str(path)], capsys,
           str(path), fragment)
    assert _hashes(tmp_path) == before and not (tmp_path / "out").exists()


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


def test_a_weights_path_that_is_no_regular_file_is_named_as_such(tmp_path):
    """A FIFO or a folder was "no such file" (and a FIFO must never be opened: it blocks)."""
    os.mkfifo(tmp_path / "pipe.pth")
    (tmp_path / "folder.safetensors").mkdir()
    for name, what in (("pipe.pth", "a FIFO, not a regular file"),
                       ("folder.safetensors", "a folder"), ("none.pth", "no such file")):
        with pytest.raises(safe_load.CheckpointFileError) as raised:
            safe_load.read_weight_file(str(tmp_path / name))
        assert str(raised.value) == (f"{tmp_path / name}: {what}; expected a .safetensors or "
                                     "torch.save file")


def _crema_file(tmp_path, name: str, change=None, meta_change=None):
    """A tiny SiT exported in the crema layout, its tensors or saved model config changed."""
    import safetensors.numpy

    from crema_jax import config as config_lib
    from crema_jax.export import export_torch as export_lib
    from crema_jax.models import params as params_lib

    cfg = config_lib.default_config()
    cfg.model.size = "tiny"
    params = params_lib.init_params(cfg.model, 0)
    sd = export_lib.build_state_dict(params, cfg.model, layout="crema", include_decoder=False)
    meta = export_lib.resolved_model_config(cfg.model)
    sd = change(sd) if change else sd
    meta.update(meta_change or {})
    path = tmp_path / f"{name}.safetensors"
    safetensors.numpy.save_file(sd, str(path), metadata={"format": "pt",
                                                         "crema_model_config": json.dumps(meta)})
    return path


def _import_fails(tmp_path, capsys, path) -> str:
    from crema_jax.cli import import_torch
    from tests.cli.conftest import assert_one_error_line

    with pytest.raises(SystemExit) as exit_info:
        import_torch.COMMAND.run(["--format=crema", f"--out={tmp_path / 'out'}", str(path)])
    captured = capsys.readouterr()
    assert exit_info.value.code == 1, captured.err
    assert not (tmp_path / "out").exists()
    return assert_one_error_line("import-torch", captured.out, captured.err, str(path))


def test_a_truncated_weight_file_is_one_short_line(tmp_path, capsys):
    """Every tensor past the cut was listed: one 'line' of several KB."""
    path = _crema_file(tmp_path, "whole")
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:len(data) // 2])
    line = _import_fails(tmp_path, capsys, cut)
    header = json.loads(data[8:8 + int.from_bytes(data[:8], "little")])
    beyond = sum(1 for k, v in header.items() if k != "__metadata__"
                 and v["data_offsets"][1] > len(data) // 2 - 8 - int.from_bytes(data[:8], "little"))
    assert "not a complete safetensors file (truncated?): " in line
    assert f"; and {beyond - 3} more tensors" in line and len(line) < 600, line
    assert line.count(" lie beyond the ") == 3 and line.count(" data bytes; ") == 3, line


def test_weights_that_are_nan_or_integers_are_refused_naming_each_tensor(tmp_path, capsys):
    """A NaN file imported with exit 0; embed gave NaN features and compare a verdict."""
    def poison(sd):
        sd = dict(sd)
        key = sorted(sd)[3]
        sd[key] = sd[key].copy()
        sd[key].flat[[0, 5]] = [np.nan, np.inf]
        return sd

    line = _import_fails(tmp_path, capsys, _crema_file(tmp_path, "nan", poison))
    assert "holds unusable weights: not finite (1): " in line and "2 NaN or inf values" in line
    ints = _crema_file(tmp_path, "ints", lambda sd: {k: np.round(v * 100).astype(np.int32)
                                                    for k, v in sd.items()})
    line = _import_fails(tmp_path, capsys, ints)
    assert "not floating-point (" in line and ": int32" in line


@pytest.mark.parametrize("field, value, said", [
    ("num_heads", -1, "its model config has config.model.num_heads=-1: expected an integer >= 0"),
    ("patch_size", 0, "its model config has config.model.patch_size=0: expected an integer >= 1"),
])
def test_a_weight_files_model_config_is_checked_before_a_model_is_built(tmp_path, capsys, field,
                                                                        value, said):
    """num_heads=-1 ended in a 98-line reshape traceback, patch_size=0 in a ZeroDivisionError."""
    line = _import_fails(tmp_path, capsys, _crema_file(tmp_path, field, meta_change={
        field: value}))
    assert line.endswith(said), line


def test_crema_metadata_may_only_agree_with_the_tensors(tmp_path, capsys):
    """An encoder-only file whose metadata claims a 2048-wide decoder imports as a bare encoder
    (nothing built from the metadata's word alone); metadata that contradicts the tensors is an
    error naming them."""
    import safetensors.numpy

    from crema_jax.export import export_torch as export_lib

    cfg = config_lib.default_config()
    cfg.model.size = "tiny"
    params = params_lib.init_params(cfg.model, 0)
    sd = export_lib.build_state_dict(params, cfg.model, layout="crema", include_decoder=False)
    meta = export_lib.resolved_model_config(cfg.model)
    meta["decoder_width"] = 2048
    path = tmp_path / "enc.safetensors"
    safetensors.numpy.save_file(sd, str(path), metadata={"format": "pt",
                                                         "crema_model_config": json.dumps(meta)})
    import_torch.COMMAND.run(["--format=crema", f"--out={tmp_path / 'ok'}", str(path)])
    size = sum(p.stat().st_size for p in (tmp_path / "ok").rglob("*") if p.is_file())
    assert size < 4 * path.stat().st_size, size        # no decoder the file never held
    assert config_lib.load_checkpoint_config(tmp_path / "ok").model.name == "sit_encoder"
    meta["width"], meta["decoder_width"] = 128, 32
    bad = tmp_path / "bad.safetensors"
    safetensors.numpy.save_file(sd, str(bad), metadata={"format": "pt",
                                                        "crema_model_config": json.dumps(meta)})
    capsys.readouterr()
    _fails(import_torch, ["--format=crema", f"--out={tmp_path / 'no'}", str(bad)], capsys,
           str(bad), "mis-shaped")
    assert not (tmp_path / "no").exists()


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


def _run_with_own_data_path(folder):
    """A tiny SiT checkpoint whose data path is not the crema preset's (500 Hz, a 20 Hz
    low-pass, a notch, six leads, probability averaging): the config it was saved with."""
    config = config_lib.default_config()
    config.model.size, config.model.width, config.model.head_dim = "tiny", 128, 64  # ST-MEM's
    config.data.target_fs, config.data.leads = 500.0, ("I", "II", "III", "aVR", "aVL", "aVF")
    config.data.preprocess.high_hz, config.data.preprocess.notch_hz = 20.0, 50.0
    config.data.eval_crop_average, config.data.resample = "probability", "fft"
    from crema_jax.runtime import checkpoint
    checkpoint.save_model_checkpoint(folder, params_lib.init_params(config.model, 0), config)
    return config


@pytest.mark.parametrize("name", ["w.safetensors", "w.pth"])
def test_a_file_export_torch_wrote_imports_with_its_data_path(tmp_path, capsys, name):
    """export-torch --out=F then import-torch F had come back with the format's preset (250 Hz,
    40 Hz low-pass), exit 0, and embed's features then differed from the run's; a hub folder
    kept its data path. F.json holds it: the import restores it, and says so."""
    original = _run_with_own_data_path(tmp_path / "run")
    weights = tmp_path / name
    fmt = "crema" if name.endswith(".safetensors") else "stmem"
    export_torch.COMMAND.run([f"--checkpoint={tmp_path / 'run'}", f"--out={weights}",
                              f"--layout={fmt}"])
    capsys.readouterr()
    import_torch.COMMAND.run([f"--format={fmt}", str(weights), f"--out={tmp_path / 'back'}"])
    assert f"(data path from {tmp_path / 'w.json'})" in capsys.readouterr().out
    back = config_lib.load_checkpoint_config(tmp_path / "back").data
    assert (back.target_fs, back.preprocess.high_hz, back.preprocess.notch_hz) == (500.0, 20.0,
                                                                                   50.0)
    assert back.leads == ("I", "II", "III", "aVR", "aVL", "aVF")
    want = original.data.to_dict()
    assert {k: v for k, v in back.to_dict().items() if k != "batch_size"} == \
        {k: v for k, v in want.items() if k != "batch_size"}


def test_a_json_written_for_other_weights_is_passed_over_for_the_preset(tmp_path, capsys):
    """w.json left by an export of ST-MEM-layout weights beside ECGFounder weights (or beside
    ST-MEM weights of another width) had been taken: the Net1D ran on ST-MEM's 250 Hz windowed
    data path, exit 0. Its layout and architecture must be the weights'; else the preset, and the
    printed line says why."""
    import torch
    from tests.references.ecgfounder_torch import Net1DRef
    _run_with_own_data_path(tmp_path / "run")
    export_torch.COMMAND.run([f"--checkpoint={tmp_path / 'run'}", f"--out={tmp_path / 'w.pth'}",
                              "--layout=stmem"])
    wider = config_lib.default_config()
    wider.model.size, wider.model.width, wider.model.head_dim = "tiny", 192, 64
    from crema_jax.runtime import checkpoint
    checkpoint.save_model_checkpoint(tmp_path / "wider", params_lib.init_params(wider.model, 0),
                                     wider)
    export_torch.COMMAND.run([f"--checkpoint={tmp_path / 'wider'}",
                              f"--out={tmp_path / 'wider.pth'}", "--layout=stmem"])
    side = tmp_path / "w.json"
    os.replace(tmp_path / "wider.pth", tmp_path / "w.pth")
    capsys.readouterr()
    import_torch.COMMAND.run(["--format=stmem", str(tmp_path / "w.pth"),
                              f"--out={tmp_path / 'a'}"])
    assert (f"(data path: the stmem preset; {side} describes another model (width 128, the "
            "weights' 192): not these weights' file)") in capsys.readouterr().out
    assert config_lib.load_checkpoint_config(tmp_path / "a").data.target_fs == 250.0
    net1d = Net1DRef(in_channels=12, filters=(16, 32), blocks=(1, 2))
    torch.save({"state_dict": net1d.state_dict()}, tmp_path / "w.pth")
    import_torch.COMMAND.run(["--format=ecgfounder", str(tmp_path / "w.pth"),
                              f"--out={tmp_path / 'b'}"])
    assert (f"(data path: the ecgfounder preset; {side} was written for stmem-layout weights, "
            "not --format=ecgfounder's: not these weights' file)") in capsys.readouterr().out
    back = config_lib.load_checkpoint_config(tmp_path / "b").data
    assert (back.target_fs, back.crop_samples) == (500.0, 5000)


def test_a_file_without_export_torchs_config_takes_the_formats_preset_and_says_so(
        crema_export, tmp_path, capsys):
    """A weight file with no F.json, or an F.json of the model alone (no "config"), gets its
    format's preset, named in the printed line; an F.json whose "config" holds no data section,
    or one that cannot run, is refused naming F.json."""
    import safetensors.numpy
    tensors, model = crema_export
    path = tmp_path / "w.safetensors"
    safetensors.numpy.save_file(tensors, str(path), metadata={
        "format": "pt", "crema_model_config": json.dumps(model)})
    side = tmp_path / "w.json"
    for content in (None, {"layout": "crema", "model": model}):
        if content is not None:
            side.write_text(json.dumps(content))
        out = tmp_path / f"out{content is None}"
        capsys.readouterr()
        import_torch.COMMAND.run(["--format=crema", str(path), f"--out={out}"])
        assert ("(data path: the crema preset)" if content is None else
                f"(data path: the crema preset; {side} holds the model config only (no "
                "\"config\"))") in capsys.readouterr().out
        assert config_lib.load_checkpoint_config(out).data.target_fs == 250.0
    for config, said in (({"model": model}, f"{side}: \"config\".\"data\" (the data path) is "
                          "missing or not an object"),
                         ({"data": {"target_fs": -5.0}}, f"{side}: its data path (\"config\"."
                          "\"data\") has config.data.target_fs=-5.0: expected a rate in Hz")):
        side.write_text(json.dumps({"layout": "crema", "model": model, "config": config}))
        _fails(import_torch, ["--format=crema", str(path), f"--out={tmp_path / 'no'}"], capsys,
               said)
        assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("text, why", [
    ("{not json", "not valid JSON (Expecting property name enclosed in double quotes"),
    (json.dumps({"architectures": ["X"], "config": {"hidden_size": 8}}),
     "is not export-torch's (no \"layout\" of crema|stmem|ecgfounder with a \"model\" object)"),
    (json.dumps({"layout": "crema", "config": {"hidden_size": 8}}), "is not export-torch's"),
    (json.dumps({"layout": "crema", "model": {}, "config": {}}) + " " * 100,
     "is over 100 bytes: not export-torch's"),
])
def test_a_json_beside_the_weights_that_is_not_export_torchs_takes_the_preset(
        crema_export, tmp_path, capsys, monkeypatch, text, why):
    """F.json beside a weight file that is not JSON, another program's config.json-like file
    (no export-torch "layout" and "model"), or larger than the cap the format hint also keeps,
    had stopped the import; it is passed over: the preset, and the printed line says why."""
    import safetensors.numpy
    from crema_jax.export import export_torch as export_lib
    tensors, model = crema_export
    path = tmp_path / "w.safetensors"
    safetensors.numpy.save_file(tensors, str(path), metadata={
        "format": "pt", "crema_model_config": json.dumps(model)})
    (tmp_path / "w.json").write_text(text)
    if "over" in why:
        monkeypatch.setattr(export_lib, "SIDECAR_MAX_BYTES", 100)
    capsys.readouterr()
    import_torch.COMMAND.run(["--format=crema", str(path), f"--out={tmp_path / 'out'}"])
    line = capsys.readouterr().out
    assert f"(data path: the crema preset; {tmp_path / 'w.json'}" in line and why in line
    assert config_lib.load_checkpoint_config(tmp_path / "out").data.target_fs == 250.0
