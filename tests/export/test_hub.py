"""Weights by hub id (a local hub cache in huggingface_hub's layout, offline) and the folder
`export-torch --hub_folder` writes, read back by `import-torch` with no further flag."""
import hashlib
import json
import os
import pathlib
import subprocess
import sys
import types

import huggingface_hub
import huggingface_hub.constants
import huggingface_hub.errors
import numpy as np
import pytest
import torch
from flax import nnx

from crema_jax import config as config_lib
from crema_jax.cli import export_torch as export_cli
from crema_jax.cli import import_torch as import_cli
from crema_jax.data import presets
from crema_jax.export import hub, import_torch, safe_load
from crema_jax.inference import backbones, embed
from crema_jax.models import build_model
from crema_jax.runtime import checkpoint as ckpt_lib
from crema_jax.runtime import trees
from tests.references.ecgfounder_torch import Net1DRef

REPO = pathlib.Path(__file__).resolve().parents[2]
LABELS = REPO / "crema_jax" / "inference" / "ecgfounder_labels.txt"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
FILE = "12_lead_ECGFounder.pth"


def cache_file(cache: pathlib.Path, repo_id: str, filename: str, data: bytes,
               commit: str = COMMIT) -> None:
    """`filename` of `repo_id` at `commit` (branch main) in huggingface_hub's cache layout:
    the content in blobs/, refs/main naming the commit, snapshots/<commit>/ linking to it."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    link = repo / "snapshots" / commit / filename
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(blob, link.parent))


def run_cli(*args, cache):
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1",
           "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "crema_jax.main", *args], capture_output=True,
                          text=True, timeout=300, env=env, cwd=str(REPO))


@pytest.fixture
def tiny_ecgfounder(tmp_path):
    """An ECGFounder-layout .pth of a tiny Net1D (two stages, 150 outputs) and its bytes."""
    torch.manual_seed(0)
    ref = Net1DRef(in_channels=12, filters=(16, 32), blocks=(1, 2)).eval()
    path = tmp_path / FILE
    torch.save({"state_dict": ref.state_dict(), "epoch": 3}, path)
    return path, ref


def flat_params(path):
    params, _, _ = ckpt_lib.load_model_checkpoint(path)
    return trees.flatten(params)


def test_import_by_hub_id_equals_the_local_import_and_records_the_commit(tmp_path,
                                                                         tiny_ecgfounder):
    path, ref = tiny_ecgfounder
    cache = tmp_path / "hub"
    cache_file(cache, "acme/ecgfounder-tiny", FILE, path.read_bytes())
    # The hub's answer that the repository has no FILE.json, as the cache keeps it.
    no_json = cache / "models--acme--ecgfounder-tiny" / ".no_exist" / COMMIT / SIDE
    no_json.parent.mkdir(parents=True)
    no_json.touch()
    proc = run_cli("import-torch", "--format=ecgfounder", f"hf://acme/ecgfounder-tiny/{FILE}",
                   f"--out={tmp_path / 'by_id'}", cache=cache)
    assert proc.returncode == 0, proc.stderr
    import_cli.COMMAND.run(["--format=ecgfounder", str(path), f"--out={tmp_path / 'local'}"])

    by_id, local = flat_params(tmp_path / "by_id"), flat_params(tmp_path / "local")
    assert by_id.keys() == local.keys()
    assert all(np.array_equal(by_id[k], local[k]) for k in local)
    # The weights are the file's (PyTorch (O, I, K) kernels -> JAX (K, I, O)).
    want = ref.state_dict()["first_conv.conv.weight"].numpy().transpose(2, 1, 0)
    assert np.array_equal(by_id["first_conv/kernel"], want)
    source = ckpt_lib.load_saved_config(tmp_path / "by_id")["source"]
    assert source == {"uri": f"hf://acme/ecgfounder-tiny/{FILE}", "repo_id":
                      "acme/ecgfounder-tiny", "revision": "main", "commit": COMMIT,
                      "file": FILE, "format": "ecgfounder"}
    saved_local = ckpt_lib.load_saved_config(tmp_path / "local")
    assert saved_local["source"]["path"] == str(path)
    assert config_lib.load_checkpoint_config(tmp_path / "by_id") == \
        config_lib.load_checkpoint_config(tmp_path / "local")


@pytest.mark.parametrize("hub_id, expected", [
    ("hf://acme/not-cached/weights.pth", "hf://acme/not-cached/weights.pth: not in the hub cache"),
    (f"hf://acme/ecgfounder-tiny@v2/{FILE}", f"hf://acme/ecgfounder-tiny@v2/{FILE}: not in the "
     "hub cache"),
])
def test_an_id_that_is_not_cached_is_one_line_and_exit_non_zero(tmp_path, hub_id, expected):
    cache = tmp_path / "hub"
    cache_file(cache, "acme/ecgfounder-tiny", FILE, b"not fetched")
    proc = run_cli("import-torch", "--format=ecgfounder", hub_id, f"--out={tmp_path / 'out'}",
                   cache=cache)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"crema-jax import-torch: error: {expected}")
    assert "HF_HUB_OFFLINE" in lines[0] and str(cache) in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("spec", ["hf://acme", "hf://acme/", "hf://acme/repo@/x.pth",
                                  "acme/repo"])
def test_a_malformed_hub_id_is_refused(spec):
    with pytest.raises(hub.HubError, match="not a hub id"):
        hub.parse(spec)


def test_hub_ids_parse_into_repository_revision_and_file():
    assert hub.parse("hf://o/r@abc/sub/w.pth") == hub.HubRef("o/r", "abc", "sub/w.pth")
    assert hub.parse("hf://o/r") == hub.HubRef("o/r", None, None)


@pytest.mark.parametrize("error, expected", [
    ("RepositoryNotFoundError", "no repository o/r on the hub"),
    ("RevisionNotFoundError", "o/r has no revision 'v9'"),
    ("RemoteEntryNotFoundError", "o/r has no file 'w.pth' at revision v9"),
    ("GatedRepoError", "o/r is gated"),
])
def test_hub_failures_become_one_line(monkeypatch, error, expected):
    # What the hub's HTTP errors read of the response: its headers and request.
    response = types.SimpleNamespace(headers={}, request=None, status_code=404)

    def fail(*args, **kwargs):
        raise getattr(huggingface_hub.errors, error)("a long\nmulti-line message",
                                                     response=response)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fail)
    with pytest.raises(hub.HubError) as info:
        hub.download(hub.parse("hf://o/r@v9/w.pth"), "w.pth")
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_hub_folder_round_trip_gives_equal_embeddings(tmp_path, cinc_sample_dir):
    config = config_lib.default_config()
    config.model.size = "tiny"
    presets.apply(config.data, "stmem")  # not import's default for a SiT: the folder says it
    config.train.num_steps = 123
    model = build_model(config.model, rngs=nnx.Rngs(3))
    ckpt_lib.save_model_checkpoint(tmp_path / "run", nnx.to_pure_dict(nnx.state(model)), config,
                                   step=40)
    folder = tmp_path / "folder"
    export_cli.COMMAND.run([f"--checkpoint={tmp_path / 'run'}", f"--hub_folder={folder}"])
    assert sorted(os.listdir(folder)) == ["README.md", "config.json", "model.safetensors"]
    import_cli.COMMAND.run([str(folder), f"--out={tmp_path / 'back'}"])

    back = config_lib.load_checkpoint_config(tmp_path / "back")
    assert back.data.preset == "stmem" and back.data.resample == "fft"
    records = [str(cinc_sample_dir / f"E0750{i}") for i in range(3)]
    want = embed.embed(backbones.load(str(tmp_path / "run")), records=records)["outputs"]
    got = embed.embed(backbones.load(str(tmp_path / "back")), records=records)["outputs"]
    assert want.shape == got.shape == (3, 64)
    np.testing.assert_array_equal(got, want)

    card = (folder / "README.md").read_text()
    assert "`stmem` data path" in card and "FFT (scipy.signal.resample)" in card
    assert "sampling rate: 250.0 Hz" in card and "crop: 2250 samples, 3 crops at evaluation" in card
    assert "steps: 40 of 123" in card and "No classification head" in card


def test_an_ecgfounder_folder_by_hub_id_names_its_labels(tmp_path, tiny_ecgfounder,
                                                         monkeypatch):
    path, _ = tiny_ecgfounder
    import_cli.COMMAND.run(["--format=ecgfounder", str(path), f"--out={tmp_path / 'ckpt'}"])
    folder = tmp_path / "folder"
    export_cli.COMMAND.run([f"--checkpoint={tmp_path / 'ckpt'}", f"--hub_folder={folder}"])
    card = (folder / "README.md").read_text()
    names = LABELS.read_text(encoding="utf-8").splitlines()
    assert len(names) == 150
    listed = [line.split(". ", 1)[1] for line in card.splitlines()
              if line.split(". ", 1)[0].isdigit() and line.split(". ", 1)[1] in names]
    assert listed == names
    assert "`ecgfounder` data path" in card and "notch 50 Hz Q 30" in card

    cache = tmp_path / "hub"
    for name in os.listdir(folder):
        cache_file(cache, "acme/ecgfounder-folder", name, (folder / name).read_bytes())
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    import_cli.COMMAND.run(["hf://acme/ecgfounder-folder", f"--out={tmp_path / 'back'}"])
    a, b = flat_params(tmp_path / "ckpt"), flat_params(tmp_path / "back")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert ckpt_lib.load_saved_config(tmp_path / "back")["source"]["commit"] == COMMIT


def test_overwrite_replaces_only_a_hub_folder_export_torch_wrote(tmp_path, tiny_ecgfounder,
                                                                 capsys):
    """A user's folder holding a README.md of their own passed as 'ours', and --overwrite
    replaced that README."""
    path, _ = tiny_ecgfounder
    import_cli.COMMAND.run(["--format=ecgfounder", str(path), f"--out={tmp_path / 'ckpt'}"])
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    export_cli.COMMAND.run([f"--checkpoint={tmp_path / 'ckpt'}", f"--hub_folder={ours}"])
    (ours / "README.md").write_text("stale card")
    export_cli.COMMAND.run([f"--checkpoint={tmp_path / 'ckpt'}", f"--hub_folder={ours}",
                            "--overwrite"])
    assert (ours / "README.md").read_text() != "stale card"      # ours: rewritten
    theirs.mkdir()
    (theirs / "README.md").write_text("my own notes")
    (ours / "notes.txt").write_text("mine")
    for folder, said in ((theirs, "its config.json is missing or was not written by "
                                  "export-torch"),
                         (ours, "the folder holds files this command did not write "
                                "(notes.txt)")):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            export_cli.COMMAND.run([f"--checkpoint={tmp_path / 'ckpt'}",
                                    f"--hub_folder={folder}", "--overwrite"])
        assert exit_info.value.code == 1
        assert said in capsys.readouterr().err
    assert (theirs / "README.md").read_text() == "my own notes"
    assert sorted(os.listdir(theirs)) == ["README.md"]


def test_a_hand_edited_source_is_carried_into_the_card(tmp_path, tiny_ecgfounder):
    """A checkpoint whose saved `source` is a string had ended in an AttributeError after
    config.json and the weights were written, leaving the folder without its README.md."""
    path, _ = tiny_ecgfounder
    ckpt = tmp_path / "ckpt"
    import_cli.COMMAND.run(["--format=ecgfounder", str(path), f"--out={ckpt}"])
    metadata = ckpt / "checkpoints" / "0" / "config" / "metadata"
    saved = json.loads(metadata.read_text())
    saved["source"] = "weights from the vendor"
    metadata.write_text(json.dumps(saved))
    folder = tmp_path / "hub"
    export_cli.COMMAND.run([f"--checkpoint={ckpt}", f"--hub_folder={folder}"])
    assert sorted(os.listdir(folder)) == ["README.md", "config.json", "model.safetensors"]
    assert "from `weights from the vendor`" in (folder / "README.md").read_text()


def test_outputs_inside_the_folders_read_are_refused(tmp_path, tiny_ecgfounder, capsys):
    """import-torch into the hub folder it reads had added the checkpoint to the user's folder;
    export-torch --hub_folder=CKPT/checkpoints/7 had put a step-named folder among the
    checkpoint's steps; --out=abc://x had ended in KeyError: 'abc://'."""
    path, _ = tiny_ecgfounder
    ckpt, hub_dir = tmp_path / "ckpt", tmp_path / "hub"
    import_cli.COMMAND.run(["--format=ecgfounder", str(path), f"--out={ckpt}"])
    export_cli.COMMAND.run([f"--checkpoint={ckpt}", f"--hub_folder={hub_dir}"])
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for command, args, said in (
            (import_cli, [str(hub_dir), f"--out={hub_dir / 'imported'}"], f"inside the input "
             f"{hub_dir}"),
            (export_cli, [f"--checkpoint={ckpt}", f"--hub_folder={ckpt / 'checkpoints' / '7'}"],
             f"inside the input {ckpt}"),
            (import_cli, [str(hub_dir), "--out=abc://x"], "abc://x: ")):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            command.COMMAND.run(args)
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 1 and len(err) == 1 and said in err[0], err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("field,value,said", [
    ("target_fs", -500.0, "config.data.target_fs=-500.0: expected a rate in Hz in [50, 10000]"),
    ("target_fs", float("nan"), "config.data.target_fs=nan: expected a finite number"),
    ("nan_policy", "bogus", "config.data.nan_policy='bogus'"),
    ("preprocess", "x", "saved config field data.preprocess='x'"),
    ("preprocess", {"high_hz": 300.0}, "config.data.preprocess="),
])
def test_a_folder_whose_data_path_cannot_run_is_refused_on_import(tmp_path, tiny_ecgfounder,
                                                                  field, value, said):
    """The import had passed and every record was then skipped as an unexpected error (a
    negative rate, a low-pass above Nyquist), or ended in a TypeError traceback."""
    path, _ = tiny_ecgfounder
    ckpt, folder = tmp_path / "ckpt", tmp_path / "hub"
    import_cli.COMMAND.run(["--format=ecgfounder", str(path), f"--out={ckpt}"])
    export_cli.COMMAND.run([f"--checkpoint={ckpt}", f"--hub_folder={folder}"])
    info = json.loads((folder / "config.json").read_text())
    data = info["config"]["data"]
    data[field] = {**data[field], **value} if isinstance(value, dict) else value
    (folder / "config.json").write_text(json.dumps(info))
    with pytest.raises(safe_load.CheckpointFileError) as err:
        import_torch.run_import(str(folder), None, str(tmp_path / "back"))
    assert str(err.value).startswith(f"{folder / 'config.json'}: its data path") and \
        said in str(err.value), str(err.value)
    assert not (tmp_path / "back").exists()


REAL_DOWNLOAD = huggingface_hub.hf_hub_download


def fake_hub(monkeypatch, cache, repo_id, files):
    """The hub online, holding `files` ({name: bytes}) of `repo_id` at COMMIT: a download puts
    the file in `cache` (cache_file); a file it lacks is the hub's 404."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    def download(repo, filename, revision=None, **kwargs):
        assert repo == repo_id and revision in (None, COMMIT), (repo, revision)
        if filename not in files:
            response = types.SimpleNamespace(headers={}, request=None, status_code=404)
            raise huggingface_hub.errors.RemoteEntryNotFoundError("404", response=response)
        local = cache / ("models--" + repo_id.replace("/", "--")) / "snapshots" / COMMIT / filename
        if not local.exists():
            cache_file(cache, repo_id, filename, files[filename])
        return str(local)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)


def _sidecar() -> bytes:
    """export-torch's FILE.json of tiny_ecgfounder's Net1D, its data path at 400 Hz."""
    from crema_jax.models.net1d import default_net1d_config
    model = default_net1d_config(12)
    model.filters, model.blocks = [16, 32], [1, 2]
    return json.dumps({"layout": "ecgfounder", "model": model.to_dict(),
                       "config": {"data": {"target_fs": 400.0}}}).encode()


SIDE = FILE.replace(".pth", ".json")


def test_a_weight_file_by_hub_id_takes_the_json_export_torch_wrote_beside_it_on_the_hub(
        tmp_path, tiny_ecgfounder, monkeypatch, capsys):
    """hf://OWNER/REPO/FILE had fetched FILE alone and read FILE.json only if the local cache
    happened to hold it: on a fresh machine, the preset. FILE.json is fetched at FILE's commit."""
    path, _ = tiny_ecgfounder
    fake_hub(monkeypatch, tmp_path / "hub", "acme/x", {FILE: path.read_bytes(), SIDE: _sidecar()})
    import_cli.COMMAND.run(["--format=ecgfounder", f"hf://acme/x/{FILE}",
                            f"--out={tmp_path / 'out'}"])
    assert f"(data path from hf://acme/x@{COMMIT}/{SIDE})" in capsys.readouterr().out
    assert config_lib.load_checkpoint_config(tmp_path / "out").data.target_fs == 400.0


def test_a_weight_file_by_hub_id_without_a_json_takes_the_preset_online_and_offline(
        tmp_path, tiny_ecgfounder, monkeypatch, capsys):
    """A repository without FILE.json: the preset, and the line says so; offline, the same from
    the cache's record of the hub's answer. Offline with no such record (never asked), the
    import stops rather than guess: the answer would depend on the cache."""
    path, _ = tiny_ecgfounder
    cache = tmp_path / "hub"
    fake_hub(monkeypatch, cache, "acme/x", {FILE: path.read_bytes()})
    (cache / "models--acme--x" / ".no_exist" / COMMIT).mkdir(parents=True)  # what 404s leave
    for offline in (False, True):
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", offline)
        out = tmp_path / f"out{offline}"
        import_cli.COMMAND.run(["--format=ecgfounder", f"hf://acme/x/{FILE}", f"--out={out}"])
        assert (f"(data path: the ecgfounder preset; hf://acme/x@{COMMIT}/{SIDE}: not in the "
                "repository)") in capsys.readouterr().out
        assert config_lib.load_checkpoint_config(out).data.target_fs == 500.0
        (cache / "models--acme--x" / ".no_exist" / COMMIT / SIDE).touch()
    (cache / "models--acme--x" / ".no_exist" / COMMIT / SIDE).unlink()
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", REAL_DOWNLOAD)
    with pytest.raises(SystemExit):
        import_cli.COMMAND.run(["--format=ecgfounder", f"hf://acme/x/{FILE}",
                                f"--out={tmp_path / 'no'}"])
    assert f"hf://acme/x@{COMMIT}/{SIDE}: not in the hub cache" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()
