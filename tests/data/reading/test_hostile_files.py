"""Readers bounded by a file's real kind and size: FIFOs, devices and links to /dev/zero named like
records, headers claiming more samples than their files hold, .npz and deflated DICOM bombs, an
HDF5 dataset claiming 2e9 entries in a small file, and folders with symlink loops. Every case
runs in a child process with a timeout and an address-space limit (tests/data/bounded.py), so a
read that blocks or allocates without bound fails the test; each asserts the skip reason and
that no input changed."""
import io
import json
import os
import shutil
import struct
import zlib

import h5py
import numpy as np
import pytest

from crema_jax.data.index import dataset_index
from tests.data.bounded import hashes, run_bounded

SAMPLE = dataset_index.sample_data_dir()

# Reads every record of an index (argv[1]: layout, argv[2]: root, argv[3]: layout options as
# JSON) and prints {record id: skip reason or null} as JSON.
READ_ALL = """
import json, sys
from crema_jax.data.index import registry
from crema_jax.data.reading import read
from crema_jax.data.reading.ecg import RecordError
index = registry.build_index(sys.argv[1], sys.argv[2], **json.loads(sys.argv[3]))
out = {}
for info in index.records:
    try:
        read.read(info.path, info.reader)
        out[info.record_id] = None
    except RecordError as err:
        out[info.record_id] = err.reason
print(json.dumps(out))
"""


def _read_all(layout: str, root, options=None, *, memory_gib: float = 1.5) -> dict:
    result = run_bounded(READ_ALL, argv=(layout, str(root), json.dumps(options or {})),
                         timeout_s=90, memory_gib=memory_gib)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _copy_record(folder, name: str, source: str = "E07500"):
    text = (SAMPLE / f"{source}.hea").read_text().replace(source, name)
    (folder / f"{name}.hea").write_text(text)
    shutil.copyfile(SAMPLE / f"{source}.mat", folder / f"{name}.mat")
    return text


def test_special_files_named_like_wfdb_records_are_skipped_unopened(tmp_path):
    _copy_record(tmp_path, "good")
    os.mkfifo(tmp_path / "fifo_header.hea")                    # open() would block for ever
    (tmp_path / "zero_header.hea").symlink_to("/dev/zero")     # read() would never end
    _copy_record(tmp_path, "fifo_signal")
    (tmp_path / "fifo_signal.mat").unlink()
    os.mkfifo(tmp_path / "fifo_signal.mat")
    _copy_record(tmp_path, "zero_signal")
    (tmp_path / "zero_signal.mat").unlink()
    (tmp_path / "zero_signal.mat").symlink_to("/dev/zero")
    _copy_record(tmp_path, "loop_signal")
    (tmp_path / "loop_signal.mat").unlink()
    (tmp_path / "loop_signal.mat").symlink_to("loop_signal.mat")  # resolve() raises
    before = hashes(tmp_path)
    reasons = _read_all("wfdb_folder", tmp_path)
    assert reasons == {"good": None, "fifo_header": "not_a_regular_file",
                       "fifo_signal": "not_a_regular_file", "zero_header": "not_a_regular_file",
                       # a link out of the record's folder is refused before its kind is looked at
                       "zero_signal": "unsafe_signal_path", "loop_signal": "missing_signal_file"}
    assert hashes(tmp_path) == before


@pytest.mark.parametrize("fmt", ["16", "8"])  # the numpy decoder's path, and wfdb's
def test_header_claiming_1e9_samples_is_truncated_before_allocating(tmp_path, fmt):
    """10^9 samples x 12 leads would ask for 24 GB (format 16) before reading the 60 kB file;
    the header is compared with the file's size first (under a 1.5 GiB limit)."""
    text = _copy_record(tmp_path, "huge")
    lines = text.splitlines()
    record = lines[0].split()
    record[3] = "1000000000"
    lines[0] = " ".join(record)
    if fmt == "8":
        lines[1:13] = [line.replace(" 16+24 ", " 8+24 ").replace(" 16 ", " 8 ")
                       for line in lines[1:13]]
        assert all(" 8" in line for line in lines[1:13])
    (tmp_path / "huge.hea").write_text("\n".join(lines) + "\n")
    before = hashes(tmp_path)
    assert _read_all("wfdb_folder", tmp_path) == {"huge": "truncated_signal"}
    assert hashes(tmp_path) == before


def test_a_skew_longer_than_the_record_is_refused_before_allocating(tmp_path):
    """A 16x1:999999999 signal would make wfdb allocate the record plus the skew (~22 GB); a
    skew of 2 samples is legal WFDB and reads (through wfdb, which applies it). A header of
    megabytes is not a header: header_syntax, not a missing one."""
    lines = _copy_record(tmp_path, "skewed").splitlines()
    for name, skew in (("huge_skew", 999999999), ("small_skew", 2)):
        text = _copy_record(tmp_path, name).splitlines()
        text[1:13] = [line.replace(" 16x1+24 ", f" 16x1:{skew}+24 ") for line in lines[1:13]]
        (tmp_path / f"{name}.hea").write_text("\n".join(text).replace("skewed", name) + "\n")
    (tmp_path / "skewed.hea").unlink()
    (tmp_path / "skewed.mat").unlink()
    (tmp_path / "long_header.hea").write_text("long_header 12 500 5000\n# " + "A" * (5 << 20))
    before = hashes(tmp_path)
    assert _read_all("wfdb_folder", tmp_path) == {"huge_skew": "header_syntax",
                                                  "long_header": "header_syntax",
                                                  "small_skew": None}
    assert hashes(tmp_path) == before


def _sparse_record(folder, name: str, template_lines, samples: int, stated: bool = True):
    """A 12-signal format-16 record of `samples` zero samples a signal, its .dat a sparse file."""
    signals = [" ".join([f"{name}.dat", "16"] + line.split()[2:3] + ["16", "0"])
               for line in template_lines[1:13]]
    (folder / f"{name}.hea").write_text(f"{name} 12 500{f' {samples}' if stated else ''}\n"
                                        + "\n".join(signals) + "\n")
    with open(folder / f"{name}.dat", "wb") as f:
        f.truncate(2 * 12 * samples)


def test_a_record_too_long_to_read_whole_is_refused_before_allocating(tmp_path):
    """24 h of 12 leads at 500 Hz peaked at 12.8 GB; a record of more than 2**26 samples over
    its signals (whose file really holds them: a sparse file) is a too_large skip, one sample
    less reads as far as its checksums."""
    lines = _copy_record(tmp_path, "template").splitlines()
    # "long_unstated": no length in the header, so the file's size says it (wfdb reads to the end).
    for name, samples, stated in (("long", 2**26 // 12 + 1, True),
                                  ("longest_read", 2**26 // 12, True),
                                  ("long_unstated", 2**26 // 12 + 1, False)):
        _sparse_record(tmp_path, name, lines, samples, stated)
    for suffix in (".hea", ".mat"):
        (tmp_path / f"template{suffix}").unlink()
    before = hashes(tmp_path)
    # The read one sample short of the limit is all zeros: its leads are flat, none is left.
    assert _read_all("wfdb_folder", tmp_path, memory_gib=3) == {
        "long": "too_large", "longest_read": "no_signal", "long_unstated": "too_large"}
    assert hashes(tmp_path) == before


def test_multi_segment_records_check_every_segment_before_wfdb_opens_it(tmp_path):
    """A segment header that is a FIFO, a segment whose header claims 10^9 samples, a segment
    named outside the folder: each a reasoned skip; an intact two-segment record reads."""
    def multi(name: str, first: str, second: str = "seg_ok") -> None:
        (tmp_path / f"{name}.hea").write_text(f"{name}/2 12 500 10000\n{first} 5000\n"
                                              f"{second} 5000\n")
    lines = _copy_record(tmp_path, "seg_ok").splitlines()
    multi("good", "seg_ok")
    os.mkfifo(tmp_path / "seg_fifo.hea")
    multi("fifo", "seg_fifo")
    _copy_record(tmp_path, "seg_huge")
    record = lines[0].replace("seg_ok", "seg_huge").split()
    record[3] = "1000000000"
    (tmp_path / "seg_huge.hea").write_text("\n".join([" ".join(record), *[
        line.replace("seg_ok", "seg_huge") for line in lines[1:]]]) + "\n")
    multi("huge", "seg_huge")
    multi("outside", "../elsewhere")
    # 12 x 500,000 samples (12 MB) listed 12 times: 72e6 samples, more than read whole, whether
    # the master header states its length or understates it.
    _sparse_record(tmp_path, "seg_big", lines, 500_000)
    for name, length in (("repeated", 12 * 500_000), ("repeated_understated", 5000)):
        (tmp_path / f"{name}.hea").write_text(f"{name}/12 12 500 {length}\n"
                                              + f"seg_big {length // 12}\n" * 12)
    before = hashes(tmp_path)
    reasons = _read_all("wfdb_folder", tmp_path)
    assert {k: reasons[k] for k in ("good", "fifo", "huge", "outside", "repeated",
                                    "repeated_understated")} == {
        "good": None, "fifo": "not_a_regular_file", "huge": "truncated_signal",
        "outside": "unsafe_signal_path", "repeated": "too_large",
        "repeated_understated": "too_large"}
    assert hashes(tmp_path) == before


def test_special_files_named_like_per_record_npy_are_skipped_unopened(tmp_path):
    np.save(tmp_path / "good.npy", np.zeros((12, 5000), np.float32) + np.arange(5000) / 5000)
    os.mkfifo(tmp_path / "fifo.npy")
    (tmp_path / "zero.npy").symlink_to("/dev/zero")
    before = hashes(tmp_path)
    reasons = _read_all("numpy", tmp_path, {"fs": 500.0})
    assert reasons == {"good": None, "fifo": "not_a_regular_file",
                       "zero": "not_a_regular_file"}
    assert hashes(tmp_path) == before


def _deflated_zeros(header: bytes, zero_bytes: int) -> tuple[list[bytes], int]:
    """A raw deflate stream of `header` + `zero_bytes` zeros, ~1/1000 of that, as its pieces, and
    its CRC-32. Made by hand (zlib would compress every byte): after a full flush, each further
    MiB of zeros compresses to the same block, which is repeated."""
    mib = 1 << 20
    assert zero_bytes % mib == 0
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    start = compressor.compress(header) + compressor.flush(zlib.Z_FULL_FLUSH)
    block = compressor.compress(bytes(mib)) + compressor.flush(zlib.Z_FULL_FLUSH)
    assert compressor.compress(bytes(mib)) + compressor.flush(zlib.Z_FULL_FLUSH) == block
    end = compressor.flush(zlib.Z_FINISH)
    crc = zlib.crc32(header)
    zeros = bytes(mib)
    for _ in range(zero_bytes // mib):
        crc = zlib.crc32(zeros, crc)
    return [start] + [block] * (zero_bytes // mib) + [end], crc


def _deflate_bomb_zip(path, member: str, header: bytes, zero_bytes: int) -> None:
    """A one-member zip: `header` + `zero_bytes` zeros, deflated (_deflated_zeros)."""
    pieces, crc = _deflated_zeros(header, zero_bytes)
    size, compressed = len(header) + zero_bytes, sum(map(len, pieces))
    name = member.encode()
    fields = (20, 0, 8, 0, 0, crc, compressed, size, len(name))
    local = struct.pack("<4s5H3I2H", b"PK\x03\x04", *fields, 0) + name
    central = struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 20, *fields, 0, 0, 0, 0, 0, 0) + name
    with open(path, "wb") as f:
        f.write(local)
        f.writelines(pieces)
        directory = f.tell()
        f.write(central)
        f.write(struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, 1, 1, len(central), directory, 0))


def test_deflated_dicom_bomb_is_refused_before_inflating(tmp_path):
    """A 2 MB deflated DICOM file whose body inflates to 2 GiB (an OB element of zeros): pydicom
    inflates a deflated file whole before any field can be checked, so its inflated size is
    counted first, in bounded pieces, under a 1.5 GiB limit."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.9.1.1"  # 12-lead ECG waveform
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    stream = io.BytesIO()
    pydicom.dcmwrite(stream, ds, enforce_file_format=True)
    # Preamble 128 + "DICM" + the group-length element 12 + the group (PS3.10 7.1): then the body.
    group_length = struct.unpack("<I", stream.getvalue()[140:144])[0]
    file_meta = stream.getvalue()[:144 + group_length]
    zeros = 2 << 30
    element = struct.pack("<HH2sHI", 0x0009, 0x1010, b"OB", 0, zeros)  # a private OB element
    pieces, _ = _deflated_zeros(element, zeros)
    path = tmp_path / "exams" / "bomb.dcm"
    path.parent.mkdir()
    with open(path, "wb") as f:
        f.write(file_meta)
        f.writelines(pieces)
    assert path.stat().st_size < 4 << 20
    before = hashes(tmp_path)
    result = run_bounded("""
        import sys
        from crema_jax.data.reading import clinical_formats
        from crema_jax.data.reading.ecg import RecordError
        try:
            clinical_formats.parse(sys.argv[1])
        except RecordError as err:
            print(err.reason)
    """, argv=(str(path),), memory_gib=1.5, timeout_s=90)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["too_large"]
    assert hashes(tmp_path) == before


def test_npz_bomb_is_refused_from_its_header(tmp_path):
    """A 3.5 MB .npz inflating to 3.4 GB (more than MAX_INFLATED_BYTES, which every worker
    process would hold): its shape is read from the member's .npy header, under a 1.5 GiB
    limit, and the layout refuses it in one message naming the file and what to do."""
    records, shape = 7000, (12, 5000)          # float64: 480 kB a record, 3.36 GB in all
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, *shape)))
    header["shape"] = (records, *shape)
    stream = io.BytesIO()
    np.lib.format.write_array_header_1_0(stream, header)
    payload = records * 12 * 5000 * 8
    padded = -(-payload // (1 << 20)) * (1 << 20)
    _deflate_bomb_zip(tmp_path / "bomb.npz", "ecgs.npy", stream.getvalue(), padded)
    assert os.path.getsize(tmp_path / "bomb.npz") < 8 << 20
    before = hashes(tmp_path)
    result = run_bounded("""
        import sys
        from crema_jax.data.index import registry
        try:
            registry.build_index("numpy", sys.argv[1], fs=500.0)
        except ValueError as err:
            print(err)
    """, argv=(str(tmp_path / "bomb.npz"),), memory_gib=1.5, timeout_s=90)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines() == [
        f"numpy layout: {tmp_path / 'bomb.npz'}: member ecgs.npy announces (7000, 12, 5000) "
        "float64 (3360000000 bytes), inflated in every process; store it with np.savez "
        "(uncompressed: memory-mapped) or as .npy"]
    assert hashes(tmp_path) == before


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
@pytest.mark.parametrize("order", ["C", "F"])
def test_npz_records_read_as_numpy_loads_them(tmp_path, save, order):
    """Stored members are memory-mapped and compressed ones inflated on first use, from their
    own headers: every row equals np.load's."""
    from crema_jax.data.reading import arrays
    x = np.asarray(np.random.default_rng(0).standard_normal((3, 12, 700)), order=order)
    save(tmp_path / "x.npz", a=x[:1], signals=x)
    fmt = arrays.ArrayFormat(fs=500.0, leads=("I",) * 12, key="signals")
    with np.load(tmp_path / "x.npz") as reference:
        expected = reference["signals"]
    assert arrays.array_shape(tmp_path / "x.npz", "signals") == (3, 12, 700)
    mapped = isinstance(arrays._npz_member(str(tmp_path / "x.npz"), "signals"), np.memmap)
    assert mapped == (save is np.savez)
    for row in range(3):
        stored = arrays._record_array(arrays.locator(tmp_path / "x.npz", row), fmt)
        np.testing.assert_array_equal(np.asarray(stored), expected[row])


def _exams_csv(folder, part_name: str, exam_ids) -> None:
    """CODE-15%'s exams.csv naming `exam_ids` (patient = exam, no label) in part `part_name`."""
    from crema_jax.data.index import code15
    columns = ["exam_id", "patient_id", *code15.CODE15_LABELS, "trace_file"]
    rows = [[str(e), str(e), *["False"] * len(code15.CODE15_LABELS), part_name]
            for e in exam_ids]
    (folder / "exams.csv").write_text("\n".join(",".join(r) for r in [columns, *rows]) + "\n")


def test_hdf5_exam_id_claiming_2e9_entries_is_not_loaded(tmp_path):
    """CODE-15%'s part with an `exam_id` of 2e9 int64 (16 GB) in a file of kilobytes: the
    shape is compared with the stored bytes from the metadata, and the part's exams (from
    exams.csv) are skipped as truncated_signal."""
    part = tmp_path / "exams_part0.hdf5"
    with h5py.File(part, "w") as f:
        f.create_dataset("exam_id", shape=(2_000_000_000,), dtype="<i8")
        f.create_dataset("tracings", shape=(2_000_000_000, 4096, 12), dtype="<f4")
    assert os.path.getsize(part) < 64 << 10
    _exams_csv(tmp_path, part.name, (7, 8))
    before = hashes(tmp_path)
    assert _read_all("code15", tmp_path) == {"7": "truncated_signal", "8": "truncated_signal"}
    assert hashes(tmp_path) == before


@pytest.mark.parametrize("ids", [np.array([7.0, 8.0, np.inf]), np.array([7.4, 8.0, 7.0]),
                                 np.array([(7, 1), (8, 1), (9, 1)], "i4,i4")],
                         ids=["inf", "fractional", "compound"])
def test_code15_exam_ids_that_are_not_integers_skip_their_part(tmp_path, ids):
    """exam_id of floats or records: inf and a compound type had ended the index in a traceback,
    and 7.4 had become exam 7 (with exam 7's labels, the real exam 7 a duplicate)."""
    part = tmp_path / "exams_part0.hdf5"
    with h5py.File(part, "w") as f:
        f["exam_id"] = ids
        f["tracings"] = np.ones((3, 4096, 12), np.float32)
    _exams_csv(tmp_path, part.name, (7, 8))
    before = hashes(tmp_path)
    assert _read_all("code15", tmp_path) == {"7": "bad_dtype", "8": "bad_dtype"}
    assert hashes(tmp_path) == before


@pytest.fixture
def looped_folder(tmp_path):
    """Records in a/ and a/b/, with links a/b/up -> a, a/self -> ., and a linked folder that
    leads outside the tree; none of them is walked."""
    root = tmp_path / "a"
    (root / "b").mkdir(parents=True)
    _copy_record(root, "r1")
    _copy_record(root / "b", "r2", "E07501")
    (root / "b" / "up").symlink_to(root)
    (root / "self").symlink_to(".")
    outside = tmp_path / "outside"
    outside.mkdir()
    _copy_record(outside, "r3", "E07502")
    (root / "elsewhere").symlink_to(outside)
    return root


def test_folder_walks_never_enter_symlinked_folders(looped_folder):
    root = looped_folder
    before = hashes(root.parent)
    result = run_bounded("""
        import json, sys
        from crema_jax.data.index import dataset_index, registry
        root = sys.argv[1]
        print(json.dumps({
            "folder": dataset_index.expand_records(root),
            "glob": dataset_index.expand_records(root + "/**/*.hea"),
            "glob_b": dataset_index.expand_records(root + "/*/*.hea"),
            "layout": [r.path for r in registry.build_index("wfdb_folder", root).records],
        }))
    """, argv=(str(root),), timeout_s=60)
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.splitlines()[-1])
    both = [str(root / "b" / "r2"), str(root / "r1")]
    assert found == {"folder": both, "glob": both, "glob_b": [str(root / "b" / "r2")],
                     "layout": [str(root / "r1"), str(root / "b" / "r2")]}
    assert hashes(root.parent) == before


def test_per_record_npy_folder_walk_never_enters_symlinked_folders(tmp_path):
    (tmp_path / "x").mkdir()
    np.save(tmp_path / "x" / "one.npy", np.ones((12, 5000), np.float32))
    (tmp_path / "x" / "loop").symlink_to(tmp_path)
    result = run_bounded("""
        import sys
        from crema_jax.data.index import registry
        print([r.path for r in registry.build_index("numpy", sys.argv[1], fs=500.0).records])
    """, argv=(str(tmp_path),), timeout_s=60)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == repr([str(tmp_path / "x" / "one.npy")])
