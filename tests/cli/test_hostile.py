"""Careless and hostile use of every command: each case ends in one line on stderr that names the
file or field (exit 1 for data, 2 for flags), no traceback unless --verbose, and every input and
pre-existing file unchanged (hashes before and after), nothing written on error."""
import hashlib
import json
import os
import pathlib
import struct

import numpy as np
import pytest
import wfdb

from crema_jax import config as config_lib
from crema_jax.cli import embed, export_torch, import_torch, prepare, pretrain, probe
from crema_jax.data import synthetic
from crema_jax.data.reading import ecg as ecg_lib
from crema_jax.data.reading import wfdb_records
from crema_jax.models import params as params_lib
from tests.cli.conftest import _fails

REPO = pathlib.Path(__file__).resolve().parents[2]
TINY = str(REPO / "configs" / "crema_tiny.py")


def _hashes(*roots) -> dict:
    """sha256 of every file (and link target) under the roots."""
    out = {}
    for root in roots:
        root = pathlib.Path(root)
        paths = [root] if root.is_file() or root.is_symlink() else sorted(root.rglob("*"))
        for p in paths:
            if p.is_symlink():
                out[str(p)] = "link:" + os.readlink(p)
            elif p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
            elif p.is_dir():
                out[str(p)] = "dir"
    return out


# ----------------------------------------------------------------------------- outputs
def test_embed_refuses_its_input_a_folder_and_an_existing_file(sit_checkpoint, tmp_path, capsys):
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((2, 12, 2500), np.float32))
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    old = tmp_path / "old.npy"
    old.write_bytes(b"user data")
    before = _hashes(tmp_path, sit_checkpoint)
    ck = f"--checkpoint={sit_checkpoint}"
    _fails(embed, [ck, f"--input={x}", f"--out={x}"], capsys, "--out=", "an input")
    _fails(embed, [ck, f"--input={x}", f"--out={folder}"], capsys, "expected a file name")
    _fails(embed, [ck, f"--input={x}", f"--out={old}"], capsys, "exists", "--overwrite")
    assert _hashes(tmp_path, sit_checkpoint) == before
    assert not list(folder.glob(".*"))                     # no hidden file either


def test_prepare_refuses_a_folder_of_someone_elses_files(cinc_sample_dir, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "index.json").write_text('{"mine": true}')
    (out / "summary.json").write_text("user notes")
    before = _hashes(tmp_path)
    _fails(prepare, [f"--root={cinc_sample_dir}", f"--out={out}", "--workers=1"], capsys,
           f"--out={out}", "did not write")
    assert _hashes(tmp_path) == before


def test_prepare_never_follows_a_planted_link(cinc_sample_dir, tmp_path, capsys):
    """Links planted in an interrupted cache at the old fixed temporary names (NAME.tmp), aimed
    at a file outside --out: the resumed run writes through unique, exclusively created
    temporaries, and the outside file stays as it was."""
    outside = tmp_path / "precious.txt"
    outside.write_text("do not touch")
    out = tmp_path / "cache"
    common = [f"--root={cinc_sample_dir}", f"--out={out}", "--workers=1",
              "--records_per_shard=16"]
    assert prepare.COMMAND.run([*common, "--stop_after_shards=1"]) == 3
    names = ["index.json.tmp", "summary.json.tmp"] + [
        f"shard-{i:05d}-of-00004.{ext}.tmp" for i in range(4) for ext in ("arrayrecord", "json")]
    for name in names:
        if not (out / name).exists():
            (out / name).symlink_to(outside)
    before = _hashes(outside)
    assert prepare.COMMAND.run(common) == 0
    assert _hashes(outside) == before
    assert (out / "index.json").is_file() and not (out / "index.json").is_symlink()
    assert json.loads((out / "summary.json").read_text())["records_written"] == 50


def test_export_and_probe_refuse_to_write_into_their_inputs(sit_checkpoint, tmp_path, capsys,
                                                            cinc_sample_dir):
    before = _hashes(sit_checkpoint)
    _fails(export_torch, [f"--checkpoint={sit_checkpoint}",
                          f"--out={sit_checkpoint / 'model.safetensors'}"], capsys, "an input")
    _fails(probe, [f"--checkpoint={sit_checkpoint}", f"--root={cinc_sample_dir}",
                   f"--workdir={sit_checkpoint}"], capsys, "--workdir=", "input")
    assert _hashes(sit_checkpoint) == before


def test_import_torch_refuses_a_used_folder(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.md").write_text("mine")
    before = _hashes(tmp_path)
    _fails(import_torch, ["--format=crema", f"--out={out}", str(tmp_path / "w.safetensors")],
           capsys, f"--out={out}")
    assert _hashes(tmp_path) == before


# ----------------------------------------------------------------------------- inputs
def test_a_signal_file_outside_the_records_folder_is_a_skip(tmp_path, capsys, sit_checkpoint):
    secret = tmp_path / "secret.dat"
    secret.write_bytes(b"\x00\x01" * 30000)
    data = tmp_path / "data" / "deep"
    synthetic.write_synthetic_wfdb(data, 1, fs=500.0, seconds=10.0)
    header = (data / "SYN00000.hea").read_text().replace("SYN00000.dat", "../../secret.dat")
    (data / "EVIL.hea").write_text(header.replace("SYN00000", "EVIL", 1))
    # A record with no canonical lead (vectorcardiogram leads only): a skip too, not an abort.
    wfdb.wrsamp("VCG", fs=500.0, units=["mV"] * 3, sig_name=["vx", "vy", "vz"],
                p_signal=np.random.default_rng(1).normal(size=(5000, 3)) * 0.1, fmt=["16"] * 3,
                adc_gain=[1000.0] * 3, baseline=[0] * 3, write_dir=str(data))
    with pytest.raises(ecg_lib.RecordError) as err:
        wfdb_records.read_record(data / "EVIL")
    assert err.value.reason == "unsafe_signal_path" and "outside the record's folder" in str(
        err.value)
    before = _hashes(tmp_path / "data", secret)
    out = tmp_path / "f.npy"
    embed.COMMAND.run([f"--checkpoint={sit_checkpoint}", f"--input={data}", f"--out={out}"])
    printed = capsys.readouterr().out
    assert "skipped 2 unreadable records" in printed
    assert np.load(out).shape[0] == 1 and (tmp_path / "f.records.txt").read_text().split() == [
        "SYN00000"]
    assert _hashes(tmp_path / "data", secret) == before


def test_nan_and_inf_arrays_are_counted_repaired_and_said(sit_checkpoint, tmp_path, capsys):
    x = np.random.default_rng(0).normal(size=(3, 12, 2500)).astype(np.float32)
    x[0, 2, 100:110] = np.nan
    x[1, 5, 7] = np.inf
    np.save(tmp_path / "x.npy", x)
    before = _hashes(tmp_path / "x.npy")
    embed.COMMAND.run([f"--checkpoint={sit_checkpoint}", f"--input={tmp_path / 'x.npy'}",
                       f"--out={tmp_path / 'y.npy'}"])
    printed = capsys.readouterr().out
    assert "11 non-finite samples (NaN/Inf) in 2 of 3 ECGs, interpolated" in printed
    assert np.isfinite(np.load(tmp_path / "y.npy")).all()
    assert _hashes(tmp_path / "x.npy") == before
    _fails(embed, [f"--checkpoint={sit_checkpoint}", f"--input={tmp_path / 'x.npy'}",
                   f"--out={tmp_path / 'z.npy'}", "--raw"], capsys, "NaN/Inf")
    assert not (tmp_path / "z.npy").exists()


def test_a_text_file_named_npy_and_a_bad_rate(sit_checkpoint, tmp_path, capsys):
    (tmp_path / "x.npy").write_text("this is not an array\n")
    _fails(embed, [f"--checkpoint={sit_checkpoint}", f"--input={tmp_path / 'x.npy'}",
                   f"--out={tmp_path / 'y.npy'}"], capsys, str(tmp_path / "x.npy"))
    np.save(tmp_path / "ok.npy", np.zeros((1, 12, 2500), np.float32))
    _fails(embed, [f"--checkpoint={sit_checkpoint}", f"--input={tmp_path / 'ok.npy'}",
                   f"--out={tmp_path / 'y.npy'}", "--fs=abc"], capsys,
           "--fs=abc: a sampling rate in Hz", code=2)
    assert not (tmp_path / "y.npy").exists()


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


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize("override, fragment, code", [
    ("--config.model.nonexistent=1", "config.model has no field 'nonexistent'", 2),
    ("--config.model.dpeth=2", "did you mean config.model.depth", 2),
    ("--config.checkpoint.every_steps=0", "config.checkpoint.every_steps=0", 2),
    ("--config.data.mask.ratio=0.0", "config.data.mask.ratio=0.0", 2),
    ("--config.data.crop_samples=2000", "data.crop_samples=2000", 2),
])
def test_impossible_config_values_are_refused_before_any_compile(tmp_path, capsys, override,
                                                                 fragment, code):
    workdir = tmp_path / "run"
    _fails(pretrain, [f"--config={TINY}", f"--workdir={workdir}", override,
                      "--config.data.synthetic_records=16"], capsys, fragment, code=code)
    assert not workdir.exists()


def test_a_file_as_workdir(tmp_path, capsys):
    as_file = tmp_path / "file"
    as_file.write_text("not a folder")
    _fails(pretrain, [f"--config={TINY}", f"--workdir={as_file}",
                      "--config.data.synthetic_records=16"], capsys, str(as_file))
    assert as_file.read_text() == "not a folder"


def test_a_read_only_workdir(tmp_path, capsys):
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        # root writes through permission bits; /proc refuses new folders to every user.
        workdir = locked / "run" if not os.access(locked, os.W_OK) else pathlib.Path(
            "/proc/crema_jax_run")
        _fails(pretrain, [f"--config={TINY}", f"--workdir={workdir}",
                          "--config.data.synthetic_records=16"], capsys, str(workdir))
        assert not list(locked.iterdir()) and not workdir.exists()
    finally:
        locked.chmod(0o700)


def test_verbose_adds_the_traceback(tmp_path, capsys):
    with pytest.raises(SystemExit):
        embed.COMMAND.run(["--checkpoint=/nonexistent", f"--input={tmp_path / 'x.npy'}",
                           f"--out={tmp_path / 'y.npy'}", "--verbose"])
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith(
        "crema-jax embed: error: ")
