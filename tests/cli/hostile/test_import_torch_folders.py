"""import-torch of a hub folder export-torch --hub_folder wrote, then hand-edited or damaged: a
config.json whose data path the model cannot read is refused naming config.json and the field,
with nothing written; one whose "model" is not the weights' is passed over for the format's
preset, as FILE.json beside a weight file is. And a checkpoint whose saved data path has
patch_size=0 is one line in embed, not a ZeroDivisionError traceback."""
import json
import shutil

import pytest

from crema_jax import config as config_lib
from crema_jax.cli import embed, export_torch, import_torch
from crema_jax.models import params as params_lib
from crema_jax.runtime import checkpoint
from tests.cli.conftest import _fails
from tests.cli.hostile.helpers import _hashes


@pytest.fixture(scope="module")
def hub(sit_checkpoint, tmp_path_factory):
    """The tiny SiT (patch_size 75, num_patches 30, width 64) as a hub folder."""
    folder = tmp_path_factory.mktemp("hub") / "hub"
    export_torch.COMMAND.run([f"--checkpoint={sit_checkpoint}", f"--hub_folder={folder}"])
    return folder


def _edited(hub, tmp_path, edit):
    """A copy of the hub folder, its config.json's content changed by edit(info) in place."""
    folder = tmp_path / "edited"
    shutil.copytree(hub, folder)
    info = json.loads((folder / "config.json").read_text())
    edit(info)
    (folder / "config.json").write_text(json.dumps(info))
    return folder


@pytest.mark.parametrize("change, said", [
    ({"patch_size": 0}, "config.data.patch_size=0: expected the model's patch_size 75"),
    ({"patch_size": 50}, "config.data.patch_size=50: expected the model's patch_size 75"),
    ({"crop_samples": 7}, "config.data.crop_samples=7: expected 2250, the model's num_patches 30 "
                          "x patch_size 75"),
    ({"crop_samples": 4500}, "config.data.crop_samples=4500: expected 2250"),
])
def test_a_data_path_the_model_cannot_read_is_refused_at_import(hub, tmp_path, capsys, change,
                                                                said):
    """Each had imported with exit 0; embed then ended in a ZeroDivisionError (patch_size=0) or
    refused the checkpoint ("patches have 60 patches per lead")."""
    folder = _edited(hub, tmp_path, lambda info: info["config"]["data"].update(change))
    before = _hashes(tmp_path)
    _fails(import_torch, [str(folder), f"--out={tmp_path / 'out'}"], capsys,
           f"{folder / 'config.json'}: its data path (\"config\".\"data\") has {said}")
    assert _hashes(tmp_path) == before and not (tmp_path / "out").exists()


def test_embed_of_a_checkpoint_with_patch_size_0_is_one_line(tmp_path, capsys, cinc_sample_dir):
    config = config_lib.default_config()
    config.model.size, config.data.patch_size = "tiny", 0
    checkpoint.save_model_checkpoint(tmp_path / "ckpt", params_lib.init_params(config.model, 0),
                                     config)
    _fails(embed, [f"--checkpoint={tmp_path / 'ckpt'}", f"--input={cinc_sample_dir}",
                   f"--out={tmp_path / 'y.npy'}"], capsys,
           "data.patch_size=0 must be a whole number of samples >= 1")
    assert not (tmp_path / "y.npy").exists()


def test_a_config_json_of_another_model_is_passed_over_as_a_json_beside_a_file_is(
        hub, tmp_path, capsys):
    """A config.json whose "model" says width 128 beside 64-wide weights had been taken, its data
    path with it, while FILE.json of another model beside a weight file is passed over for the
    format's preset: both alike now, the printed line saying why."""
    def edit(info):
        info["model"]["width"] = 128
        info["config"]["data"]["target_fs"] = 500.0   # what taking it would give
    folder = _edited(hub, tmp_path, edit)
    capsys.readouterr()
    import_torch.COMMAND.run([str(folder), f"--out={tmp_path / 'out'}"])
    assert (f"(data path: the crema preset; {folder / 'config.json'} describes another model "
            "(width 128, the weights' 64): not these weights' file)") in capsys.readouterr().out
    assert config_lib.load_checkpoint_config(tmp_path / "out").data.target_fs == 250.0


def test_a_hub_folder_given_as_a_checkpoint_says_to_import_it_first(hub, tmp_path, capsys,
                                                                     cinc_sample_dir):
    """--checkpoint=HUB had said only "no complete checkpoint found"."""
    hint = (f"; {hub} is a hub folder of PyTorch weights (export-torch --hub_folder writes them): "
            f"run `crema-jax import-torch {hub} --out=DIR` first, then pass the checkpoint DIR")
    line = _fails(embed, [f"--checkpoint={hub}", f"--input={cinc_sample_dir}",
                          f"--out={tmp_path / 'y.npy'}"], capsys, hint)
    assert "no complete checkpoint found" in line and line.endswith(hint), line
    _fails(export_torch, [f"--checkpoint={hub}", f"--out={tmp_path / 'w.safetensors'}"], capsys,
           hint)
    (tmp_path / "other").mkdir()   # a folder with another program's config.json: no hint
    (tmp_path / "other" / "config.json").write_text('{"architectures": ["X"]}')
    line = _fails(embed, [f"--checkpoint={tmp_path / 'other'}", f"--input={cinc_sample_dir}",
                          f"--out={tmp_path / 'y.npy'}"], capsys, "no complete checkpoint found")
    assert "import-torch" not in line
