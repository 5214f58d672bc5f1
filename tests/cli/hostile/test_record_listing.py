"""The records embed and predict are given (paths, globs, folders): an export file named like a
WFDB record beside it, export files and subfolders that cannot be read, globs over a folder of
WFDB records and exports sharing stems, an export removed after it was listed, a file name that
is not UTF-8 in predict's CSV, an --out in a folder that cannot be written, and a folder of
hundreds of files that are no ECG. Each is a record read, a skip counted and named, or one line
naming the files or the flag; never a record silently dropped or read for another. Unreadable
files are simulated (os.open, os.scandir, os.access) so the tests hold when run as root."""
import csv
import errno
import os
import shutil

import numpy as np
import pytest

from crema_jax.cli import embed as embed_cli
from crema_jax.cli import skipped_records
from crema_jax.cli import predict as predict_cli
from crema_jax.data import synthetic
from crema_jax.data.index.dataset_index import expand_records
from crema_jax.data.pipeline import skips
from crema_jax.data.reading import clinical
from crema_jax.inference import embed, predict
from crema_jax.runtime import files
from tests.cli.conftest import _fails
from tests.cli.hostile.helpers import SAMPLE
from tests.data import clinical_files

ECG = synthetic.synthetic_ecg(3, seconds=10.0, fs=500.0)


def _wfdb(folder, name="E07500"):
    for ext in (".hea", ".mat"):
        shutil.copy(SAMPLE / f"{name}{ext}", folder / f"{name}{ext}")


def test_an_export_named_like_a_wfdb_record_beside_it_is_refused_naming_both(tmp_path, capsys):
    """A DICOM saved as "E07500" beside E07500.hea had been read in the record's place (one
    row, the DICOM's probabilities, exit 0): the two paths were one string."""
    _wfdb(tmp_path)
    clinical_files.write_dicom(tmp_path / "E07500", ECG, 500.0)
    both = f"{tmp_path / 'E07500'} and {tmp_path / 'E07500.hea'}: a file and a WFDB record share"
    for spec in (str(tmp_path), str(tmp_path / "E07500.hea"), str(tmp_path / "*")):
        with pytest.raises(ValueError, match="share the name 'E07500'") as err:
            expand_records(spec)
        assert both in str(err.value)
    _fails(predict_cli, ["--checkpoint=/nonexistent", str(tmp_path)], capsys, both)
    # With its format's suffix the export is a record of its own beside the WFDB one.
    os.rename(tmp_path / "E07500", tmp_path / "E07500.dcm")
    assert expand_records(str(tmp_path)) == [str(tmp_path / "E07500"),
                                             str(tmp_path / "E07500.dcm")]


def test_a_glob_lists_the_exports_that_share_a_wfdb_records_stem(tmp_path):
    """"dir/*.dcm" had found no record when E07501.hea was beside E07501.dcm, and "dir/*" had
    given fewer records than the folder."""
    for name in ("E07500", "E07501"):
        _wfdb(tmp_path, name)
    clinical_files.write_muse(tmp_path / "E07500.xml", ECG, 500.0)
    clinical_files.write_dicom(tmp_path / "E07501.dcm", ECG, 500.0)
    assert expand_records(str(tmp_path / "*.dcm")) == [str(tmp_path / "E07501.dcm")]
    expected = [str(tmp_path / n) for n in ("E07500", "E07500.xml", "E07501", "E07501.dcm")]
    assert sorted(expand_records(str(tmp_path / "*"))) == expected
    assert expand_records(str(tmp_path)) == expected


def _unreadable(monkeypatch, file, folder):
    """Opening `file` and listing `folder` fail as they do for a user without permission."""
    real_open, real_scandir = os.open, os.scandir

    def fake_open(path, *args, **kwargs):
        if os.fspath(path) == str(file):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_open(path, *args, **kwargs)

    def fake_scandir(path="."):
        if os.fspath(path) == str(folder):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_scandir(path)
    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "scandir", fake_scandir)


def test_unreadable_exports_and_folders_are_skips_that_name_them(tmp_path, capsys, monkeypatch,
                                                                  sit_checkpoint):
    """An export file and a subfolder the user cannot read had vanished from the records
    without a word ("1 of 4 records" of a folder of 6), where an unreadable header is a skip."""
    folder = tmp_path / "ward"
    (folder / "locked").mkdir(parents=True)
    _wfdb(folder)
    clinical_files.write_aecg(folder / "aecg.xml", ECG, 500.0)
    clinical_files.write_muse(folder / "locked" / "exam.xml", ECG, 500.0)
    _unreadable(monkeypatch, folder / "aecg.xml", folder / "locked")
    assert expand_records(str(folder)) == [str(folder / p) for p in ("E07500", "aecg.xml",
                                                                     "locked")]
    assert expand_records(str(folder / "*" / "*.xml")) == [str(folder / "locked")]
    out = tmp_path / "y.npy"
    assert embed_cli.COMMAND.run([f"--checkpoint={sit_checkpoint}", f"--input={folder}",
                                  f"--out={out}"]) is None
    # The summary line is predict's: the reasons, and the paths the warnings named.
    assert (f"skipped 2 unreadable records (unreadable 2): ['{folder / 'aecg.xml'}', "
            f"'{folder / 'locked'}']") in capsys.readouterr().out.splitlines()
    assert len(np.load(out)) == 1
    assert out.with_suffix(".records.txt").read_text() == "E07500\n"


def test_an_export_removed_after_listing_is_an_unreadable_export_not_a_missing_header(tmp_path):
    """A listed aecg.xml removed before it was read had been reported as a missing header
    ".../aecg.xml.hea", a file that never existed."""
    assert clinical.is_clinical_path(tmp_path / "aecg.xml")
    assert not clinical.is_clinical_path(tmp_path / "E07500")      # a WFDB record's name
    assert not clinical.is_clinical_path(tmp_path / "labels.csv")


def test_predicts_csv_writes_a_file_name_that_is_not_utf8(tmp_path):
    """A file name with the byte 0xff had ended predict, after all its work, in "'utf-8' codec
    can't encode character '\\udcff'", naming no file and writing no CSV."""
    out = tmp_path / "p.csv"
    name = os.fsdecode(b"r\xffx.xml")
    files.write_atomic(str(out), predict.csv_writer(
        [name, "a\nb"], np.array([[0.25], [0.5]]), ["AF"], paths=["/d/" + name, "/d/a\nb"]))
    assert out.read_bytes().split(b"\r\n")[1:3] == [
        b"r\\xffx.xml,/d/r\\xffx.xml,0.250000,", b"a\\nb,/d/a\\nb,0.500000,"]
    assert [row[:2] for row in csv.reader(out.open(encoding="utf-8"))] == [
        ["record", "path"], ["r\\xffx.xml", "/d/r\\xffx.xml"], ["a\\nb", "/d/a\\nb"]]


def test_an_out_in_a_folder_that_cannot_be_written_is_refused_before_any_record(
        tmp_path, capsys, monkeypatch):
    """predict --out=RO/p.csv and embed --out=RO/y.npy had read every record (and loaded the
    checkpoint) before finding the folder read-only."""
    _wfdb(tmp_path)
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if (
        os.fspath(path) == str(ro) and mode & os.W_OK) else real_access(path, mode, **kw))
    record = str(tmp_path / "E07500")
    _fails(predict_cli, ["--checkpoint=/nonexistent", record, f"--out={ro / 'p.csv'}"], capsys,
           f"--out={ro / 'p.csv'}: {ro} is not writable")
    _fails(embed_cli, ["--checkpoint=/nonexistent", f"--input={record}",
                       f"--out={ro / 'sub' / 'y.npy'}"], capsys,
           f"--out={ro / 'sub' / 'y.npy'}: {ro} is not writable")


def test_hundreds_of_skips_are_one_summary_line_and_a_few_warnings(monkeypatch):
    """A folder of 300 CT images had given 300 warnings and a line listing every path."""
    warned = []
    monkeypatch.setattr(skips.logging, "warning", lambda msg, *a: warned.append(msg % a))
    stats = skips.SkipStats(log_limit=embed.SKIPS_NAMED)
    for i in range(300):
        stats.record("no_signal", f"ct/IM{i:03d}", f"ct/IM{i:03d}: no waveform")
    assert stats.counts == {"no_signal": 300} and len(stats.paths["no_signal"]) == skips.KEEP
    assert warned == [f"skipping ct/IM{i:03d} [no_signal]: ct/IM{i:03d}: no waveform"
                      for i in range(5)] + [
        "more records skipped: counted, no longer logged one by one"]
    assert skipped_records.line(stats) == (
        "skipped 300 unreadable records (no_signal 300): ['ct/IM000', 'ct/IM001', 'ct/IM002', "
        "'ct/IM003', 'ct/IM004'] and 295 more")


def test_the_skipped_line_names_the_skips_the_warnings_named(monkeypatch):
    """The line had named the first five paths after sorting, not the five logged above it."""
    warned = []
    monkeypatch.setattr(skips.logging, "warning", lambda msg, *a: warned.append(msg % a))
    stats = skips.SkipStats(log_limit=embed.SKIPS_NAMED)
    for path, reason in [("z9", "no_signal"), ("m1", "too_short"), ("y2", "no_signal"),
                         ("b4", "unreadable"), ("x0", "no_signal"), ("a0", "no_signal"),
                         ("a1", "too_short")]:
        stats.record(reason, path, "why")
    assert [w.split()[1] for w in warned[:5]] == ["z9", "m1", "y2", "b4", "x0"]
    assert skipped_records.line(stats) == (
        "skipped 7 unreadable records (no_signal 4, too_short 2, unreadable 1): "
        "['z9', 'm1', 'y2', 'b4', 'x0'] and 2 more")


def test_a_resumed_runs_line_counts_the_kept_skips_once_and_names_only_its_own(monkeypatch):
    """4 skips kept from the interrupted run, 3 made now (2 logged): the line had named the
    kept ones as this run's warnings. Each is counted once; only this run's warnings named."""
    monkeypatch.setattr(skips.logging, "warning", lambda *args: None)
    stats = skips.SkipStats(log_limit=2)
    for path in ("c", "d", "e"):
        stats.record("no_signal", path, "why")
    for path, reason in [("a", "no_signal"), ("b", "too_short"), ("f", "too_short"),
                         ("g", "no_signal")]:
        stats.add(reason, path, "why")
    assert skipped_records.line(stats, earlier=4) == (
        "skipped 7 unreadable records (no_signal 5, too_short 2; 4 kept from an earlier run): "
        "['c', 'd'] and 1 more")
    kept_only = skips.SkipStats(log_limit=2)
    kept_only.add("truncated_signal", "a.mat", "why")
    assert skipped_records.line(kept_only, earlier=1) == (
        "skipped 1 unreadable records (truncated_signal 1; 1 kept from an earlier run)")


def test_a_glob_of_a_physionet_folder_leaves_the_records_side_files_out(tmp_path):
    """"mitdb/*" had listed r.atr and r.xws (annotations, a viewer's settings) as export files
    beside record r, each read as a skip; an export beside a header of its stem stays a record,
    and a signal file the header names under its own suffix is the record's."""
    for name in ("r.atr", "r.xws", "E07501.dcm"):
        (tmp_path / name).write_bytes(b"not an ECG")
    _wfdb(tmp_path, "E07501")
    clinical_files.write_dicom(tmp_path / "E07501.dcm", ECG, 500.0)
    synthetic.write_synthetic_wfdb(tmp_path, 1, seconds=2.5)
    (tmp_path / "SYN00000.dat").rename(tmp_path / "r.sig")
    (tmp_path / "r.hea").write_text((tmp_path / "SYN00000.hea").read_text().replace(
        "SYN00000.dat", "r.sig").replace("SYN00000 ", "r ", 1))
    (tmp_path / "SYN00000.hea").unlink()
    records = [str(tmp_path / n) for n in ("E07501", "E07501.dcm", "r")]
    assert sorted(expand_records(str(tmp_path / "*"))) == records
    assert expand_records(str(tmp_path / "r.*")) == [str(tmp_path / "r")]
    assert expand_records(str(tmp_path / "*.sig")) == [str(tmp_path / "r")]
    assert expand_records(str(tmp_path)) == records


def test_a_signal_file_without_its_header_is_listed_and_read_as_a_missing_header(tmp_path):
    """A lone x.dat in a folder given to embed/predict had been left out without a word (the
    wfdb_folder layout counts it); a signal file another header names is no record."""
    from crema_jax.data.reading import read as read_lib
    from crema_jax.data.reading.ecg import RecordError
    synthetic.write_synthetic_wfdb(tmp_path, 2, seconds=2.5)
    (tmp_path / "SYN00001.dat").rename(tmp_path / "SYN00001_signals.dat")
    hea = tmp_path / "SYN00001.hea"
    hea.write_text(hea.read_text().replace("SYN00001.dat", "SYN00001_signals.dat"))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.mat").write_bytes(b"\0" * 64)
    for system in (".Trash-1000", "lost+found"):   # passed over there, as export files are
        (tmp_path / system).mkdir()
        (tmp_path / system / "old.dat").write_bytes(b"\0" * 64)
    listed = expand_records(str(tmp_path))
    assert listed == [str(tmp_path / p) for p in ("SYN00000", "SYN00001", "sub/x")]
    with pytest.raises(RecordError) as err:
        read_lib.read(listed[2], embed._reader(listed[2]))
    assert err.value.reason == "missing_header"
    assert f"{tmp_path / 'sub' / 'x'}.hea" in err.value.message


def test_a_header_naming_an_extensionless_signal_file_beside_it_is_a_record(tmp_path):
    """WFDB lets E1.hea name the signal file E1; embed/predict had refused the record as "a
    file and a WFDB record share the name" (the wfdb_folder layout read it)."""
    from crema_jax.data.reading import read as read_lib
    shutil.copy(SAMPLE / "E07500.mat", tmp_path / "E1")
    (tmp_path / "E1.hea").write_text((SAMPLE / "E07500.hea").read_text().replace(
        "E07500.mat", "E1").replace("E07500 ", "E1 ", 1))
    record = str(tmp_path / "E1")
    for spec in (record, record + ".hea", str(tmp_path), str(tmp_path / "*")):
        assert expand_records(spec) == [record]
    assert not clinical.is_clinical_path(record)
    got = read_lib.read(record, embed._reader(record)).signal
    np.testing.assert_array_equal(got, read_lib.read(str(SAMPLE / "E07500")).signal)


def test_unreadable_hidden_and_system_folders_are_not_skipped_records(tmp_path, monkeypatch):
    """A disk's lost+found and .Trash-1000, which the user cannot list, had each been an
    `unreadable` record skipped and named, where hidden files are passed over; any other
    folder that cannot be listed still is one, and so is the folder given itself."""
    _wfdb(tmp_path)
    locked = {str(tmp_path / n) for n in ("lost+found", ".Trash-1000", "locked")}
    for folder in locked:
        os.mkdir(folder)
    real_scandir = os.scandir

    def fake_scandir(path="."):
        if os.fspath(path) in locked:
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_scandir(path)
    monkeypatch.setattr(os, "scandir", fake_scandir)
    assert expand_records(str(tmp_path)) == [str(tmp_path / "E07500"), str(tmp_path / "locked")]
    assert expand_records(str(tmp_path / "*" / "*")) == [str(tmp_path / "locked")]
    assert expand_records(str(tmp_path / "lost+found")) == [str(tmp_path / "lost+found")]
    # Nor is a file in them an export candidate (as a hidden file is not).
    assert [clinical.is_export_candidate(tmp_path / p, tmp_path) for p in (
        "lost+found/#1207", ".Trash-1000/files/a.xml", "ward/a.xml", "ward/lost+found.xml")] == [
        False, False, True, True]


def test_hidden_files_and_folders_are_no_records(tmp_path):
    """A folder copied from a Mac holds a ._NAME.hea metadata twin (AppleDouble bytes, not a
    header) beside each record; each had been listed as a record and skipped as a broken
    header, doubling the skips. Hidden files and folders (.git) are passed over by the
    folder listing of embed/predict and by the wfdb_folder layout alike."""
    from crema_jax.data.index import wfdb_folder
    for name in ("E07500", "E07501"):
        for suffix in (".hea", ".mat"):
            shutil.copy(SAMPLE / f"{name}{suffix}", tmp_path / f"{name}{suffix}")
        (tmp_path / f"._{name}.hea").write_bytes(b"\0\5\26\7\0\2\0\0Mac OS X        ")
    (tmp_path / ".git").mkdir()
    shutil.copy(SAMPLE / "E07502.hea", tmp_path / ".git" / "E07502.hea")
    want = [str(tmp_path / "E07500"), str(tmp_path / "E07501")]
    assert expand_records(str(tmp_path)) == want
    index = wfdb_folder.wfdb_folder(tmp_path)
    assert [r.path for r in index.records] == want


def test_a_glob_of_files_none_of_which_is_a_record_says_what_it_matched(tmp_path, capsys):
    """A glob matching only a record's side files had said "no records in '...'"; one of
    signal files without their headers, or of a label CSV, listed each as a record, every one
    then skipped as missing its header. Each says how many files matched and why none is one."""
    (tmp_path / "with").mkdir()
    _wfdb(tmp_path / "with")
    for name in ("E07500.atr", "E07500.xws"):
        (tmp_path / "with" / name).write_bytes(b"not an ECG")
    for name in ("E07500.mat", "E07501.mat", "E07502.mat"):
        shutil.copy(SAMPLE / name, tmp_path / name)
    (tmp_path / "labels.csv").write_text("file,labels\nE07500,AF\n")
    side = ("side files of a WFDB record (beside its .hea, which does not name them): "
            "E07500.atr, E07500.xws")
    headerless = "WFDB needs the .hea header beside a signal file: E07500.mat, E07501.mat, " \
                 "E07502.mat"
    not_ecg = "no ECG files (neither a WFDB record with its .hea nor a hospital export): " \
              "labels.csv"
    for pattern, said in ((tmp_path / "with" / "*.[ax]*", f"2 files matched, none is a record: "
                           f"{side}"),
                          (tmp_path / "*.mat", f"3 files matched, none is a record: {headerless}"),
                          (tmp_path / "*.csv", f"1 file matched, none is a record: {not_ecg}"),
                          (tmp_path / "*", f"4 files matched, none is a record: {headerless}; "
                                           f"{not_ecg}")):
        with pytest.raises(FileNotFoundError) as err:
            expand_records(str(pattern))
        assert str(err.value) == (f"{pattern}: {said}; name the records' .hea files, their "
                                  "folder or the export files")
    _fails(embed_cli, [f"--checkpoint={tmp_path}", f"--input={tmp_path / '*.mat'}",
                       f"--out={tmp_path / 'y.npy'}"], capsys,
           f"{tmp_path / '*.mat'}: 3 files matched, none is a record")
    # One record among them: the rest are listed as before (a missing header is a counted skip).
    _wfdb(tmp_path, "E07501")
    assert expand_records(str(tmp_path / "*.mat")) == [str(tmp_path / n) for n in
                                                       ("E07500", "E07501", "E07502")]
