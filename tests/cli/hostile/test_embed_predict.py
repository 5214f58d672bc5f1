"""embed and predict: an --out that is an input (a record's own file included), a folder, an
existing file, a FIFO or a device; a full disk under the features or between Y.npy and
Y.records.txt (the old pair stays whole; a failed checkpoint save has its own drill:
tests/train/test_save_failure.py); record folders with symlink loops or only unreadable
records; records sharing a name, names holding a newline, a byte that is no UTF-8 or a comma; a
batch larger than the input; a training checkpoint as --checkpoint; a damaged record (what was
repaired is said) and a hospital export without CREMA_JAX_PATIENT_SALT (no salt warning: no
patient id is kept). Each ends in one line naming the file or flag, or in the output a user
would expect; no input is modified."""
import csv as csv_lib
import hashlib
import os
import pathlib
import shutil

import jax
import numpy as np
import pytest

from crema_jax import config as config_lib
from crema_jax.cli import embed, predict, prepare
from crema_jax.data import synthetic
from crema_jax.data.reading import clinical
from crema_jax.models import params as params_lib
from crema_jax.runtime import checkpoint, files
from tests.cli.conftest import _fails, assert_one_error_line
from tests.data import clinical_files
from tests.data.broken_records import write_damaged
from tests.cli.hostile.helpers import (SAMPLE, _cli, _copy_record, _crema_jax, _full_disk_for,
                                       _hashes, _one_line)


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
    bare = tmp_path / ".npy"   # had written the hidden .npy and .npy.records.txt
    _fails(embed, [ck, f"--input={x}", f"--out={bare}"], capsys,
           f"--out={bare}: expected a file name ending in .npy, such as Y.npy")
    assert _hashes(tmp_path, sit_checkpoint) == before
    assert not list(folder.glob(".*"))                     # no hidden file either


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


@pytest.fixture()
def ecgs(tmp_path):
    path = tmp_path / "x.npy"
    rng = np.random.default_rng(0)
    np.save(path, rng.normal(size=(16, 12, 2500)).astype(np.float32))
    return path


def test_embed_refuses_special_files_even_with_overwrite(tmp_path, ecgs, sit_checkpoint):
    fifo = tmp_path / "out.npy"
    os.mkfifo(fifo)
    before = _hashes(tmp_path, sit_checkpoint)
    done = _cli("embed", f"--checkpoint={sit_checkpoint}", f"--input={ecgs}", f"--out={fifo}",
                "--overwrite")
    _one_line(done, "embed", f"--out={fifo}: a FIFO, not a regular file")
    assert _hashes(tmp_path, sit_checkpoint) == before
    assert fifo.is_fifo()
    # A device (making one needs root: the one every machine has).
    with pytest.raises(files.OutputError, match="^--out=/dev/null: a character device, not a "
                                                "regular file"):
        files.check_output_file("/dev/null", overwrite=True)


def test_a_full_disk_under_embed_is_one_line_naming_the_output(tmp_path, ecgs,
                                                                sit_checkpoint):
    out = tmp_path / "features.npy"
    before = _hashes(tmp_path, sit_checkpoint)
    # 16 ECGs x 64 features x 4 bytes = 4 KiB of output, 2 KiB of room.
    done = _cli("embed", f"--checkpoint={sit_checkpoint}", f"--input={ecgs}", f"--out={out}",
                file_size_limit=2048)
    _one_line(done, "embed", f"cannot write {out}: File too large")
    assert _hashes(tmp_path, sit_checkpoint) == before    # no output, no temporary left


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


def test_embed_returns_on_a_folder_with_symlink_loops(sit_checkpoint, tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    _copy_record(data, "r1")
    _copy_record(data / "sub", "r2", "E07501")
    (data / "sub" / "up").symlink_to(data)             # an endless recursive glob before
    (data / "self").symlink_to(".")
    before = _hashes(data, sit_checkpoint)
    out = tmp_path / "features.npy"
    result = _crema_jax("embed", f"--checkpoint={sit_checkpoint}", f"--input={data}",
                        f"--out={out}", timeout_s=300, memory_gib=12.0)
    assert result.returncode == 0, result.stderr[-3000:]
    # each record once: neither `self` nor `sub/up` is walked
    assert (tmp_path / "features.records.txt").read_text().split() == ["r1", "r2"]
    assert np.load(out).shape[0] == 2
    assert _hashes(data, sit_checkpoint) == before


def test_embed_of_inputs_that_are_all_unreadable_names_the_input_and_why(tmp_path, capsys):
    """It was 'the dataset yielded no readable records', naming neither."""
    from crema_jax.cli import embed
    from tests.cli.conftest import assert_one_error_line

    folder = tmp_path / "records"
    folder.mkdir()
    (folder / "A.hea").write_text((SAMPLE / "E07500.hea").read_text().replace("E07500", "A"))
    (folder / "A.mat").write_bytes((SAMPLE / "E07500.mat").read_bytes()[:5000])
    with pytest.raises(SystemExit) as exit_info:
        embed.COMMAND.run(["--checkpoint=random", f"--input={folder}",
                           f"--out={tmp_path / 'x.npy'}"])
    captured = capsys.readouterr()
    assert exit_info.value.code == 1, captured.err
    assert assert_one_error_line("embed", captured.out, captured.err) == (
        f"crema-jax embed: error: --input={folder}: no ECG could be read (1 skipped: "
        "truncated_signal 1); nothing written")
    assert not (tmp_path / "x.npy").exists()


def test_records_sharing_a_name_are_told_apart_in_records_txt(tmp_path, cinc_sample_dir,
                                                             sit_checkpoint):
    """Two different ECGs named rec0 in p1/ and p2/: Y.records.txt said "rec0" twice, so rows
    could not be mapped back to files; it now gives each path below the input folder."""
    import shutil

    import numpy as np

    from crema_jax.cli import embed
    from crema_jax.inference.embed import row_names
    for folder, source in (("p1", "E07500"), ("p2", "E07501")):
        (tmp_path / "in" / folder).mkdir(parents=True)
        for ext in (".hea", ".mat"):
            text = (cinc_sample_dir / f"{source}{ext}").read_bytes()
            if ext == ".hea":
                text = text.replace(source.encode(), b"rec0")
            (tmp_path / "in" / folder / f"rec0{ext}").write_bytes(text)
    out = tmp_path / "y.npy"
    embed.COMMAND.run([f"--checkpoint={sit_checkpoint}", f"--input={tmp_path / 'in'}",
                       f"--out={out}"])
    assert (tmp_path / "y.records.txt").read_text().split() == ["p1/rec0", "p2/rec0"]
    rows = np.load(out)
    assert rows.shape[0] == 2 and not np.allclose(rows[0], rows[1])
    # Unique file names keep their plain ids; windows keep their "#k".
    assert row_names(["/a/x", "/b/y"], [0, 1, 1], [-1, 0, 1]) == ["x", "y#0", "y#1"]
    shutil.rmtree(tmp_path / "in")


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """Three synthetic WFDB records, two of them copied to odd/: a header file named
    "A<newline>B.hea" (its signal file keeps its name), and a record in a folder named "c,d"."""
    root = tmp_path_factory.mktemp("records")
    paths = [pathlib.Path(p) for p in synthetic.write_synthetic_wfdb(
        root / "plain", 3, fs=500.0, seconds=10.0, seed=5)]
    odd, comma = root / "odd", root / "odd" / "c,d"
    comma.mkdir(parents=True)
    first, second = paths[0], paths[1]
    (odd / "A\nB.hea").write_text(first.with_suffix(".hea").read_text())
    (odd / f"{first.name}.dat").write_bytes(first.with_suffix(".dat").read_bytes())
    (comma / "E1.hea").write_text(second.with_suffix(".hea").read_text().replace(second.name,
                                                                                 "E1"))
    (comma / "E1.dat").write_bytes(second.with_suffix(".dat").read_bytes())
    return root, paths


def test_a_record_name_with_a_newline_stays_on_one_line_of_records_txt(
        sit_checkpoint, records, tmp_path):
    """"A\\nB" took two lines of Y.records.txt, and every later row was named wrongly."""
    root, _ = records
    out = tmp_path / "f.npy"
    assert embed.COMMAND.run([f"--checkpoint={sit_checkpoint}", f"--input={root / 'odd'}",
                              f"--out={out}"]) is None
    lines = out.with_suffix(".records.txt").read_text().split("\n")
    assert len(np.load(out)) == 2 and lines[-1] == "" and len(lines) == 3, lines
    assert sorted(lines[:2]) == ["A\\nB", "E1"], lines


def test_a_record_name_that_is_not_utf8_is_escaped_in_records_txt(sit_checkpoint, records,
                                                                  tmp_path):
    """A file name with the byte 0xff had ended in a UnicodeEncodeError naming no file, Y.npy
    written and Y.records.txt not (or left from the last run)."""
    root, paths = records
    folder = tmp_path / "odd"
    folder.mkdir()
    first = paths[0]
    (folder / os.fsdecode(b"r\xffx.hea")).write_text(first.with_suffix(".hea").read_text())
    (folder / f"{first.name}.dat").write_bytes(first.with_suffix(".dat").read_bytes())
    out = tmp_path / "f.npy"
    assert embed.COMMAND.run([f"--checkpoint={sit_checkpoint}", f"--input={folder}",
                              f"--out={out}"]) is None
    assert len(np.load(out)) == 1
    assert out.with_suffix(".records.txt").read_bytes() == b"r\\xffx\n"


@pytest.fixture(scope="module")
def net1d_checkpoint(tmp_path_factory):
    """A small random Net1D model checkpoint (ECGFounder's data path)."""
    net = config_lib.default_config("net1d")
    net.model.filters, net.model.blocks = [16, 32], [1, 1]
    ckpt = tmp_path_factory.mktemp("net1d") / "ckpt"
    checkpoint.save_model_checkpoint(ckpt, params_lib.init_params(net.model, 0), net)
    return ckpt


def test_predict_reads_a_record_path_with_a_comma_as_one_path(records, tmp_path, capsys,
                                                             net1d_checkpoint):
    """Positional records were joined with "," and split again: "c,d/E1" became "c" and
    "d/E1", neither of them a record."""
    root, plain = records
    csv = tmp_path / "p.csv"
    assert predict.COMMAND.run([f"--checkpoint={net1d_checkpoint}", str(plain[2]),
                                str(root / "odd" / "c,d" / "E1"), f"--out={csv}"]) is None
    printed = capsys.readouterr().out
    assert "skipped" not in printed, printed
    rows = csv.read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == [plain[2].name, "E1"], rows


def test_a_batch_larger_than_the_input_is_cut_to_the_input(tmp_path, cinc_sample_dir,
                                                          sit_checkpoint):
    """A batch was padded to --batch_size: a million for one record is ~120 GB of input."""
    import numpy as np

    from crema_jax.cli import embed
    out = tmp_path / "y.npy"
    embed.COMMAND.run([f"--checkpoint={sit_checkpoint}", f"--input={cinc_sample_dir / 'E07500'}",
                       f"--out={out}", "--batch_size=1000000"])
    assert np.load(out).shape[0] == 1


def test_embed_from_a_training_checkpoint_warns_of_nothing(tmp_path, ecgs):
    """A training checkpoint holds the data iterator's state, which embed does not read: Orbax
    used to warn, twice, that it could not restore it."""
    import grain

    config = config_lib.default_config()
    config.model.size = "tiny"
    params = params_lib.init_params(config.model, 0)
    data_iter = iter(grain.MapDataset.range(4).to_iter_dataset())
    next(data_iter)
    with checkpoint.make_manager(tmp_path / "run", async_save=False) as manager:
        checkpoint.save_train_state(manager, 1, params=params, opt_state={"count": np.zeros(2)},
                                    rng=jax.random.key(0), config=config, data_iter=data_iter)
    assert (tmp_path / "run" / "checkpoints" / "1" / "data_iter").is_dir()
    out = tmp_path / "features.npy"
    done = _cli("embed", f"--checkpoint={tmp_path / 'run'}", f"--input={ecgs}", f"--out={out}")
    assert done.returncode == 0, done.stderr
    assert "data_iter" not in done.stderr, done.stderr
    assert np.load(out).shape == (16, 64)


def test_predict_of_records_none_of_which_can_be_read_is_an_error_as_embeds(tmp_path, capsys,
                                                                           net1d_checkpoint):
    """predict had printed "skipped 1 unreadable records: [...]" then written a CSV of 0 rows,
    exit 0, and never said why a record was skipped. Every record skipped is embed's one-line
    error; a record skipped among readable ones is printed with its reason."""
    ckpt = net1d_checkpoint
    folder = tmp_path / "records"
    folder.mkdir()
    _copy_record(folder, "GOOD")
    (folder / "CUT.hea").write_text((SAMPLE / "E07500.hea").read_text().replace("E07500", "CUT"))
    (folder / "CUT.mat").write_bytes((SAMPLE / "E07500.mat").read_bytes()[:5000])
    csv = tmp_path / "p.csv"
    _fails(predict, [f"--checkpoint={ckpt}", str(folder / "CUT"), str(tmp_path / "NOPE"),
                     f"--out={csv}"], capsys,
           f"{folder / 'CUT'}, {tmp_path / 'NOPE'}: no ECG could be read (2 skipped: ")
    assert not csv.exists()
    assert predict.COMMAND.run([f"--checkpoint={ckpt}", str(folder / "CUT"),
                                str(folder / "GOOD"), f"--out={csv}"]) is None
    printed = capsys.readouterr().out
    assert f"skipped 1 unreadable records (truncated_signal 1): ['{folder / 'CUT.mat'}']" in \
        printed
    assert [row.split(",")[0] for row in csv.read_text().splitlines()[1:]] == ["GOOD"]


def _salt_warnings(monkeypatch) -> list:
    """The warnings logged from now on, without CREMA_JAX_PATIENT_SALT (and its once-per-process
    warning not yet given)."""
    monkeypatch.delenv(clinical.SALT_ENV, raising=False)
    clinical._warn_public_salt.cache_clear()
    warned = []
    monkeypatch.setattr(clinical.logging, "warning", lambda msg, *a: warned.append(msg % a))
    return warned


def test_embed_and_predict_say_what_was_repaired_and_keep_no_patient_id(
        tmp_path, capsys, monkeypatch, sit_checkpoint, net1d_checkpoint):
    """A WFDB record with lead III all invalid, 10 NaN samples in II and V2 constant, and a
    MUSE export (8 leads stored: III, aVR, aVL, aVF derived on our path, absent on
    ECGFounder's). embed and predict had printed only their output, and warned that patient
    ids were hashed with the public salt though neither keeps one; prepare, which writes them
    into a cache, still warns."""
    damaged = write_damaged(tmp_path)
    muse = tmp_path / "exam.xml"
    clinical_files.write_muse(muse, synthetic.synthetic_ecg(3, seconds=10.0, fs=500.0), 500.0)
    warned = _salt_warnings(monkeypatch)
    csv = tmp_path / "p.csv"
    assert predict.COMMAND.run([f"--checkpoint={net1d_checkpoint}", damaged, str(muse),
                                f"--out={csv}", "--top=1"]) is None
    printed = capsys.readouterr().out.splitlines()
    # ECGFounder's path derives no lead: the export's four limb leads are absent (the Net1D
    # reads zeros there), said as such, and so is the constant V2 it is fed.
    assert ("input: 1 of 2 records repaired, 2 of 2 lacking some leads the model reads "
            "(ecgfounder data path): NaN samples set to 0 in 1: DAMAGED (5010 in II, III); "
            "all-NaN leads fed as zeros in 1: DAMAGED (III); flat leads fed as recorded in 1: "
            "DAMAGED (V2); leads not in the file in 1: exam.xml (III, aVR, aVL, aVF)") in printed
    damage = ("NaN samples set to 0 (5010 in II, III); all-NaN leads fed as zeros (III); flat "
              "leads fed as recorded (V2)")
    assert f"DAMAGED: (input: {damage})" in printed
    rows = list(csv_lib.reader(csv.open()))
    assert rows[0][-1] == "repairs" and [(r[0], r[-1]) for r in rows[1:]] == [
        ("DAMAGED", damage), ("exam.xml", "leads not in the file (III, aVR, aVL, aVF)")]
    out = tmp_path / "y.npy"
    embed.COMMAND.run([f"--checkpoint={sit_checkpoint}", f"--input={damaged},{muse}",
                       f"--out={out}"])
    assert ("input: 2 of 2 records repaired (crema data path): NaN samples interpolated in 1: "
            "DAMAGED (10 in II); all-NaN leads dropped in 1: DAMAGED (III); flat leads dropped "
            "in 1: DAMAGED (V2); limb leads derived in 2: DAMAGED (III), exam.xml (III, aVR, "
            "aVL, aVF)") in capsys.readouterr().out.splitlines()
    assert not [w for w in warned if clinical.SALT_ENV in w], warned
    (tmp_path / "exports").mkdir()
    shutil.copy(muse, tmp_path / "exports" / "exam.xml")
    prepare.COMMAND.run(["--layout=clinical_exports", f"--root={tmp_path / 'exports'}",
                         f"--out={tmp_path / 'cache'}", "--workers=1"])
    assert len([w for w in warned if clinical.SALT_ENV in w]) == 1, warned


def test_embed_and_predict_say_which_folders_an_out_path_created(tmp_path, sit_checkpoint,
                                                                 net1d_checkpoint, capsys):
    """A mistyped --out folder ("reslts/run1") had been created without a word."""
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(0).normal(size=(2, 12, 2250)).astype(np.float32))
    out = tmp_path / "reslts" / "run1" / "y.npy"
    embed.COMMAND.run([f"--checkpoint={sit_checkpoint}", f"--input={x}", f"--out={out}",
                       "--raw"])
    printed = capsys.readouterr().out.splitlines()
    assert printed[-2] == (f"--out: created folder {tmp_path / 'reslts' / 'run1'} "
                           f"(and above it {tmp_path / 'reslts'})")
    assert printed[-1].startswith(f"wrote {out}: (2, ")
    embed.COMMAND.run([f"--checkpoint={sit_checkpoint}", f"--input={x}", f"--out={out}",
                       "--raw", "--overwrite"])
    assert "created folder" not in capsys.readouterr().out     # the folder is there now
    csv = tmp_path / "probs" / "p.csv"
    predict.COMMAND.run([f"--checkpoint={net1d_checkpoint}", str(SAMPLE / "E07500"),
                         f"--out={csv}"])
    printed = capsys.readouterr().out.splitlines()
    assert printed[-2] == f"--out: created folder {tmp_path / 'probs'}"
    assert printed[-1].startswith(f"wrote {csv} (1 records x ")
