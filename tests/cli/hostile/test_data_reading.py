"""Reading one record, whatever its format: a WFDB header whose signal file lies outside its folder
or whose counts are negative, a record of one sample or without the lead a model reads, arrays of
complex, boolean or text values, HDF5 entries that are groups, loops or data kept in other files
(any file on the machine, a FIFO), CSV files beyond csv's limits or in UTF-16, an EDF header
with a negative record count, exports their own libraries (pydicom, edfio) cannot parse, a FIFO
among exports. Each is a skip with its reason or one line naming the file; nothing outside the
dataset is read."""
import json
import pathlib
import subprocess
import warnings

import h5py
import numpy as np
import pytest
import wfdb

from crema_jax.cli import embed
from crema_jax.data import synthetic
from crema_jax.data.reading import arrays, clinical_formats, read, safe_files, wfdb_records
from crema_jax.data.reading import ecg as ecg_lib
from crema_jax.data.reading.ecg import RecordError
from crema_jax.data.reading.leads import LEADS
from tests.cli.hostile.helpers import CLI, _hashes
from tests.data import clinical_files


def test_a_signal_file_outside_the_records_folder_is_a_skip(tmp_path, capsys, sit_checkpoint):
    secret = tmp_path / "secret.dat"
    secret.write_bytes(b"\x00\x01" * 30000)
    data = tmp_path / "data" / "deep"
    synthetic.write_synthetic_wfdb(data, 1, fs=500.0, seconds=10.0)
    header = (data / "SYN00000.hea").read_text().replace("SYN00000.dat", "../../secret.dat")
    (data / "EVIL.hea").write_text(header.replace("SYN00000", "EVIL", 1))
    # A record with no canonical lead (vectorcardiogram leads only): a skip too, not an abort.
    wfdb.wrsamp("VCG", fs=500.0, units=["mV"] * 3, sig_name=["vx", "vy", "vz"],
                p_signal=np.random.default_rng(1).normal(size=(5000, 3)) * 0.1, fmt=["16"] * 3,
                adc_gain=[1000.0] * 3, baseline=[0] * 3, write_dir=str(data))
    with pytest.raises(ecg_lib.RecordError) as err:
        wfdb_records.read_record(data / "EVIL")
    assert err.value.reason == "unsafe_signal_path" and "outside the record's folder" in str(
        err.value)
    before = _hashes(tmp_path / "data", secret)
    out = tmp_path / "f.npy"
    embed.COMMAND.run([f"--checkpoint={sit_checkpoint}", f"--input={data}", f"--out={out}"])
    printed = capsys.readouterr().out
    assert "skipped 2 unreadable records" in printed
    assert np.load(out).shape[0] == 1 and (tmp_path / "f.records.txt").read_text().split() == [
        "SYN00000"]
    assert _hashes(tmp_path / "data", secret) == before


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


@pytest.mark.parametrize("samples, reason", [(1, "too_short"), (2, "too_short"),
                                             (5000, "no_signal")])
def test_a_one_sample_record_is_named_too_short_not_signal_less(samples, reason):
    """One sample is flat in every lead: it was called no_signal, two samples too_short."""
    from crema_jax.data.reading.ecg import RecordError, canonical_ecg
    from crema_jax.data.reading.leads import LEADS

    with pytest.raises(RecordError) as raised:
        canonical_ecg(np.full((samples, 12), 0.5), list(LEADS), ["mV"] * 12, 500.0, path="r")
    assert raised.value.reason == reason, str(raised.value)


def test_a_lead_i_model_skips_a_record_without_lead_i(tmp_path, cinc_sample_dir):
    """A record holding V1 alone gave a lead-I model's prediction of an all-zero ECG, without
    a word; it is a no_signal skip naming the record and the lead."""
    import numpy as np
    import wfdb

    from crema_jax.data.pipeline.sources import Reading
    from crema_jax.data.reading.ecg import RecordError
    signal = wfdb.rdrecord(str(cinc_sample_dir / "E07500")).p_signal
    reading = Reading(leads=("I",))
    present = np.zeros(12, bool)
    present[6] = True                                        # V1 only
    with pytest.raises(RecordError) as err:
        reading.element(signal.T.astype(np.float32), 500.0, present, None, path="one_V1")
    assert err.value.reason == "no_signal" and "one_V1" in str(err.value) and "(I)" in str(
        err.value)
    present[0] = True                                        # with lead I: read as before
    out = reading.element(signal.T.astype(np.float32), 500.0, present, None, path="x")
    assert out["lead_present"].tolist() == [True] + [False] * 11
    np.testing.assert_allclose(out["signal"][0], signal[:, 0], rtol=1e-6)
    assert not out["signal"][1:].any()


@pytest.mark.parametrize("dtype", [np.complex64, np.bool_, "U4"])
def test_arrays_of_values_that_are_no_real_numbers_are_skipped(tmp_path, dtype):
    """complex -> float64 dropped the imaginary part with a ComplexWarning and went on."""
    values = np.ones((12, 1000)) * (1 + 2j)
    np.save(tmp_path / "x.npy", values.astype(dtype) if dtype != "U4" else values.astype("U4"))
    fmt = arrays.ArrayFormat(fs=500.0, leads=LEADS)
    with pytest.raises(RecordError, match=r"x.npy: array of (complex64|bool|<U4), expected real "
                                          r"numbers") as raised:
        read.read(str(tmp_path / "x.npy"), fmt)
    assert raised.value.reason == "bad_dtype"
    ints = np.random.default_rng(0).integers(-500, 500, (12, 1000)).astype(np.int16)
    np.save(tmp_path / "y.npy", ints)
    np.testing.assert_array_equal(read.read(str(tmp_path / "y.npy"), fmt, target_fs=None,
                                            derive_limb_leads=False).signal, ints)


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


def _edf(tmp_path, records_field: bytes):
    rng = np.random.default_rng(0)
    stored = clinical_files.write_edf(tmp_path / "x.edf", rng.normal(0, 0.5, (12, 2500)), 500)
    data = bytearray((tmp_path / "x.edf").read_bytes())
    data[236:244] = records_field.ljust(8)
    (tmp_path / "x.edf").write_bytes(bytes(data))
    return tmp_path / "x.edf", stored


def test_an_edf_with_a_negative_record_count_is_refused_and_minus_one_is_read_quietly(tmp_path):
    path, _ = _edf(tmp_path, b"-5")
    with pytest.raises(RecordError, match="EDF header says -5 data records, expected a count or "
                                          "-1") as raised:
        clinical_formats.parse(path)
    assert raised.value.reason == "unreadable"
    path, stored = _edf(tmp_path, b"-1")  # the length is unknown: the file's 5 records count
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parsed = clinical_formats.parse(path)
    assert [str(w.message) for w in caught] == []
    assert parsed.units == ["uV"] * 12
    np.testing.assert_allclose(parsed.signal.T / 1000.0, stored, rtol=1e-12, atol=1e-12)


def _library_failures(folder, cinc_sample_dir):
    """Exports on which pydicom or edfio themselves raise (no RecordError of ours): a DICOM
    ChannelBaseline written with a comma decimal ("0,0", as some European systems write it);
    EDF headers giving a 0-s data record or 0 signals."""
    import wfdb

    from tests.data import clinical_files as cf
    signal_mv = wfdb.rdrecord(str(cinc_sample_dir / "E07500")).p_signal.T.copy()
    cf.write_dicom(folder / "good.dcm", signal_mv, 500.0)
    data = (folder / "good.dcm").read_bytes()
    tag = b":\x00\x13\x02DS\x04\x00"  # (003A,0213) ChannelBaseline, DS, 4 bytes
    assert tag + b"0.0 " in data
    (folder / "comma.dcm").write_bytes(data.replace(tag + b"0.0 ", tag + b"0,0 "))
    cf.write_edf(folder / "edf.edf", signal_mv, 500.0)
    edf = (folder / "edf.edf").read_bytes()
    (folder / "duration0.edf").write_bytes(edf[:244] + b"0       " + edf[252:])
    (folder / "signals0.edf").write_bytes(edf[:252] + b"0   " + edf[256:])
    (folder / "edf.edf").unlink()
    return ["comma.dcm", "duration0.edf", "signals0.edf"]


def test_an_export_its_library_cannot_parse_is_a_counted_skip(tmp_path, cinc_sample_dir):
    folder = tmp_path / "exports"
    folder.mkdir()
    bad = _library_failures(folder, cinc_sample_dir)
    out = tmp_path / "cache"
    done = subprocess.run(CLI + ["prepare", "--layout=clinical_exports", f"--root={folder}",
                                 f"--out={out}", "--workers=1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "prepared 1 records, skipped 3"
    skipped = json.loads((out / "summary.json").read_text())["skipped"]
    assert {r: s["count"] for r, s in skipped.items()} == {"unreadable": 3}
    examples = json.dumps(skipped)
    assert all(name in examples for name in bad)


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
