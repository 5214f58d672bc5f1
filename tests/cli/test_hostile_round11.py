"""Careless and hostile inputs, eleventh round: a pretraining workdir that holds a user's files
or is one of the run's inputs. Each is one line naming the folder, with nothing written."""
import shutil

import pytest

from crema_jax.cli import pretrain
from tests.cli.test_hostile import REPO, _fails, _hashes

DEMO = f"--config={REPO / 'configs' / 'demo.py'}"


def test_a_workdir_holding_a_users_files_is_refused(tmp_path, capsys):
    """A run had replaced a user's reconstruction.png and moved their metrics.jsonl into
    metrics.superseded.jsonl, exit 0."""
    workdir = tmp_path / "notes"
    workdir.mkdir()
    (workdir / "metrics.jsonl").write_text("my precious notes\n")
    (workdir / "reconstruction.png").write_text("my image")
    before = _hashes(workdir)
    _fails(pretrain, [DEMO, f"--workdir={workdir}", "--config.train.num_steps=2"], capsys,
           f"--workdir={workdir}: the folder holds files this command did not write "
           "(metrics.jsonl, reconstruction.png); choose a new or empty folder")
    assert _hashes(workdir) == before and sorted(p.name for p in workdir.iterdir()) == [
        "metrics.jsonl", "reconstruction.png"]


@pytest.mark.parametrize("field", ["root", "cache_dir"])
def test_a_workdir_that_is_or_lies_in_an_input_folder_is_refused(tmp_path, capsys, field,
                                                                 cinc_sample_dir):
    """The dataset root or the cache as --workdir had gained checkpoints/, metrics.jsonl,
    tensorboard/ and reconstruction.png, exit 0."""
    data = tmp_path / "data"
    shutil.copytree(cinc_sample_dir, data)
    before = _hashes(data)
    source = ([f"--config.data.root={data}"] if field == "root" else
              ["--config.data.root=", "--config.data.layout=", f"--config.data.cache_dir={data}"])
    _fails(pretrain, [DEMO, f"--workdir={data}", *source], capsys,
           f"--workdir={data}: that is an input of this command")
    _fails(pretrain, [DEMO, f"--workdir={data / 'run'}", *source], capsys,
           f"--workdir={data / 'run'}: inside the input {data}")
    assert _hashes(data) == before and not (data / "run").exists()
