"""Dataset layouts on the shared CinC sample, a hand-made PTB-XL tree and manifests."""
import collections
import csv
import hashlib
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import wfdb

from crema_jax.data import synthetic
from crema_jax.data.index import dataset_index
from crema_jax.data.index import manifest
from crema_jax.data.index import ptbxl
from crema_jax.data.index import registry
from crema_jax.data.index import wfdb_folder
from crema_jax.data.reading import wfdb_records

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _sha1_split(key, val=0.1, test=0.1):
    u = int(hashlib.sha1(key.encode()).hexdigest()[:16], 16) / 2**64
    return "train" if u < 1 - val - test else ("val" if u < 1 - test else "test")


def test_wfdb_folder_on_cinc_sample(cinc_sample_dir):
    index = registry.build_index("wfdb_folder", cinc_sample_dir)
    assert len(index) == 50 and index.layout == "wfdb_folder"
    assert collections.Counter(r.source for r in index) == {"georgia": 20, "ptbxl": 10,
                                                            "ningbo": 20}
    all_codes = set()
    for info in index:
        lines = open(info.path + ".hea").read().splitlines()
        dx = [ln for ln in lines if ln.startswith("# Dx:")][0][len("# Dx:"):]
        codes = {c.strip() for c in dx.split(",")}
        assert set(info.labels) == codes
        all_codes |= codes
        assert info.split == _sha1_split(info.record_id)
        assert os.path.isfile(info.path + ".mat")
    assert index.label_names == sorted(all_codes) and len(all_codes) == 25
    e07500 = next(r for r in index if r.record_id == "E07500")
    assert set(e07500.labels) == {"67741000119109", "426177001"}
    assert e07500.meta["age"] == 78 and e07500.meta["sex"] == "Male"
    assert e07500.meta["fs"] == 500.0 and e07500.meta["num_samples"] == 5000
    assert sum(len(index.split(s)) for s in ("train", "val", "test")) == 50


def test_wfdb_folder_recursive_with_folder_sources_and_unknown_meta(tmp_path):
    synthetic.write_synthetic_wfdb(tmp_path / "siteA", 2, seconds=2.5)
    synthetic.write_synthetic_wfdb(tmp_path / "siteB" / "deeper", 1, seconds=2.5, seed=5)
    hea = tmp_path / "siteA" / "SYN00001.hea"
    text = hea.read_text()
    text = "\n".join(ln for ln in text.splitlines() if not ln.startswith(("# Age", "# Sex")))
    hea.write_text(text + "\n# Age: NaN\n# Sex: Unknown\n")
    index = wfdb_folder.wfdb_folder(tmp_path, val_fraction=0.5, test_fraction=0.5)
    assert [r.record_id for r in index] == ["SYN00000", "SYN00001", "SYN00000"]
    assert [r.source for r in index] == ["siteA", "siteA", "deeper"]
    assert index[1].meta["age"] is None and index[1].meta["sex"] is None
    assert all(r.split in ("val", "test") for r in index)
    assert wfdb_folder.wfdb_folder(tmp_path, source="mine")[0].source == "mine"
    with pytest.raises(FileNotFoundError, match="not a directory"):
        wfdb_folder.wfdb_folder(tmp_path / "nope")


def test_wfdb_folder_counts_a_signal_file_without_its_header(tmp_path):
    """A .dat or .mat whose NAME.hea is missing is a record skipped as missing_header (it had
    been invisible); one a header names under another name, or beside its header, is not."""
    from crema_jax.data.cache import prepare
    from crema_jax.data.reading import read as read_lib
    from crema_jax.data.reading.ecg import RecordError
    synthetic.write_synthetic_wfdb(tmp_path, 2, seconds=2.5)
    signal = (tmp_path / "SYN00001.dat").read_bytes()
    (tmp_path / "SYN00001.dat").rename(tmp_path / "SYN00001_signals.dat")  # a header names it
    hea = tmp_path / "SYN00001.hea"
    hea.write_text(hea.read_text().replace("SYN00001.dat", "SYN00001_signals.dat"))
    (tmp_path / "sub").mkdir()
    for name in ("A0.dat", "sub/B1.mat", "sub/B1.dat"):    # B1: one record, two signal files
        (tmp_path / name).write_bytes(signal)
    index = wfdb_folder.wfdb_folder(tmp_path)
    assert [r.record_id for r in index] == ["SYN00000", "SYN00001", "A0", "B1"]
    assert [r.path for r in index[2:]] == [str(tmp_path / "A0"), str(tmp_path / "sub" / "B1")]
    assert index[3].source == "sub" and index[2].labels == ()
    with pytest.raises(RecordError) as err:
        read_lib.read(index[2].path, index[2].reader)
    assert err.value.reason == "missing_header"
    assert err.value.message == (f"cannot read header {tmp_path / 'A0'}.hea: no such file "
                                 f"beside the signal file {tmp_path / 'A0.dat'}")
    done = prepare.prepare(layout="wfdb_folder", root=str(tmp_path), out=str(tmp_path / "c"),
                           workers=1)
    assert done["records"] == 2
    assert done["skipped"]["missing_header"]["count"] == 2
    # --strict stops at the first of them, as at any skip, naming the signal file.
    with pytest.raises(prepare.PrepareError, match=(
            rf"^\(--strict\) cannot read header {tmp_path / 'A0'}.hea: no such file beside the "
            rf"signal file {tmp_path / 'A0.dat'} \[missing_header\]$")):
        prepare.prepare(layout="wfdb_folder", root=str(tmp_path), out=str(tmp_path / "s"),
                        workers=1, strict=True)


def test_package_sample_data():
    index = wfdb_folder.wfdb_folder(dataset_index.sample_data_dir())
    assert collections.Counter(r.source for r in index) == {"georgia": 14, "ptbxl": 10,
                                                            "ningbo": 12}
    total = sum(f.stat().st_size for f in dataset_index.sample_data_dir().iterdir())
    assert total <= 5 * 2**20
    assert (dataset_index.sample_data_dir() / "README.md").read_text().count("CC BY 4.0") >= 1
    ecg = wfdb_records.read_record(index[0].path)
    assert ecg.signal.shape == (12, 2500)


# Hand-made statements: (code, diagnostic, form, rhythm, diagnostic_class, diagnostic_subclass)
SCP = [
    ("NORM", "1.0", "", "", "NORM", "NORM"),
    ("IMI", "1.0", "", "", "MI", "IMI"),
    ("ASMI", "1.0", "", "", "MI", "AMI"),
    ("LVH", "1.0", "", "", "HYP", "LVH"),
    ("NDT", "1.0", "1.0", "", "STTC", "STTC"),
    ("ABQRS", "", "1.0", "", "", ""),
    ("INVT", "", "1.0", "", "", ""),
    ("SR", "", "", "1.0", "", ""),
    ("AFIB", "", "", "1.0", "", ""),
]
# (ecg_id, patient_id, scp_codes, strat_fold, site)
DATABASE = [
    (1, 101, "{'NORM': 100.0, 'SR': 0.0}", 1, 0),
    (2, 102, "{'IMI': 15.0, 'ASMI': 50.0, 'ABQRS': 0.0, 'SR': 0.0}", 8, 1),
    (3, 103, "{'NDT': 100.0, 'LVH': 35.0, 'AFIB': 0.0, 'XYZ': 100.0}", 9, 2),
    (4, 104, "{'SR': 0.0, 'INVT': 0.0}", 10, 0),
]


@pytest.fixture(scope="module")
def ptbxl_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ptbxl")
    with open(root / "scp_statements.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["", "description", "diagnostic", "form", "rhythm", "diagnostic_class",
                         "diagnostic_subclass", "Statement Category"])
        for code, diag, form, rhythm, cls, sub in SCP:
            writer.writerow([code, code.lower(), diag, form, rhythm, cls, sub, "x"])
    with open(root / "ptbxl_database.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ecg_id", "patient_id", "age", "sex", "site", "scp_codes", "strat_fold",
                         "filename_lr", "filename_hr"])
        for ecg_id, patient, scp, fold, site in DATABASE:
            lr, hr = f"records100/00000/{ecg_id:05d}_lr", f"records500/00000/{ecg_id:05d}_hr"
            writer.writerow([ecg_id, f"{patient}.0", "56.0", "1", f"{site}.0", scp, fold, lr, hr])
            for name, fs in ((lr, 100), (hr, 500)):
                folder = root / os.path.dirname(name)
                folder.mkdir(parents=True, exist_ok=True)
                sig = synthetic.synthetic_ecg(ecg_id, seconds=10.0, fs=fs)
                wfdb.wrsamp(os.path.basename(name), fs=fs, units=["mV"] * 12,
                            sig_name=["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3",
                                      "V4", "V5", "V6"],
                            p_signal=sig.T.astype(np.float64), fmt=["16"] * 12,
                            adc_gain=[1000.0] * 12, baseline=[0] * 12, write_dir=str(folder))
    return root


@pytest.mark.parametrize("label_set,expected", [
    ("superclass", {1: ("NORM",), 2: ("MI",), 3: ("HYP", "STTC")}),
    ("subclass", {1: ("NORM",), 2: ("AMI", "IMI"), 3: ("LVH", "STTC")}),
    ("diagnostic", {1: ("NORM",), 2: ("ASMI", "IMI"), 3: ("LVH", "NDT")}),
    ("form", {2: ("ABQRS",), 3: ("NDT",), 4: ("INVT",)}),
    ("rhythm", {1: ("SR",), 2: ("SR",), 3: ("AFIB",), 4: ("SR",)}),
    ("all", {1: ("NORM", "SR"), 2: ("ABQRS", "ASMI", "IMI", "SR"),
             3: ("AFIB", "LVH", "NDT", "XYZ"), 4: ("INVT", "SR")}),
])
def test_ptbxl_label_sets(ptbxl_root, label_set, expected):
    index = ptbxl.ptbxl(ptbxl_root, label_set=label_set)
    assert {int(r.meta["ecg_id"]): r.labels for r in index} == expected
    assert index.label_names == sorted({c for labels in expected.values() for c in labels})


def test_ptbxl_splits_paths_and_meta(ptbxl_root):
    index = ptbxl.ptbxl(ptbxl_root, label_set="all", source="site")
    assert [r.split for r in index] == ["train", "train", "val", "test"]
    assert [r.source for r in index] == ["ptbxl_site0", "ptbxl_site1", "ptbxl_site2",
                                         "ptbxl_site0"]
    assert index[1].meta["patient_id"] == "102.0" and index[1].meta["sex"] == "Female"
    assert index[0].path == str(ptbxl_root / "records500" / "00000" / "00001_hr")
    assert wfdb_records.read_record(index[0].path).signal.shape == (12, 2500)
    low = ptbxl.ptbxl(ptbxl_root, label_set="superclass", sampling_rate=100,
                      drop_unlabelled=False)
    assert len(low) == 4 and low[3].labels == () and low[0].source == "ptbxl"
    ecg = wfdb_records.read_record(low[0].path, target_fs=None)
    assert ecg.fs == 100.0 and ecg.signal.shape == (12, 1000) and ecg.lead_present.all()
    with pytest.raises(ValueError, match="label_set"):
        ptbxl.ptbxl(ptbxl_root, label_set="diag")
    with pytest.raises(ValueError, match="source"):
        ptbxl.ptbxl(ptbxl_root, source="device")
    with pytest.raises(FileNotFoundError, match="ptbxl_database.csv"):
        ptbxl.ptbxl(ptbxl_root / "records100")


def test_manifest_relative_paths_labels_and_splits(tmp_path):
    paths = synthetic.write_synthetic_wfdb(tmp_path / "data", 4, seconds=2.5)
    rows = [
        ["path", "labels", "split", "source", "patient_id"],
        ["data/SYN00000.hea", "a;b", "train", "hosp1", ""],
        ["data/SYN00001", "c|a", "", "", "p7"],
        [paths[2], "b,c", "validation", "", ""],
        ["data/SYN00003.dat", "", "", "", ""],
    ]
    with open(tmp_path / "manifest.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)  # "b,c" is quoted by the csv writer.
    index = manifest.manifest(tmp_path)
    assert [r.path for r in index] == paths
    assert [r.labels for r in index] == [("a", "b"), ("a", "c"), ("b", "c"), ()]
    assert [r.split for r in index] == ["train", _sha1_split("p7"), "val",
                                        _sha1_split("SYN00003")]
    assert [r.source for r in index] == ["hosp1", "data", "data", "data"]
    assert index.label_names == ["a", "b", "c"]
    assert wfdb_records.read_record(index[1].path).signal.shape == (12, 625)
    same = registry.build_index("manifest", tmp_path / "manifest.csv")
    assert [r.path for r in same] == paths

    with open(tmp_path / "bad.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "split"], ["data/SYN00000", "holdout"]])
    with pytest.raises(ValueError, match=r"bad.csv:2: split 'holdout'"):
        manifest.manifest(tmp_path / "bad.csv")
    with open(tmp_path / "nopath.csv", "w", newline="") as f:
        csv.writer(f).writerows([["file"], ["data/SYN00000"]])
    with pytest.raises(ValueError, match=r"expected the column 'path' \(optional: labels, "):
        manifest.manifest(tmp_path / "nopath.csv")


def test_manifest_header_names_are_read_without_spaces_and_a_capitalised_one_is_refused(
        tmp_path):
    """"path, split, labels" (a space after each comma) had read columns ' split' and ' labels'
    as unknown: every row unlabelled, the test rows hashed into train/val, exit 0."""
    (tmp_path / "m.csv").write_text("path, split , labels,notes\n"
                                    "data/A1, test, x;y,seen twice\n"
                                    "data/A2,train,y,\n")
    index = manifest.manifest(tmp_path / "m.csv")
    assert [(r.record_id, r.split, r.labels) for r in index] == [("A1", "test", ("x", "y")),
                                                                  ("A2", "train", ("y",))]
    for header, said in (("path,Split", "column 'Split': expected 'split' (column names are "
                                        "lower-case)"),
                         ("path,split, split", "column 'split' appears twice in the header")):
        (tmp_path / "bad.csv").write_text(header + "\ndata/A1,test,test\n")
        with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'bad.csv'}: {said}")):
            manifest.manifest(tmp_path / "bad.csv")


def test_manifest_keeps_urls_as_urls(tmp_path):
    """A gs:// path cell had become the local path <cwd>/gs:/bucket/...; it stays the URL (read
    through runtime/storage.py, as wfdb_folder's are), its extension dropped, its name the
    record id and its folder the source; a URL naming a folder is refused with its line."""
    with open(tmp_path / "manifest.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path", "split"], ["gs://bucket/site9/E1", "train"],
                                 ["gs://bucket/site9/HR2.hea", "test"]])
    index = manifest.manifest(tmp_path)
    assert [r.path for r in index] == ["gs://bucket/site9/E1", "gs://bucket/site9/HR2"]
    assert [r.record_id for r in index] == ["E1", "HR2"]
    assert [r.source for r in index] == [dataset_index.infer_source("E1", "site9"),
                                         dataset_index.infer_source("HR2", "site9")]
    with open(tmp_path / "folder.csv", "w", newline="") as f:
        csv.writer(f).writerows([["path"], ["gs://bucket/site9/"]])
    with pytest.raises(ValueError, match=r"folder.csv:2: path 'gs://bucket/site9/' names a "):
        manifest.manifest(tmp_path / "folder.csv")


def test_hash_split_matches_hashlib_and_is_stable_across_processes():
    keys = [f"patient{i}" for i in range(300)] + ["E07500", "HR06000", "ünïcode"]
    ours = [dataset_index.hash_split(k) for k in keys]
    assert ours == [_sha1_split(k) for k in keys]
    counts = collections.Counter(ours)
    assert 200 < counts["train"] < 280 and counts["val"] > 10 and counts["test"] > 10
    assert [dataset_index.hash_split(k, val_fraction=0.3, test_fraction=0.2) for k in keys] == [
        _sha1_split(k, 0.3, 0.2) for k in keys]
    code = ("import sys; from crema_jax.data.index.dataset_index import hash_split; "
            "print(''.join(hash_split(k)[0] for k in sys.argv[1:]))")
    outputs = {subprocess.run([sys.executable, "-c", code, *keys], capture_output=True,
                              text=True, check=True, cwd=REPO_ROOT,
                              env={**os.environ, "PYTHONHASHSEED": seed}).stdout.strip()
               for seed in ("1", "2")}
    assert outputs == {"".join(s[0] for s in ours)}
    with pytest.raises(ValueError, match="fractions"):
        dataset_index.hash_split("x", val_fraction=0.7, test_fraction=0.5)


def test_infer_source_and_unknown_layout():
    assert [dataset_index.infer_source(r) for r in ("A0001", "Q0001", "I01", "S0001", "HR00001",
                                                    "E00001", "JS00001", "X1", "abc")] == [
        "cpsc2018", "cpsc2018_extra", "incart", "ptb", "ptbxl", "georgia", "ningbo", "unknown",
        "unknown"]
    assert dataset_index.infer_source("rec12", "mysite") == "mysite"
    with pytest.raises(ValueError, match="wfdb_folder"):
        registry.build_index("hdf5", "/tmp")



def _layout_naming(root, layout: str, name: str):
    """The index of a one-record `layout` folder at root whose table names the record `name`."""
    if layout == "ptbxl":
        (root / "scp_statements.csv").write_text(",diagnostic_class\nNORM,NORM\n")
        (root / "ptbxl_database.csv").write_text(
            f"ecg_id,scp_codes,strat_fold,filename_lr,filename_hr\n1,{{}},1,x,{name}\n")
        return ptbxl.ptbxl(root, label_set="all", drop_unlabelled=False)
    if layout == "mimic_iv_ecg":
        (root / "record_list.csv").write_text(f"subject_id,study_id,path\n1,2,{name}\n")
        return registry.build_index("mimic_iv_ecg", root)
    (root / "labels.csv").write_text(f"file\n{name}\n")
    return registry.build_index("numpy", root, fs=250, leads="I", units="mV")


@pytest.mark.parametrize("layout, said", [
    ("ptbxl", "filename_hr (a path inside the folder): '{}'"),
    ("mimic_iv_ecg", "path '{}' is not a record path inside"),
    ("numpy", "file '{}' is not a path inside")])
def test_a_record_named_outside_the_folder_is_refused_by_every_layout(tmp_path, layout, said):
    """data2 is a sibling whose name starts with the folder's (data), data/out a link to it."""
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (tmp_path / "data2").mkdir()
    os.symlink(tmp_path / "data2", data / "out")
    for name in ("../data2/r", "out/r", "/etc/r", "sub/../../data2/r"):
        with pytest.raises(ValueError, match=":2: ") as raised:
            _layout_naming(data, layout, name)
        assert said.format(name) in str(raised.value)
    index = _layout_naming(data, layout, "sub/r")
    assert [r.path for r in index.records] in ([str(data / "sub" / "r")],
                                               [str(data / "sub" / "r.npy")])


def test_array_and_export_label_csvs_read_their_header_without_spaces(tmp_path):
    """The numpy layout's CSV and the clinical exports' labels CSV had kept ' split' and
    ' patient_id' as unknown columns, like the manifest (above): the given splits dropped."""
    from crema_jax.data.index import clinical_exports, numpy_arrays
    (tmp_path / "a.csv").write_text("row, labels , split, patient_id\n0, AF, test, P1\n")
    assert numpy_arrays._csv_rows(tmp_path / "a.csv") == [
        (2, {"row": "0", "labels": "AF", "split": "test", "patient_id": "P1"})]
    (tmp_path / "l.csv").write_text("file, labels, split\nx.xml,AF, test\n")
    rows, _ = clinical_exports._label_rows("l.csv", tmp_path)
    assert (rows["x.xml"]["labels"], rows["x.xml"]["split"].strip()) == ("AF", "test")
    (tmp_path / "m.csv").write_text("file,Labels\nx.xml,AF\n")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'm.csv'}: column 'Labels': "
                                                   "expected 'labels' (column names are "
                                                   "lower-case)")):
        clinical_exports._label_rows("m.csv", tmp_path)
    (tmp_path / "n.csv").write_text("file\nx.xml\n")
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'n.csv'}: expected the columns "
                                                   "'file', 'labels' (optional: split), got "
                                                   "['file']")):
        clinical_exports._label_rows("n.csv", tmp_path)
