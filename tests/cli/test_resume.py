"""predict and embed over many records: an interrupted run resumes from what it kept on disk
(inference/partial.py), a progress line, every skip in a side file, each row's file named.

The killed runs are SIGKILLed by the process itself right after writing a chunk
(CREMA_JAX_TEST_KILL_AFTER_CHUNK): the same point of the run every time."""
import csv
import io
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from crema_jax.cli import predict as predict_cli
from crema_jax.export import import_torch
from crema_jax.data.pipeline import skips
from crema_jax.inference import backbones, embed, partial, predict, tracker
from tests.cli.conftest import _fails
from tests.data.broken_records import write_damaged
from tests.references.ecgfounder_torch import Net1DRef
from tests.train.helpers import cli_env

SMALL_NET1D = dict(in_channels=12, filters=(16, 32), blocks=(1, 2), n_classes=150)


@pytest.fixture(scope="module")
def net1d(tmp_path_factory):
    torch.manual_seed(3)
    root = tmp_path_factory.mktemp("net1d")
    torch.save({"state_dict": Net1DRef(**SMALL_NET1D).eval().state_dict()}, root / "small.pth")
    import_torch.run_import(str(root / "small.pth"), "ecgfounder", str(root / "ckpt"))
    return str(root / "ckpt")


def _records(folder, cinc_sample_dir, broken: int):
    """25 records in sorted order in `folder`: A_DAMAGED (read with repairs), 24 CinC records
    of which the one at position `broken` has a truncated signal file (a skip)."""
    folder.mkdir()
    write_damaged(folder, "A_DAMAGED")
    names = sorted(p.stem for p in cinc_sample_dir.glob("*.hea"))[:24]
    for name in names:
        for ext in (".hea", ".mat"):
            shutil.copy(cinc_sample_dir / (name + ext), folder / (name + ext))
    cut = folder / (names[broken - 1] + ".mat")
    cut.write_bytes(cut.read_bytes()[:1000])
    return folder, [str(folder / "A_DAMAGED")] + [str(folder / n) for n in names]


@pytest.fixture
def records(tmp_path, cinc_sample_dir):
    """_records' 25, the third (E07501-like) truncated."""
    return _records(tmp_path / "recs", cinc_sample_dir, 2)


def _crema_jax(*args, kill_after=None, cwd=None):
    env = cli_env(1)
    env["CREMA_JAX_FLUSH_SECONDS"] = "0"   # a chunk after every batch
    if kill_after:
        env["CREMA_JAX_TEST_KILL_AFTER_CHUNK"] = str(kill_after)
    return subprocess.run([sys.executable, "-m", "crema_jax.main", *args], env=env,
                          capture_output=True, text=True, timeout=300, cwd=cwd)


def _tamper(paths):
    """Each record's signal file zeroed, its size and mtime kept: a run that read it again
    would compute other numbers, one that took it from the partial folder the same."""
    for path in paths:
        mat = path + ".mat"
        st = os.stat(mat)
        with open(mat, "r+b") as f:
            f.seek(24)
            f.write(bytes(st.st_size - 24))
        os.utime(mat, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.slow
def test_a_killed_predict_resumes_computing_only_the_records_it_had_not_kept(net1d, records,
                                                                            tmp_path):
    folder, paths = records
    # The uninterrupted run, in this process (no partial folder), before any file is touched.
    want = predict.predict_probabilities(backbones.load(net1d, with_head=True), records=paths,
                                         batch_size=8, derive_limb_leads=True)
    out = tmp_path / "out" / "p.csv"
    hidden = out.parent / ".p.csv.partial"
    args = ["predict", f"--checkpoint={net1d}", str(folder), f"--out={out}", "--top=0",
            "--batch_size=8"]
    first = _crema_jax(*args, kill_after=1)
    assert first.returncode == -9, first.stderr[-2000:]
    assert sorted(os.listdir(hidden)) == ["chunk-000001.npz", "lock", "manifest.json"]
    assert not out.exists()
    # Other settings: said in one line, started over (then killed after two batches of 8: the
    # truncated record, 3rd, is skipped, so the first batch ends at the 9th record, the second
    # at the 17th).
    second = _crema_jax(*args, "--derive_limb_leads", kill_after=2)
    assert second.returncode == -9
    assert second.stdout.splitlines()[0] == (
        f"{hidden}: kept outputs of a run with another data path; not used, starting over")
    _tamper([p for p in paths[1:17] if p != paths[2]])
    third = _crema_jax(*args, "--derive_limb_leads")
    assert third.returncode == 0, third.stderr[-2000:]
    lines = third.stdout.splitlines()
    assert lines[0] == (f"resuming: 17 of 25 records kept in {hidden} from an earlier run, "
                        "8 to compute")
    assert want["note"] in lines
    skipped = out.parent / "p.skipped.csv"
    assert lines[-1] == f"wrote {out} (24 records x 150 labels); every skipped record in {skipped}"
    assert not hidden.exists()
    rows = list(csv.reader(out.open(encoding="utf-8")))
    assert rows[0][:2] == ["record", "path"] and len(rows) == 25
    kept = [p for p in paths if p != paths[2]]
    assert [r[:2] for r in rows[1:]] == [[os.path.basename(p), p] for p in kept]
    np.testing.assert_allclose(np.array([r[2:-1] for r in rows[1:]], float), want["probs"],
                               atol=1e-6)
    assert [r[-1] for r in rows[1:]] == predict.row_repairs(want)
    assert rows[1][-1].startswith("NaN samples set to 0 (5010 in II, III)")
    (position, reason, path, message), = want["skips"]
    assert list(csv.reader(skipped.open(encoding="utf-8"))) == [
        ["path", "reason", "message", "file"],
        [paths[2], "truncated_signal", message, paths[2] + ".mat"]]
    assert (position, reason, path) == (2, "truncated_signal", paths[2] + ".mat")


@pytest.mark.slow
def test_a_killed_embed_resumes_into_the_same_rows_and_side_files(net1d, records, tmp_path):
    folder, paths = records
    want = embed.embed(backbones.load(net1d), records=paths, batch_size=8)
    out = tmp_path / "y.npy"
    args = ["embed", f"--checkpoint={net1d}", f"--input={folder}", f"--out={out}",
            "--batch_size=8"]
    assert _crema_jax(*args, kill_after=1).returncode == -9
    _tamper([p for p in paths[1:9] if p != paths[2]])
    done = _crema_jax(*args)
    assert done.returncode == 0, done.stderr[-2000:]
    hidden = tmp_path / ".y.npy.partial"
    assert done.stdout.splitlines()[0] == (
        f"resuming: 9 of 25 records kept in {hidden} from an earlier run, 16 to compute")
    stem = str(tmp_path / "y")
    assert done.stdout.splitlines()[-2:] == [
        "skipped 1 unreadable records (truncated_signal 1; 1 kept from an earlier run)",
        f"wrote {out}: (24, 32) features, each row's ECG in {stem}.records.txt (its file in "
        f"{stem}.paths.txt); every skipped record in {stem}.skipped.csv"]
    np.testing.assert_allclose(np.load(out), want["outputs"], rtol=1e-5, atol=1e-6)
    kept = [p for p in paths if p != paths[2]]
    assert open(stem + ".paths.txt").read().splitlines() == kept
    assert open(stem + ".records.txt").read().splitlines() == [os.path.basename(p) for p in kept]
    assert sorted(os.listdir(tmp_path)) == ["recs", "y.npy", "y.paths.txt", "y.records.txt",
                                            "y.skipped.csv"]


def test_a_partial_folder_that_is_not_ours_is_refused_and_left_alone(net1d, records, tmp_path,
                                                                     capsys):
    folder, _ = records
    hidden = tmp_path / ".p.csv.partial"
    hidden.mkdir()
    (hidden / "notes.txt").write_text("mine")
    _fails(predict_cli, [f"--checkpoint={net1d}", str(folder), f"--out={tmp_path / 'p.csv'}"],
           capsys, f"{hidden}: exists but is not the partial outputs of a run (no manifest.json);"
           " move it away or choose another --out")
    assert os.listdir(hidden) == ["notes.txt"] and (hidden / "notes.txt").read_text() == "mine"


def test_top_zero_prints_no_record_lines_and_the_data_line_says_logits(net1d, cinc_sample_dir,
                                                                       capsys):
    predict_cli.COMMAND.run([f"--checkpoint={net1d}", str(cinc_sample_dir / "E07500"),
                             "--top=0"])
    assert capsys.readouterr().out.splitlines() == [
        "data path: ecgfounder (from the checkpoint's config; 500 Hz, one crop of 5000 samples, "
        "logit averaging)"]


def test_the_progress_line_counts_records_rate_and_eta():
    line = tracker.Progress("predict", 4000, 1000).line(2200, 40.0)
    assert line == "predict: 2200/4000 records, 30.0 records/s, ETA 1m00s"
    assert tracker.Progress("embed", 10).line(0, 0.0) == "embed: 0/10 records, 0.0 records/s, ETA ?"
    # Printed every `every` seconds; the end's line only after an earlier one.
    stream = io.StringIO()
    progress = tracker.Progress("embed", 10, stream=stream, every=3600.0)
    progress.update(4)
    progress.update(10, last=True)
    assert stream.getvalue() == ""
    progress.every = 0.0
    progress.update(5)
    progress.update(10, last=True)
    assert [line.split(",")[0] for line in stream.getvalue().splitlines()] == [
        "embed: 5/10 records", "embed: 10/10 records"]


def test_a_record_cut_in_windows_is_finished_with_its_last_window():
    """Source rows of records 0 (3 windows), 1 (1), 2 (2): a record is handed on only once the
    batches have reached its last window."""
    keys = ["a", "b", "c"]
    track = tracker.Tracker(range(3), keys, rows_of=[0, 0, 0, 1, 2, 2],
                            windows_of=np.array([0, 1, 2, 0, 0, 1]))

    def batch(*index):
        return {"index": np.array(index), "outputs": np.ones((len(index), 1, 2), np.float32)
                * np.array(index, np.float32)[:, None, None]}
    track(batch(0, 1))
    assert track.finished == {}
    track(batch(2, 3, 4))
    assert list(track.finished) == ["a", "b"] and track.finished["a"]["window"] == [0, 1, 2]
    np.testing.assert_array_equal(track.finished["a"]["rows"][:, 0], [0, 1, 2])
    track(batch(5))
    assert track.finished["c"]["window"] == [0, 1]
    got = tracker.assemble(keys, track.finished)
    assert got["record"].tolist() == [0, 0, 0, 1, 2, 2]
    np.testing.assert_array_equal(got["outputs"][:, 1], [0, 1, 2, 3, 4, 5])


def test_the_partial_folder_is_hidden_beside_the_output(tmp_path):
    assert partial.folder_of(str(tmp_path / "a" / "p.csv")) == str(
        tmp_path / "a" / ".p.csv.partial")


@pytest.mark.slow
def test_a_run_killed_after_keeping_every_record_writes_its_output_when_run_again(
        net1d, records, tmp_path):
    """Killed after its last chunk (3 batches of 8: 24 records read, 1 skipped), before the
    output was written: run again, nothing is left to read and the output is the kept one."""
    folder, paths = records
    want = embed.embed(backbones.load(net1d), records=paths, batch_size=8)
    out = tmp_path / "y.npy"
    args = ["embed", f"--checkpoint={net1d}", f"--input={folder}", f"--out={out}",
            "--batch_size=8"]
    assert _crema_jax(*args, kill_after=3).returncode == -9
    hidden = tmp_path / ".y.npy.partial"
    assert sorted(os.listdir(hidden))[-3:] == ["chunk-000003.npz", "lock", "manifest.json"]
    assert not out.exists()
    done = _crema_jax(*args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[0] == (
        f"resuming: 25 of 25 records kept in {hidden} from an earlier run, 0 to compute")
    np.testing.assert_allclose(np.load(out), want["outputs"], rtol=1e-5, atol=1e-6)
    assert not hidden.exists()


def test_a_skip_read_ahead_is_its_own_records_whatever_file_it_names():
    """Records a, b, c, one row each; c's skip is recorded (read ahead) before the batch of a:
    it is c's, though its path names no record given (a file spelled otherwise)."""
    stats = skips.SkipStats(hand_over=True)
    track = tracker.Tracker(range(3), ["a", "b", "c"], stats=stats)
    stats.record("truncated_signal", "elsewhere/c.mat", "c.mat is truncated", index=2)

    def batch(*index):
        return {"index": np.array(index), "outputs": np.zeros((len(index), 1, 2), np.float32)}
    track(batch(0))
    assert track.finished["a"]["skips"] == []
    track(batch(1))
    track.end()
    assert [track.finished[k]["skips"] for k in "bc"] == [
        [], [["truncated_signal", "elsewhere/c.mat", "c.mat is truncated"]]]


@pytest.mark.slow
def test_a_skip_after_the_kept_records_is_written_once_on_resume(net1d, cinc_sample_dir,
                                                                tmp_path):
    """--input=./recs (a skip's file is named d/x.mat, the record ./d/x); the skipped records
    are the 4th, in the first batch (kept), and the 12th, in the second, read ahead while the
    first is computed; killed after the first. The resumed run counts each skip once and
    names only its own warning: it had named the kept skip as if this run had warned of it."""
    _, paths = _records(tmp_path / "recs", cinc_sample_dir, 11)
    with open(paths[3] + ".mat", "r+b") as f:
        f.truncate(1000)
    args = ["embed", f"--checkpoint={net1d}", "--input=./recs", "--out=y.npy", "--batch_size=8"]
    assert _crema_jax(*args, kill_after=1, cwd=tmp_path).returncode == -9
    done = _crema_jax(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[0].startswith("resuming: 9 of 25 records kept")
    rows = list(csv.reader((tmp_path / "y.skipped.csv").open(encoding="utf-8")))
    assert [r[:2] + r[3:] for r in rows[1:]] == [
        [paths[3], "truncated_signal", paths[3] + ".mat"],
        [paths[11], "truncated_signal", paths[11] + ".mat"]]
    name = os.path.basename(paths[11])
    assert done.stdout.splitlines()[-2] == (
        "skipped 2 unreadable records (truncated_signal 2; 1 kept from an earlier run): "
        f"['recs/{name}.mat']")


def test_an_arrays_skips_are_named_by_row_number_and_no_file(net1d, tmp_path, capsys):
    """Row 1 of X holds no finite sample: skipped; Y.skipped.csv names it "1", as Y.records.txt
    names rows, with no file (there is none: it had written os.path.abspath("arrays[1]"))."""
    from crema_jax.cli import embed as embed_cli
    x = np.random.default_rng(0).normal(0, 0.1, (3, 12, 5000)).astype(np.float32)
    x[1] = np.nan
    np.save(tmp_path / "x.npy", x)
    embed_cli.COMMAND.run([f"--checkpoint={net1d}", f"--input={tmp_path / 'x.npy'}",
                           f"--out={tmp_path / 'y.npy'}"])
    capsys.readouterr()
    assert (tmp_path / "y.records.txt").read_text().split() == ["0", "2"]
    rows = list(csv.reader((tmp_path / "y.skipped.csv").open(encoding="utf-8")))
    assert [r[:2] + r[3:] for r in rows] == [["path", "reason", "file"], ["1", "no_signal", ""]]


def test_a_record_key_changes_with_a_signal_file_its_header_names(tmp_path, cinc_sample_dir):
    """rec.hea names E07500.mat (WFDB allows any name): rewriting that file makes rec another
    record, as rewriting its header does."""
    text = (cinc_sample_dir / "E07500.hea").read_text()
    (tmp_path / "rec.hea").write_text(text.replace("E07500 12", "rec 12", 1))
    mat = tmp_path / "E07500.mat"
    shutil.copy(cinc_sample_dir / "E07500.mat", mat)
    rec = str(tmp_path / "rec")
    before = partial.record_key(rec)
    assert partial.record_key(rec) == before
    st = mat.stat()
    os.utime(mat, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert partial.record_key(rec) != before


def test_kept_outputs_of_another_package_version_are_not_used(net1d, tmp_path, monkeypatch):
    import crema_jax
    backbone = backbones.load(net1d)
    data_cfg = backbones.eval_data_config(backbone, ["I"], batch_size=1)
    lines = []
    first = partial.Keeper(str(tmp_path / "y.npy"), "features", say=lines.append)
    assert first.start(backbone, data_cfg, ["a", "b"]) == [0, 1]
    first.save({"a": {"rows": np.ones((1, 2)), "window": [-1], "skips": [], "repairs": None}})
    first.close()
    again = partial.Keeper(str(tmp_path / "y.npy"), "features", say=lines.append)
    assert again.start(backbone, data_cfg, ["a", "b"]) == [1]
    again.close()
    monkeypatch.setattr(crema_jax, "__version__", crema_jax.__version__ + ".post1")
    upgraded = partial.Keeper(str(tmp_path / "y.npy"), "features", say=lines.append)
    assert upgraded.start(backbone, data_cfg, ["a", "b"]) == [0, 1]
    assert lines[-1] == (f"{first.folder}: kept outputs of a run with another package version; "
                         "not used, starting over")


def _keeper(net1d, tmp_path, output="features"):
    backbone = backbones.load(net1d)
    keeper = partial.Keeper(str(tmp_path / "y.npy"), output, say=lambda line: None)
    return keeper, backbone, backbones.eval_data_config(backbone, ["I"], batch_size=1)


def test_an_empty_partial_folder_is_ours(net1d, tmp_path):
    """Killed between making the folder and writing its manifest: the next run uses it."""
    keeper, backbone, data_cfg = _keeper(net1d, tmp_path)
    os.mkdir(keeper.folder)
    assert keeper.start(backbone, data_cfg, ["a"]) == [0]
    assert sorted(os.listdir(keeper.folder)) == ["lock", "manifest.json"]


def test_a_partial_folder_with_a_file_not_ours_is_refused_under_other_settings(net1d, tmp_path):
    """Starting over would keep notes.txt, and the folder, then write chunks without a
    manifest into it: refused, nothing touched."""
    keeper, backbone, data_cfg = _keeper(net1d, tmp_path)
    keeper.start(backbone, data_cfg, ["a"])
    keeper.save({"a": {"rows": np.ones((1, 2)), "window": [-1], "skips": [], "repairs": None}})
    (tmp_path / ".y.npy.partial" / "notes.txt").write_text("mine")
    other, _, _ = _keeper(net1d, tmp_path, output="logits")
    with pytest.raises(ValueError) as err:
        other.start(backbone, data_cfg, ["a"])
    assert str(err.value) == (
        f"{keeper.folder}: the partial outputs of a run, and files of another name (notes.txt); "
        "move it away or choose another --out")
    assert sorted(os.listdir(keeper.folder)) == ["chunk-000001.npz", "lock", "manifest.json",
                                                 "notes.txt"]


def test_a_run_stopped_before_finishing_a_record_leaves_no_folder(net1d, records, tmp_path,
                                                                  monkeypatch):
    _, paths = records
    keeper, backbone, _ = _keeper(net1d, tmp_path)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(backbones, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        embed.embed(backbone, records=paths[:2], keeper=keeper)
    assert not os.path.lexists(keeper.folder)


def test_a_folder_older_than_its_output_is_removed_as_stale(net1d, records, tmp_path, capsys):
    """Killed between writing p.csv and removing the folder: the next run (refused for the
    existing p.csv) removes it, and says so; a folder newer than the output is kept."""
    folder, _ = records
    out = tmp_path / "p.csv"
    keeper = partial.Keeper(str(out), "logits")
    os.mkdir(keeper.folder)
    (tmp_path / ".p.csv.partial" / "manifest.json").write_text("{}")
    out.write_text("record,path\n")
    os.utime(out, ns=(0, os.stat(keeper.folder + "/manifest.json").st_mtime_ns + 1))
    with pytest.raises(SystemExit):
        predict_cli.COMMAND.run([f"--checkpoint={net1d}", str(folder), f"--out={out}"])
    assert capsys.readouterr().out.splitlines()[0] == (
        f"removed {keeper.folder}: left by the run that wrote {out} (stopped before removing it)")
    assert not os.path.lexists(keeper.folder)
    os.mkdir(keeper.folder)
    (tmp_path / ".p.csv.partial" / "manifest.json").write_text("{}")
    os.utime(out, ns=(0, 0))
    assert partial.clear_stale(str(out)) is None and os.path.isdir(keeper.folder)
