"""A WFDB record whose signal file is not the one its header describes is skipped with a reason,
never decoded as noise: the header's per-signal checksums (WFDB: the sum of the signal's samples
as a signed 16-bit integer) and a .mat file's MATLAB v4 header (wfdb2mat's 'val' matrix, signals
as rows) are checked. The references are written in the tests: the checksum with numpy from the
WFDB header specification, the .mat files with scipy.io.savemat."""
import io
import shutil

import numpy as np
import pytest
import scipy.io

from crema_jax.data.index import dataset_index
from crema_jax.data.reading import wfdb_records
from crema_jax.data.reading.ecg import RecordError

SAMPLE = dataset_index.sample_data_dir()


def _samples(name: str = "E07500") -> np.ndarray:
    """(12, T) int16 digital samples of a sample record, decoded here from its bytes."""
    return np.frombuffer((SAMPLE / f"{name}.mat").read_bytes()[24:], "<i2").reshape(-1, 12).T


def _checksum(row: np.ndarray) -> int:
    """WFDB header specification: the 16-bit two's complement sum of all the signal's samples."""
    total = int(np.sum(row.astype(np.int64)))
    return (total + 32768) % 65536 - 32768


def _write(folder, name: str, samples: np.ndarray, *, mat: bytes | None = None,
           checksums=None, fmt: str = "16+24") -> str:
    """A record `name` (header from E07500's, gains and names kept) holding `samples` (12, T)."""
    lines = (SAMPLE / "E07500.hea").read_text().splitlines()
    record = lines[0].split()
    record[0], record[3] = name, str(samples.shape[1])
    out = [" ".join(record)]
    sums = [_checksum(row) for row in samples] if checksums is None else checksums
    for line, row, checksum in zip(lines[1:13], samples, sums):
        t = line.split()
        t[0], t[1], t[5] = f"{name}.mat", fmt, str(int(row[0]))
        t[6] = "" if checksum is None else str(checksum)
        out.append(" ".join(x for x in t if x) if checksum is not None else " ".join(t[:6]))
    (folder / f"{name}.hea").write_text("\n".join(out + lines[13:]) + "\n")
    if mat is None:
        buffer = io.BytesIO()
        scipy.io.savemat(buffer, {"val": samples.astype(np.int16)}, format="4")
        mat = buffer.getvalue()
    (folder / f"{name}.mat").write_bytes(mat)
    return str(folder / name)


def _reason(path) -> str | None:
    try:
        wfdb_records.read_record(path, target_fs=None)
    except RecordError as err:
        return err.reason
    return None


def test_checksums_are_the_signed_16_bit_sums_of_the_header_spec(tmp_path):
    """The sample records' header checksums are what the spec's formula gives (so the reference
    is right), and edited samples with checksums recomputed by numpy read back exactly."""
    lines = (SAMPLE / "E07500.hea").read_text().splitlines()[1:13]
    assert [int(line.split()[6]) for line in lines] == [_checksum(r) for r in _samples()]
    samples = _samples().copy()
    samples[:, ::3] = 32000  # sums far beyond 16 bits: the wrap-around is exercised
    path = _write(tmp_path, "edited", samples)
    ecg = wfdb_records.read_record(path, target_fs=None, derive_limb_leads=False)
    gains = np.array([float(line.split()[2].split("(")[0]) for line in lines])
    np.testing.assert_allclose(ecg.signal, samples / gains[:, None], rtol=1e-6)


def test_a_signal_file_that_does_not_sum_to_its_checksum_is_skipped(tmp_path):
    samples = _samples()
    sums = [_checksum(row) for row in samples]
    wrong = list(sums)
    wrong[2] = _checksum(samples[2]) + 1  # one signal's checksum off by one sample unit
    path = _write(tmp_path, "one_off", samples, checksums=wrong)
    with pytest.raises(RecordError, match=r"signal 3 \(III\) sums to checksum") as err:
        wfdb_records.read_record(path)
    assert err.value.reason == "checksum_mismatch"
    flipped = samples.copy()
    flipped[5, 1000] ^= 0x40  # a flipped bit in the file; the header still describes the old
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"val": flipped}, format="4")
    assert _reason(_write(tmp_path, "flipped", samples, checksums=sums,
                          mat=buffer.getvalue())) == "checksum_mismatch"
    # A header without checksums (optional, as the lead names after them) is read past them:
    # only the missing lead names stop it.
    assert _reason(_write(tmp_path, "no_sums", flipped, checksums=[None] * 12)) == "no_signal"


def test_a_mat_file_contradicting_its_header_is_skipped_not_decoded(tmp_path):
    samples = _samples()
    sums = [_checksum(row) for row in samples]

    def mat(**kwargs) -> bytes:
        buffer = io.BytesIO()
        scipy.io.savemat(buffer, **kwargs)
        return buffer.getvalue()

    cases = {
        "transposed": mat(mdict={"val": samples.T.copy()}, format="4"),
        "renamed": mat(mdict={"value": samples}, format="4"),   # data at byte 26, not 24
        "as_int32": mat(mdict={"val": samples.astype(np.int32)}, format="4"),
        "matlab5": mat(mdict={"val": samples}, format="5"),
        "text": b"not a MATLAB file\n" * 8000,
    }
    reasons = {name: _reason(_write(tmp_path, name, samples, checksums=sums, mat=data))
               for name, data in cases.items()}
    assert reasons == dict.fromkeys(cases, "signal_file_mismatch")
    with pytest.raises(RecordError, match=r"its matrix is 5000 x 12, the header announces 12 "
                                          r"signals x 5000 samples"):
        wfdb_records.read_record(tmp_path / "transposed")
    with pytest.raises(RecordError, match="its data starts at byte 26, the header reads from "
                                          "byte 24"):
        wfdb_records.read_record(tmp_path / "renamed")
    # The same samples as a well-formed v4 file, and as a plain signal file named .mat.
    assert _reason(_write(tmp_path, "intact", samples, checksums=sums)) is None
    raw = samples.T.astype("<i2").tobytes()
    assert _reason(_write(tmp_path, "raw", samples, checksums=sums, mat=raw, fmt="16")) is None


def test_a_shuffled_copy_of_another_record_is_caught(tmp_path):
    """A .mat file of another record under this record's name: same size, same MATLAB header;
    only the checksums tell them apart."""
    path = _write(tmp_path, "swapped", _samples("E07500"))
    shutil.copyfile(SAMPLE / "E07501.mat", tmp_path / "swapped.mat")
    assert _reason(path) == "checksum_mismatch"


@pytest.mark.parametrize("fmt, high, gain", [("16", 30000, 1000.0), ("212", 2000, 200.0),
                                             ("80", 100, 100.0), ("24", 2**22, 1e5),
                                             ("32", 2**30, 1e6)])
def test_wfdb_written_checksums_verify_in_every_decoded_format(tmp_path, fmt, high, gain):
    """wfdb.wrsamp computes its own checksums: each format reads, and one changed sample (the
    low bit of the first) is a checksum_mismatch. (A change by a multiple of 65536, possible in
    24 and 32 bits, leaves a 16-bit checksum as it was: WFDB's checksums cannot see it.)"""
    import wfdb
    digital = np.random.default_rng(1).integers(-high, high, (5000, 12)).astype(np.int32)
    names = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    wfdb.wrsamp("rec", fs=500, units=["mV"] * 12, sig_name=names, d_signal=digital,
                fmt=[fmt] * 12, adc_gain=[gain] * 12, baseline=[0] * 12, write_dir=str(tmp_path))
    ecg = wfdb_records.read_record(tmp_path / "rec", target_fs=None, derive_limb_leads=False)
    np.testing.assert_allclose(ecg.signal, digital.T / gain, rtol=1e-6)
    data = bytearray((tmp_path / "rec.dat").read_bytes())
    data[0] ^= 0x01
    (tmp_path / "rec.dat").write_bytes(bytes(data))
    assert _reason(tmp_path / "rec") == "checksum_mismatch"
