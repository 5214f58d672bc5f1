"""Careless and hostile datasets, sixth round: HDF5 entries that are groups, loop, or keep their
bytes in other files (any file on the machine, a FIFO); CSV files with a field beyond csv's
limit or in UTF-16; PTB-XL rows whose scp_codes is no dict of codes (or code), whose strat_fold
is 0, 'abc' or inf, whose file name leaves the folder. Each is a skip or one line naming the
file (and line); nothing outside the dataset is read, no field is evaluated."""
import pathlib

import h5py
import numpy as np
import pytest

from crema_jax.data.index import ptbxl
from crema_jax.data.reading import arrays, safe_files
from crema_jax.data.reading.ecg import RecordError


def _h5(path: pathlib.Path, build) -> pathlib.Path:
    with h5py.File(path, "w") as f:
        build(f)
    return path


@pytest.mark.parametrize("build, said", [
    (lambda f: f.create_group("tracings"), "HDF5 entry 'tracings' is a Group, expected a dataset"),
    (lambda f: f.update({"tracings": h5py.SoftLink("/loop"), "loop": h5py.SoftLink("/tracings")}),
     "HDF5 entry 'tracings' does not open"),
    (lambda f: f.create_dataset("tracings", shape=(2, 4, 3), dtype=np.float32,
                                external=[(str(pathlib.Path(f.filename).parent / "secret"), 0,
                                           h5py.h5f.UNLIMITED)]),
     "dataset /tracings is stored in other files (external storage)"),
    (lambda f: f.__setitem__("tracings", h5py.ExternalLink(
        str(pathlib.Path(f.filename).parent / "other.h5"), "/x")),
     "a link to another file; only data inside the file is read"),
])
def test_hdf5_entries_that_are_no_dataset_of_the_file_are_refused(tmp_path, build, said):
    (tmp_path / "secret").write_bytes(b"password=hunter2\n" * 8)
    _h5(tmp_path / "other.h5", lambda f: f.create_dataset("x", data=np.ones((2, 4, 3))))
    path = _h5(tmp_path / "part.hdf5", build)
    with pytest.raises(RecordError) as raised:
        arrays.array_shape(path, "tracings")
    assert raised.value.reason == "unreadable" and said in raised.value.message, raised.value


def test_a_csv_beyond_csvs_limits_or_in_utf16_names_the_file(tmp_path):
    import csv

    huge = tmp_path / "huge.csv"
    huge.write_text("path,labels\n" + "x," + "A" * 200_000 + "\n")
    with pytest.raises(ValueError, match=f"^{huge}: not a readable CSV file \\(field larger"):
        with safe_files.open_text(huge, newline="") as f:
            list(csv.reader(f))
    wide = tmp_path / "utf16.csv"
    wide.write_text("path,labels\nx,A\n", encoding="utf-16")
    with pytest.raises(ValueError, match=f"^{wide}: not UTF-8 text \\(.*\\); save it as UTF-8$"):
        with safe_files.open_text(wide, newline="") as f:
            list(csv.reader(f))


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


def test_a_negative_count_in_a_wfdb_header_is_a_header_error(tmp_path, cinc_sample_dir):
    """`E07500 -3 500 5000` kept 10 of the 12 signal lines (slicing by -3): 12 interleaved
    leads were decoded as 10, with no skip."""
    from crema_jax.data.reading import wfdb_header

    lines = (cinc_sample_dir / "E07500.hea").read_text().splitlines()
    name, n_sig, *rest = lines[0].split()
    for bad in (f"{name} -3 {' '.join(rest)}", f"{name} {n_sig} {rest[0]} -5000"):
        path = tmp_path / "E07500.hea"
        path.write_text("\n".join([bad, *lines[1:]]) + "\n")
        with pytest.raises(wfdb_header.HeaderError, match="must be a non-negative integer"):
            wfdb_header.parse_header(path.read_text())


def test_a_fifo_in_an_export_folder_is_a_skip_not_a_hang(tmp_path):
    """detect() opened every file with a blocking open(): a FIFO stopped prepare forever."""
    import os
    import subprocess
    import sys

    from crema_jax.data.reading import clinical_formats

    os.mkfifo(tmp_path / "pipe.xml")
    with pytest.raises(RecordError) as raised:
        clinical_formats.detect(tmp_path / "pipe.xml")
    assert raised.value.reason == "not_a_regular_file"
    cli = os.path.join(os.path.dirname(sys.executable), "crema-jax")
    done = subprocess.run([cli, "prepare", "--layout=clinical_exports", f"--root={tmp_path}",
                           f"--out={tmp_path / 'out'}", "--workers=1"], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 1 and "not_a_regular_file" in done.stdout + done.stderr, done
