"""Outputs given as URLs (gs://, s3://): a single-file output is written locally, then uploaded
(export-torch's pair, preview's PNG, embed's Y.npy and side files, predict's CSV); a folder output
(--hub_folder, an evaluation's --workdir) is refused in one line before any work. Each had exited
0 saying "wrote gs://bucket/..." with the files in ./gs:/bucket/ instead.

The store is fakegs://, an fsspec file system keeping its objects in a local folder as a bucket
does (an upload makes the folders above it); the commands run in a folder of their own, which
must stay empty."""
import json
import pathlib

import fsspec
import pytest
from fsspec.implementations.dirfs import DirFileSystem
from fsspec.implementations.local import LocalFileSystem

from tests.cli.conftest import assert_one_error_line, run_in_process
from tests.cli import test_resume

net1d = test_resume.net1d   # the small Net1D checkpoint fixture
TASKS = pathlib.Path(__file__).parents[2] / "configs" / "benchmarks" / "bundled_sample.py"


class _Store(DirFileSystem):
    """fakegs://BUCKET/PATH: the object ROOT/BUCKET/PATH."""
    protocol = "fakegs"
    cachable = False
    root = ""

    def __init__(self, **kwargs):
        super().__init__(path=_Store.root, fs=LocalFileSystem(), **kwargs)

    def put_file(self, lpath, rpath, **kwargs):
        self.makedirs(self._parent(rpath), exist_ok=True)
        return super().put_file(lpath, rpath, **kwargs)


@pytest.fixture
def store(tmp_path, monkeypatch):
    """(the store's folder, the commands' current folder)."""
    root, cwd = tmp_path / "store", tmp_path / "cwd"
    root.mkdir()
    cwd.mkdir()
    monkeypatch.setattr(_Store, "root", str(root))
    fsspec.register_implementation("fakegs", _Store, clobber=True)
    monkeypatch.chdir(cwd)
    return root, cwd


def _listing(folder: pathlib.Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _bytes(folder: pathlib.Path) -> dict:
    """Each file's bytes; a .safetensors file's as (header, data): its header's JSON is written
    from a hash map, its metadata keys in an order that varies between writes."""
    out = {}
    for name in _listing(folder):
        data = (folder / name).read_bytes()
        if name.endswith(".safetensors"):
            size = int.from_bytes(data[:8], "little")
            data = (json.loads(data[8:8 + size]), data[8 + size:])
        out[name] = data
    return out


def test_export_torch_uploads_the_weights_and_their_config(sit_checkpoint, store, tmp_path,
                                                          capsys):
    root, cwd = store
    url = "fakegs://bucket/models/x.safetensors"
    done = run_in_process(capsys, "export-torch", f"--checkpoint={sit_checkpoint}",
                          f"--out={url}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == (
        f"wrote {url} and fakegs://bucket/models/x.json")
    local = tmp_path / "local"
    assert run_in_process(capsys, "export-torch", f"--checkpoint={sit_checkpoint}",
                          f"--out={local / 'x.safetensors'}").returncode == 0
    assert _bytes(root / "bucket" / "models") == _bytes(local)   # no temporary beside them
    assert _listing(cwd) == []

    again = run_in_process(capsys, "export-torch", f"--checkpoint={sit_checkpoint}",
                           f"--out={url}")
    assert again.returncode == 1
    assert_one_error_line("export-torch", again.stdout, again.stderr,
                          f"--out={url}: the file exists; choose a new name or pass --overwrite")
    assert run_in_process(capsys, "export-torch", f"--checkpoint={sit_checkpoint}",
                          f"--out={url}", "--overwrite").returncode == 0
    assert _listing(root) == ["bucket/models/x.json", "bucket/models/x.safetensors"]


@pytest.mark.parametrize("argv, flag", [
    (["export-torch", "--hub_folder=fakegs://bucket/out"], "--hub_folder"),
    (["probe", "--workdir=fakegs://bucket/out"], "--workdir"),
    (["finetune", "--workdir=fakegs://bucket/out"], "--workdir"),
    (["compare", "--checkpoint_b=random", "--workdir=fakegs://bucket/out"], "--workdir"),
    (["benchmark", "--models=a=random", f"--tasks={TASKS}", "--workdir=fakegs://bucket/out"],
     "--workdir")])
def test_a_folder_output_given_as_a_url_is_refused_before_any_work(argv, flag, sit_checkpoint,
                                                                   cinc_sample_dir, store,
                                                                   capsys):
    root, cwd = store
    if argv[0] != "benchmark":
        argv = [*argv, f"--checkpoint={sit_checkpoint}"]
    if argv[0] in ("probe", "finetune", "compare"):
        argv.append(f"--root={cinc_sample_dir}")
    done = run_in_process(capsys, *argv)
    assert done.returncode == 1, done.stderr
    assert_one_error_line(argv[0], done.stdout, done.stderr,
                          f"{flag}=fakegs://bucket/out: a URL, but this output is written as a "
                          "local folder only; name a local path")
    assert done.stdout == ""   # nothing loaded, nothing scored
    assert _listing(root) == [] and list(cwd.iterdir()) == []


def test_preview_uploads_its_png(store, capsys):
    root, cwd = store
    done = run_in_process(capsys, "preview", "--out=fakegs://bucket/p/preview.png")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines() == ["wrote fakegs://bucket/p/preview.png"]
    assert (root / "bucket" / "p" / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _listing(root) == ["bucket/p/preview.png"] and list(cwd.iterdir()) == []


def test_embed_uploads_y_and_its_side_files(sit_checkpoint, cinc_sample_dir, store, tmp_path,
                                            capsys):
    """Records (no resuming: the partial folder stays local, so nowhere); an earlier run's
    Y.skipped.csv on the store is refused, then, with --overwrite, removed."""
    root, cwd = store
    records = ",".join(str(cinc_sample_dir / name) for name in ("E07500", "E07503"))
    local = tmp_path / "local"
    assert run_in_process(capsys, "embed", f"--checkpoint={sit_checkpoint}", f"--input={records}",
                          f"--out={local / 'Y.npy'}").returncode == 0
    (root / "bucket" / "e").mkdir(parents=True)
    (root / "bucket" / "e" / "Y.skipped.csv").write_text("an earlier run's skips\n")
    url = "fakegs://bucket/e/Y.npy"
    argv = ["embed", f"--checkpoint={sit_checkpoint}", f"--input={records}", f"--out={url}"]
    refused = run_in_process(capsys, *argv)
    assert refused.returncode == 1
    assert_one_error_line("embed", refused.stdout, refused.stderr,
                          "--out=fakegs://bucket/e/Y.skipped.csv: the file exists")
    done = run_in_process(capsys, *argv, "--overwrite")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1].startswith(f"wrote {url}: (2, ")
    assert _bytes(root / "bucket" / "e") == _bytes(local)
    assert _listing(local) == ["Y.npy", "Y.paths.txt", "Y.records.txt"]
    assert list(cwd.iterdir()) == []


def test_predict_uploads_its_csv(net1d, cinc_sample_dir, store, tmp_path, capsys):
    root, cwd = store
    records = [str(cinc_sample_dir / name) for name in ("E07500", "E07503")]
    local = tmp_path / "local"
    assert run_in_process(capsys, "predict", f"--checkpoint={net1d}", *records, "--top=0",
                          f"--out={local / 'probs.csv'}").returncode == 0
    done = run_in_process(capsys, "predict", f"--checkpoint={net1d}", *records, "--top=0",
                          "--out=fakegs://bucket/p/probs.csv")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == (
        "wrote fakegs://bucket/p/probs.csv (2 records x 150 labels)")
    assert _bytes(root / "bucket" / "p") == _bytes(local) and _listing(local) == ["probs.csv"]
    assert list(cwd.iterdir()) == []
