"""export-torch: an --out inside its own checkpoint (and probe's --workdir there, alike), a full
disk between the weights and their config (the old pair stays whole), --include_decoder of a
model without a decoder, a model that cannot be written as ST-MEM's (each reason told apart).
Each is one line naming the flag or file, with the user's files as they were."""
import pytest

from crema_jax.cli import export_torch, probe
from tests.cli.conftest import _fails
from tests.cli.hostile.helpers import _full_disk_for, _hashes


def test_export_and_probe_refuse_to_write_into_their_inputs(sit_checkpoint, tmp_path, capsys,
                                                            cinc_sample_dir):
    before = _hashes(sit_checkpoint)
    _fails(export_torch, [f"--checkpoint={sit_checkpoint}",
                          f"--out={sit_checkpoint / 'model.safetensors'}"], capsys, "an input")
    _fails(probe, [f"--checkpoint={sit_checkpoint}", f"--root={cinc_sample_dir}",
                   f"--workdir={sit_checkpoint}"], capsys, "--workdir=", "input")
    assert _hashes(sit_checkpoint) == before


def test_a_pth_of_the_crema_layout_is_refused_naming_out(sit_checkpoint, tmp_path, capsys):
    out = tmp_path / "a.pth"
    _fails(export_torch, [f"--checkpoint={sit_checkpoint}", f"--out={out}"], capsys,
           f"--out={out}: the crema layout is written as .safetensors only; expected "
           "FILE.safetensors")
    assert list(tmp_path.iterdir()) == []


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


def test_include_decoder_for_a_family_without_one_is_refused():
    """export-torch --include_decoder of a Net1D checkpoint was ignored without a word."""
    from crema_jax.export import export_torch as export_lib
    from crema_jax.models.net1d import default_net1d_config

    with pytest.raises(export_lib.ExportError, match="--include_decoder: a Net1D model has no "
                                                     "decoder"):
        export_lib.build_state_dict({}, default_net1d_config(), layout="ecgfounder",
                                    include_decoder=True)


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


def test_exports_leave_out_where_this_machine_keeps_its_data(tmp_path, capsys):
    """F.json and a hub folder's config.json had carried the full config: the dataset's folder,
    the cache, the label file of the layout options, the run it started from: where a hospital
    keeps its records. Those are blank; the data path a reader needs stays."""
    import json

    from crema_jax import config as config_lib
    from crema_jax.models import params as params_lib
    from crema_jax.runtime import checkpoint

    config = config_lib.default_config()
    config.model.size, config.data.target_fs = "tiny", 500.0
    config.data.root, config.data.cache_dir = "/hospital/ecg_records", "/hospital/cache"
    config.data.skip_log_dir, config.train.init_from = "/hospital/skips", "/hospital/runs/a"
    config.train.compilation_cache_dir = "/hospital/xla"
    config.data.layout_options = {"label_map": "/hospital/labels.csv"}
    config.evals.fewshot_probe.root = "/hospital/probe"
    checkpoint.save_model_checkpoint(tmp_path / "ckpt", params_lib.init_params(config.model, 0),
                                     config)
    export_torch.COMMAND.run([f"--checkpoint={tmp_path / 'ckpt'}",
                              f"--out={tmp_path / 'w.safetensors'}"])
    export_torch.COMMAND.run([f"--checkpoint={tmp_path / 'ckpt'}",
                              f"--hub_folder={tmp_path / 'hub'}"])
    for path in (tmp_path / "w.json", tmp_path / "hub" / "config.json",
                 tmp_path / "hub" / "README.md"):
        assert "/hospital" not in path.read_text(), path
    for path in (tmp_path / "w.json", tmp_path / "hub" / "config.json"):
        full = json.loads(path.read_text())["config"]
        assert (full["data"]["root"], full["data"]["cache_dir"], full["data"]["skip_log_dir"],
                full["data"]["layout_options"], full["train"]["init_from"],
                full["train"]["compilation_cache_dir"], full["evals"]["fewshot_probe"]["root"]
                ) == ("", "", "", {}, "", "", "")
        assert full["data"]["target_fs"] == 500.0 and full["model"]["size"] == "tiny"


def test_an_imported_files_folder_is_not_exported(tmp_path):
    """A hub folder of imported weights had named the folder the file was imported from."""
    import json

    import torch

    from crema_jax.cli import import_torch
    from tests.references.ecgfounder_torch import Net1DRef

    (tmp_path / "hospital").mkdir()
    weights = tmp_path / "hospital" / "net1d.pth"
    torch.save({"state_dict": Net1DRef(in_channels=12, filters=(16, 32),
                                       blocks=(1, 2)).state_dict()}, weights)
    import_torch.COMMAND.run(["--format=ecgfounder", str(weights), f"--out={tmp_path / 'ckpt'}"])
    export_torch.COMMAND.run([f"--checkpoint={tmp_path / 'ckpt'}",
                              f"--hub_folder={tmp_path / 'hub'}"])
    info = json.loads((tmp_path / "hub" / "config.json").read_text())
    assert info["pretraining"]["imported_from"]["path"] == "net1d.pth"
    for name in ("config.json", "README.md"):
        assert str(tmp_path / "hospital") not in (tmp_path / "hub" / name).read_text()
