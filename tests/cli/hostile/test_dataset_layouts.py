"""Indexing a dataset (the layouts of data/index): layout options unknown or of the wrong type, in
code and on prepare's command line; label names given as text; label CSVs with a byte order
mark, rows for one file that disagree, rows naming no file, a quote that never closes; record
folders named with a comma or with spaces around; PTB-XL rows whose scp_codes, strat_fold or
file name is no such thing (never evaluated), an empty scp_statements.csv; MIMIC-IV-ECG short
rows, a label map nested too deeply, a study listed twice. Each is one line naming the option,
or the file and line, or a counted skip; none is read as something else."""
import csv
import json
import pathlib
import shutil
import subprocess
import sys

import pytest

from crema_jax.data.index import ptbxl, registry
from crema_jax.data.reading import read
from crema_jax.data.reading.ecg import RecordError
from tests.cli.hostile.helpers import SAMPLE


def _manifest(folder, rows: str) -> str:
    (folder / "manifest.csv").write_text("path,labels\n" + rows)
    return str(folder / "manifest.csv")


@pytest.mark.parametrize("layout, option, said", [
    ("manifest", {"label_names": 5}, 'option label_names=5, expected a list of names, e.g. '
                                     'AF,LBBB or ["AF","LBBB"]'),
    ("manifest", {"val_fraction": "abc"}, "option val_fraction='abc', expected a finite number"),
    ("manifest", {"test_fraction": float("nan")},
     "option test_fraction=nan, expected a finite number"),
    ("ptbxl", {"sampling_rate": 1.5}, "option sampling_rate=1.5, expected an integer"),
    ("ptbxl", {"drop_unlabelled": "yes"}, "option drop_unlabelled='yes', expected true or "
                                          "false"),
    ("code15", {"units": [1, 2]}, "option units=[1, 2], expected a text"),
])
def test_layout_options_of_the_wrong_type_are_named(tmp_path, layout, option, said):
    root = _manifest(tmp_path, f"{SAMPLE}/E07500,AF\n") if layout == "manifest" else tmp_path
    with pytest.raises(ValueError) as raised:
        registry.build_index(layout, root, **option)
    assert str(raised.value) == f"layout {layout}: {said}"


def test_label_names_given_as_text_are_a_list_of_names(tmp_path):
    """label_names=AF,LBBB from a flag is two classes, not the letters A, F, ',', L, B..."""
    root = _manifest(tmp_path, f"{SAMPLE}/E07500,AF\n{SAMPLE}/E07501,LBBB;X\n")
    for value in ("AF,LBBB", ["AF", "LBBB"], ("AF", "LBBB")):
        index = registry.build_index("manifest", root, label_names=value)
        assert index.label_names == ["AF", "LBBB"]
    assert registry.build_index("manifest", root, val_fraction=0).records[0].split in (
        "train", "test")


def test_an_unknown_layout_option_is_one_line_naming_it(tmp_path, cinc_sample_dir, capsys):
    """It was a 25-line TypeError traceback ("unexpected keyword argument 'colour'") in probe,
    compare, prepare and benchmark task files alike: all go through registry.build_index."""
    from crema_jax.cli import prepare
    from crema_jax.data.index import registry
    with pytest.raises(ValueError, match="layout wfdb_folder: unknown option 'colour'; it "
                                         "takes val_fraction, test_fraction, label_names"):
        registry.build_index("wfdb_folder", cinc_sample_dir, colour="blue")
    with pytest.raises(SystemExit) as exit_:
        prepare.COMMAND.run([f"--root={cinc_sample_dir}", f"--out={tmp_path / 'c'}",
                             "--layout_option=label_set=rhythm"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 1 and len(err) == 1 and "unknown option 'label_set'" in err[0]
    assert not (tmp_path / "c").exists()


def test_a_wrong_layout_option_on_the_command_line_is_one_line(tmp_path):
    root = _manifest(tmp_path, f"{SAMPLE}/E07500,AF\n")
    done = subprocess.run([sys.executable, "-m", "crema_jax.main", "prepare", "--layout=manifest",
                           f"--root={root}", f"--out={tmp_path / 'cache'}",
                           "--layout_option=val_fraction=abc"],
                          capture_output=True, text=True, timeout=120,
                          env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert errors == ["crema-jax prepare: error: layout manifest: option val_fraction='abc', "
                      "expected a finite number"], done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "cache").exists()


def test_a_quote_that_never_closes_is_an_error_not_one_swallowing_cell(tmp_path):
    """Read leniently, `"AF` opened a cell holding every following row: 1 record of 4, exit 0."""
    cells = ['"AF', "AF", "AF", "AF"]
    root = _manifest(tmp_path, "".join(f"{SAMPLE}/E0750{k},{cell}\n"
                                       for k, cell in enumerate(cells)))
    with pytest.raises(ValueError, match=r"manifest.csv: not a readable CSV file \(unexpected end "
                                         r"of data; a quote opens a cell that never closes\)"):
        registry.build_index("manifest", root)
    root = _manifest(tmp_path, f'{SAMPLE}/E07500,"AF,LBBB"\n{SAMPLE}/E07501,AF\n')
    index = registry.build_index("manifest", root)
    assert [r.labels for r in index.records] == [("AF", "LBBB"), ("AF",)]


def test_label_csvs_with_a_bom_duplicates_and_strays(tmp_path, cinc_sample_dir, monkeypatch):
    """A spreadsheet's "CSV UTF-8" starts with a byte order mark, which hid the first column
    (manifest and clinical_exports refused the file); two rows for one file that disagree
    were resolved silently (the last won); rows naming no file were ignored unsaid."""
    import wfdb

    from crema_jax.data.index import clinical_exports, registry
    from tests.data import clinical_files as cf
    signal_mv = wfdb.rdrecord(str(cinc_sample_dir / "E07500")).p_signal.T[:, :1000].copy()
    for name in ("a.dcm", "b.dcm"):
        cf.write_dicom(tmp_path / name, signal_mv, 500.0)
    bom = "\ufeff".encode()
    (tmp_path / "labels.csv").write_bytes(
        bom + b"file,labels\na.dcm,AF\nb.dcm,NORM\nb.dcm,NORM\nmissing.dcm,AF\n")
    monkeypatch.setenv("CREMA_JAX_PATIENT_SALT", "site-secret")
    warned = []
    monkeypatch.setattr(clinical_exports.logging, "warning",
                        lambda msg, *args: warned.append(msg % args))
    index = registry.build_index("clinical_exports", tmp_path, labels="labels.csv")
    assert {r.record_id: r.labels for r in index.records} == {"a.dcm": ("AF",),
                                                              "b.dcm": ("NORM",)}
    assert len(warned) == 1 and "1 row(s) name no file" in warned[0] and "missing.dcm" in \
        warned[0]
    (tmp_path / "labels.csv").write_bytes(b"file,labels\na.dcm,AF\nb.dcm,NORM\na.dcm,NORM\n")
    with pytest.raises(ValueError, match=r"labels\.csv:4: a\.dcm has labels \('NORM',\).*"
                                         r"line 2 gives it others"):
        registry.build_index("clinical_exports", tmp_path, labels="labels.csv")

    manifest = tmp_path / "manifest.csv"
    manifest.write_bytes(bom + f"path,labels\n{cinc_sample_dir / 'E07500'},AF\n".encode())
    index = registry.build_index("manifest", manifest)
    assert [(r.record_id, r.labels) for r in index.records] == [("E07500", ("AF",))]


def test_a_records_folder_with_a_comma_in_its_name_is_one_folder(tmp_path, cinc_sample_dir):
    """`--input="ECG, 2021"` was split at the comma into two paths that do not exist."""
    from crema_jax.data.index.dataset_index import expand_records
    folder = tmp_path / "ECG, 2021"
    folder.mkdir()
    for ext in (".hea", ".mat"):
        (folder / f"E07500{ext}").write_bytes((cinc_sample_dir / f"E07500{ext}").read_bytes())
    assert expand_records(str(folder)) == [str(folder / "E07500")]
    assert expand_records(f"{folder / 'E07500'}") == [str(folder / "E07500")]
    assert expand_records(f"{cinc_sample_dir / 'E07500'},{cinc_sample_dir / 'E07501'}") == [
        str(cinc_sample_dir / "E07500"), str(cinc_sample_dir / "E07501")]


def test_a_records_folder_gives_its_export_files_too(tmp_path, cinc_sample_dir):
    """`predict exports/` (a folder of hospital exports) had found "no records": only .hea files
    were looked for. Export files whose first bytes name a format are records too; a PDF, a
    FIFO, a table and hidden files are passed over."""
    import os

    from crema_jax.data import synthetic
    from crema_jax.data.index.dataset_index import expand_records
    from tests.data import clinical_files
    folder = tmp_path / "ward"
    (folder / "night").mkdir(parents=True)
    for ext in (".hea", ".mat"):
        shutil.copy(cinc_sample_dir / f"E07500{ext}", folder / f"E07500{ext}")
    ecg = synthetic.synthetic_ecg(3, seconds=10.0, fs=500.0)
    clinical_files.write_muse(folder / "night" / "exam.xml", ecg, 500.0)
    clinical_files.write_muse(folder / ".hidden.xml", ecg, 500.0)
    (folder / "scan.pdf").write_bytes(b"%PDF-1.4 not an ECG")
    (folder / "labels.csv").write_text("file,labels\n")
    os.mkfifo(folder / "pipe.xml")
    assert expand_records(str(folder)) == [str(folder / "E07500"),
                                           str(folder / "night" / "exam.xml")]


def test_a_folder_named_with_spaces_around_is_read_as_named(tmp_path, cinc_sample_dir):
    from crema_jax.data.index import dataset_index

    folder = tmp_path / " sp "
    folder.mkdir()
    for name in ("E07500.hea", "E07500.mat"):
        shutil.copy(cinc_sample_dir / name, folder / name)
    assert dataset_index.expand_records(str(folder)) == [str(folder / "E07500")]
    assert dataset_index.expand_records(f" {folder / 'E07500'} , {folder / 'E07500'}") == [
        str(folder / "E07500")]


def _ptbxl(tmp_path, scp_codes='"{\'NORM\': 100.0}"', fold="1",
           filename="records500/00000/00001_hr") -> pathlib.Path:
    (tmp_path / "scp_statements.csv").write_text(
        ",description,diagnostic,form,rhythm,diagnostic_class,diagnostic_subclass\n"
        "NORM,normal ECG,1.0,,,NORM,NORM\n")
    (tmp_path / "ptbxl_database.csv").write_text(
        "ecg_id,patient_id,scp_codes,strat_fold,filename_lr,filename_hr\n"
        f"1,7,{scp_codes},{fold},x,{filename}\n")
    return tmp_path / "ptbxl_database.csv"


def test_a_good_ptbxl_row_reads(tmp_path):
    _ptbxl(tmp_path)
    index = ptbxl.ptbxl(tmp_path)
    assert [(r.labels, r.split) for r in index.records] == [(("NORM",), "train")]


@pytest.mark.parametrize("field, said", [
    ({"scp_codes": "5"}, "scp_codes is a int, not a dict of statement codes"),
    ({"scp_codes": '"[\'NORM\']"'}, "scp_codes is a list"),
    ({"scp_codes": '"{(1, 2): 1}"'}, "scp_codes is a dict, not a dict of statement codes"),
    ({"fold": "0"}, "strat_fold 0"),
    ({"fold": "inf"}, "strat_fold inf"),
    ({"fold": "abc"}, "ValueError"),
    ({"filename": "/etc/passwd"}, "'/etc/passwd'"),
    ({"filename": "../../elsewhere/rec"}, "'../../elsewhere/rec'"),
    ({"filename": ""}, "''"),
])
def test_a_bad_ptbxl_row_is_named_by_its_line(tmp_path, field, said):
    database = _ptbxl(tmp_path, **field)
    with pytest.raises(ValueError) as raised:
        ptbxl.ptbxl(tmp_path)
    assert str(raised.value).startswith(f"{database}:2: expected scp_codes (a dict literal")
    assert said in str(raised.value), str(raised.value)


def test_a_ptbxl_field_is_never_evaluated(tmp_path):
    marker = tmp_path / "ran"
    database = _ptbxl(tmp_path, scp_codes=f'"__import__(\'os\').mkdir(\'{marker}\')"')
    with pytest.raises(ValueError, match=f"^{database}:2: "):
        ptbxl.ptbxl(tmp_path)
    assert not marker.exists()


def test_an_empty_scp_statements_file_is_named(tmp_path):
    _ptbxl(tmp_path)
    (tmp_path / "scp_statements.csv").write_text("")
    with pytest.raises(ValueError, match=f"^{tmp_path / 'scp_statements.csv'}: empty"):
        ptbxl.ptbxl(tmp_path)


def test_mimic_short_rows_and_a_too_deep_label_map(tmp_path):
    """Short rows of machine_measurements.csv and record_list.csv (csv gives their missing
    cells as None: AttributeError) are read as empty; a label map nested 100,000 deep is one
    line naming it (RecursionError)."""
    from crema_jax.data.index import mimic_iv_ecg

    (tmp_path / "record_list.csv").write_text(
        "subject_id,study_id,file_name,ecg_time,path\n"
        "1000,5000,5000,t,files/p1000/s5000/5000\n1001,5001\n")
    (tmp_path / "machine_measurements.csv").write_text(
        "subject_id,study_id,report_0,report_1\n1000\n1001,5001\n1000,5000,Sinus rhythm\n")
    with pytest.raises(ValueError, match=f"^{tmp_path / 'record_list.csv'}:3: path ''"):
        mimic_iv_ecg.mimic_iv_ecg(tmp_path)
    (tmp_path / "record_list.csv").write_text(
        "subject_id,study_id,file_name,ecg_time,path\n1000,5000,5000,t,files/p1000/s5000/5000\n")
    index = mimic_iv_ecg.mimic_iv_ecg(tmp_path, label_map="default")
    assert [(r.record_id, r.meta["report"]) for r in index.records] == [
        ("5000", ("Sinus rhythm",))]
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match=f"^{deep}: not a JSON object"):
        mimic_iv_ecg.label_map_rules(str(deep))


def test_a_study_listed_twice_in_mimic_record_list_is_a_counted_skip(tmp_path):
    """The second row's record would get the first study's report and labels."""
    with open(tmp_path / "record_list.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["subject_id", "study_id", "file_name", "ecg_time", "path"])
        for subject, study in ((1000, 5000), (1001, 5000), (1002, 5002)):
            writer.writerow([subject, study, study, "t", f"files/p{subject}/s{study}/{study}"])
    index = registry.build_index("mimic_iv_ecg", tmp_path)
    reasons = [r.reader.reason if r.reader is not None else None for r in index.records]
    assert reasons == [None, "duplicate_study_id", None]
    with pytest.raises(RecordError, match=r"record_list.csv:3: study_id 5000 appears again "
                                          r"\(line 2 is used\)"):
        read.read(index.records[1].path, index.records[1].reader)
    assert json.dumps([r.record_id for r in index.records]) == '["5000", "5000", "5002"]'
