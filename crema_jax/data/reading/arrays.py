"""Records stored as arrays (HDF5, .npy, .npz), read into the canonical Ecg (canonical_ecg).

An ArrayFormat (a RecordInfo's `reader`; read.py) says how: `path` is "FILE#ROW" for row ROW of
an array of records (an HDF5 dataset, a .npy or .npz array, records along axis 0), or "FILE" for
a .npy file holding one record. An array states neither its sampling rate nor its leads nor its
unit, so the format does (the layout knows them from the dataset's documentation or the user):
fs, the lead name of each channel, the unit, which axis of one record is time, and whether zero
padding surrounds the signal (CODE-15% centres 7 s and 10 s exams in 4096 samples).

A record that cannot be used raises RecordError, the message naming the file:
  truncated_signal  the file is shorter than its own header says (HDF5 superblock, .npy header)
  unreadable        anything else the HDF5 / NumPy libraries refuse, including an array of
                    Python objects (it would need unpickling, which is never done)
  bad_shape         not (records, samples, channels) / (samples, channels) with one channel per
                    stated lead (the shape found and the one expected are named)
  bad_dtype         values that are not real numbers (complex: the imaginary part would be
                    dropped; text; booleans)
  missing_row       ROW beyond the array's records
  not_a_regular_file  a FIFO, device or socket (never opened: reading it could block or never end)
  too_large         a compressed .npz member inflating beyond MAX_INFLATED_BYTES, or one
                    record (a row, or a per-record .npy) beyond MAX_RECORD_BYTES stored or
                    limits.MAX_SAMPLES values, from its header
  no_signal         nothing but zero padding, or every lead NaN (canonical_ecg's reasons follow)

Shapes come from headers, never from loading an array: the .npy header, the .npz member's own
.npy header (inflating only its first bytes), the HDF5 dataset's metadata. What a header claims
is compared with what the file stores before anything is read: a .npy file or an unfiltered
HDF5 dataset must hold every byte of its shape, a compressed one at most DEFLATE_MAX_RATIO times
its stored bytes.

Reads are lazy and per record: an HDF5 file stays open in each process and one row is read per
record (h5py); a .npy array and an uncompressed .npz member (np.savez) are memory-mapped; a
compressed member (np.savez_compressed) is inflated whole, once per process -- use .npy or
np.savez for arrays larger than memory.
"""
from __future__ import annotations

import dataclasses
import math
import os
import zipfile
import zlib

import numpy as np

from crema_jax.data.reading import safe_files
from crema_jax.data.reading.ecg import RecordError, canonical_ecg, check_sampling_rate
from crema_jax.data.reading.limits import FS_RANGE, MAX_SAMPLES
from crema_jax.runtime import files

HDF5_SUFFIXES = (".hdf5", ".h5", ".hdf")
# DEFLATE (zip, HDF5 gzip) never compresses better than ~1032:1, so more than that many bytes per
# stored byte is a header that lies (or a file cut short).
DEFLATE_MAX_RATIO = 1032
MAX_INFLATED_BYTES = 2 << 30   # a compressed .npz member inflated whole in each process
MAX_RECORD_BYTES = 256 << 20   # one record: 12 leads x 2.8 M float64 samples (3 h at 250 Hz)


@dataclasses.dataclass(frozen=True)
class ArrayFormat:
    fs: float                          # sampling rate, Hz
    leads: tuple[str, ...]             # lead name of each channel, in stored order
    units: str = "mV"                  # a unit canonical_ecg knows (mV, uV, V, ...)
    time_axis: int = 1                 # axis of time in ONE record: 1 = (leads, samples)
    key: str = ""                      # HDF5 dataset / .npz member ("" = the only .npz member)
    trim_zero_padding: bool = False    # drop leading/trailing samples that are 0 in every lead


def locator(file, row: int | None = None) -> str:
    """A record's path: "FILE#ROW" for a row of an array of records, else FILE."""
    return os.fspath(file) if row is None else f"{os.fspath(file)}#{int(row)}"


def split_locator(path: str) -> tuple[str, int | None]:
    file, sep, row = str(path).rpartition("#")
    return (file, int(row)) if sep and row.isdigit() else (str(path), None)


# ---------------------------------------------------------------- open files, one set per process
_OPEN: dict = {}
_MAX_OPEN = 32


def _cached(key, opener):
    key = (os.getpid(), *key)  # a forked worker opens its own handles
    if key not in _OPEN:
        if len(_OPEN) >= _MAX_OPEN:
            old_key = next(iter(_OPEN))
            old = _OPEN.pop(old_key)
            if old_key[0] == os.getpid() and hasattr(old, "close"):
                old.close()
        _OPEN[key] = opener()
    return _OPEN[key]


class _Hdf5Dataset:
    """An open HDF5 file and one of its datasets (looking the dataset up costs ~0.3 ms, as much
    as reading a 10 s exam, so it is looked up once per process)."""

    def __init__(self, file: str, key: str):
        import h5py  # optional heavy import (~0.1 s, HDF5's C library): HDF5 datasets only

        _check_regular(file, file)
        try:
            self.handle = h5py.File(file, "r")
        except OSError as err:
            reason = "truncated_signal" if "truncated" in str(err) else "unreadable"
            raise RecordError(file, reason, f"{file}: HDF5 file does not open: "
                              f"{err}") from None
        if key not in self.handle:
            names = sorted(self.handle)
            self.handle.close()
            raise RecordError(file, "unreadable", f"{file}: no HDF5 dataset {key!r} "
                              f"(it holds {names})")
        try:  # a link may dangle, loop or point to another file
            if isinstance(self.handle.get(key, getlink=True), h5py.ExternalLink):
                raise ValueError("a link to another file; only data inside the file is read")
            self.dataset = self.handle[key]
        except (KeyError, RuntimeError, OSError, ValueError) as err:
            self.handle.close()
            raise RecordError(file, "unreadable", f"{file}: HDF5 entry {key!r} does not open "
                              f"({err})") from None
        if not isinstance(self.dataset, h5py.Dataset):
            self.handle.close()
            raise RecordError(file, "unreadable", f"{file}: HDF5 entry {key!r} is a "
                              f"{type(self.dataset).__name__}, expected a dataset of arrays")
        elsewhere = hdf5_elsewhere(self.dataset)
        if elsewhere:
            self.handle.close()
            raise RecordError(file, "unreadable", f"{file}: {elsewhere}")
        problem = hdf5_storage_problem(self.dataset)
        if problem:
            self.handle.close()
            raise RecordError(file, "truncated_signal", f"{file}: {problem}")

    def close(self):
        self.handle.close()


def _check_regular(path: str, file: str) -> None:
    kind = files.special_kind(file, follow_links=True)
    if kind is not None:
        raise RecordError(path, "not_a_regular_file", f"{file} is {kind}, not a regular file")


def hdf5_elsewhere(dataset) -> str | None:
    """Why an HDF5 dataset is not read (None: it is): its bytes live in other files (external
    storage, a virtual dataset), which could be any file on the machine, or a FIFO."""
    if dataset.external or dataset.is_virtual:
        return (f"dataset {dataset.name} is stored in other files "
                f"({'virtual' if dataset.is_virtual else 'external storage'}); only data "
                "inside the file itself is read")
    return None


def hdf5_storage_problem(dataset) -> str | None:
    """Why an HDF5 dataset's shape cannot be what the file stores (None when it can): without
    filters every byte must be stored; with filters at most DEFLATE_MAX_RATIO per stored byte
    (metadata only: nothing is read)."""
    nbytes = math.prod(dataset.shape or ()) * dataset.dtype.itemsize
    stored = dataset.id.get_storage_size()
    filtered = dataset.id.get_create_plist().get_nfilters() > 0
    if nbytes <= (stored * DEFLATE_MAX_RATIO if filtered else stored):
        return None
    return (f"dataset {dataset.name} announces shape {tuple(dataset.shape)} {dataset.dtype} "
            f"({nbytes} bytes), the file stores {stored} bytes of it"
            f"{' compressed' if filtered else ''}")


def _hdf5_dataset(file: str, key: str):
    if not os.path.isfile(file):
        raise RecordError(file, "missing_signal_file", f"{file} does not exist")
    return _cached(("h5", file, key), lambda: _Hdf5Dataset(file, key)).dataset


def open_npy(file: str):
    """A memory-mapped .npy array, after checking its header against the file's size (a
    RecordError naming the file: missing, not a regular file, not .npy, objects, truncated)."""
    try:
        with safe_files.open_regular(file) as f:
            shape, dtype, _ = _npy_header(f)
            offset = f.tell()
    except safe_files.NotRegularFileError as err:
        raise RecordError(file, "not_a_regular_file", str(err)) from None
    except FileNotFoundError:
        raise RecordError(file, "missing_signal_file", f"{file} does not exist") \
            from None
    except (OSError, ValueError) as err:
        raise RecordError(file, "unreadable", f"{file}: not a .npy array: {err}") \
            from None
    if dtype.hasobject:
        raise RecordError(file, "unreadable", f"{file} holds Python objects; expected a "
                          "numeric array (object arrays need unpickling: never done)")
    need = offset + math.prod(shape) * dtype.itemsize
    if os.path.getsize(file) < need:
        raise RecordError(file, "truncated_signal", f"{file} is truncated: its header "
                          f"announces {shape} {dtype} ({need} bytes), the file holds "
                          f"{os.path.getsize(file)}")
    return np.load(file, mmap_mode="r", allow_pickle=False)


class _Inflated:
    """A compressed .npz member: shape and dtype from its header; inflated whole on the first
    read of its values (once per process)."""

    def __init__(self, file: str, info: zipfile.ZipInfo, shape, dtype, fortran: bool):
        self.file, self.info, self.shape, self.dtype = file, info, shape, dtype
        self.ndim, self.fortran, self._values = len(shape), fortran, None

    def values(self) -> np.ndarray:
        if self._values is None:
            nbytes = math.prod(self.shape) * self.dtype.itemsize
            try:
                with zipfile.ZipFile(self.file) as archive, archive.open(self.info) as member:
                    _npy_header(member)
                    data = member.read(nbytes)
            except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
                raise RecordError(self.file, "unreadable", f"{self.file}: member "
                                  f"{self.info.filename} does not inflate: {err}") from None
            if len(data) < nbytes:
                raise RecordError(self.file, "truncated_signal", f"{self.file}: member "
                                  f"{self.info.filename} holds {len(data)} of {nbytes} bytes")
            self._values = np.frombuffer(data, self.dtype).reshape(
                self.shape, order="F" if self.fortran else "C")
        return self._values

    def __getitem__(self, item):
        return self.values()[item]

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.values(), dtype)


def _npz_member(file: str, key: str):
    def load():
        _check_regular(file, file)
        try:
            with zipfile.ZipFile(file) as archive:
                names = [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
                name = key or (names[0] if len(names) == 1 else "")
                if name not in names:
                    raise RecordError(file, "unreadable", f"{file}: expected member "
                                      f"{key or '(the only one)'!r}, it holds {names}")
                info = archive.getinfo(name + ".npy")
                with archive.open(info) as member:
                    shape, dtype, fortran = _npy_header(member)
                    header_size = member.tell()
        except (OSError, ValueError, zipfile.BadZipFile) as err:
            raise RecordError(file, "unreadable", f"{file}: not a readable .npz "
                              f"archive of numeric arrays: {err}") from None
        return _npz_array(file, info, header_size, shape, dtype, fortran)
    return _cached(("npz", file, key), load)


def _npz_array(file, info: zipfile.ZipInfo, header_size: int, shape, dtype, fortran):
    """The member as a memory map (stored uncompressed) or an _Inflated (compressed), after
    checking its header's shape against the member's sizes in the archive."""
    if dtype.hasobject:
        raise RecordError(file, "unreadable", f"{file} holds Python objects; expected a "
                          "numeric array (object arrays need unpickling: never done)")
    nbytes = math.prod(shape) * dtype.itemsize
    what = f"{file}: member {info.filename} announces {shape} {dtype} ({nbytes} bytes)"
    if info.file_size < header_size + nbytes:
        raise RecordError(file, "truncated_signal", f"{what}, the archive holds "
                          f"{info.file_size - header_size}")
    if info.compress_type != zipfile.ZIP_STORED:
        if info.file_size > info.compress_size * DEFLATE_MAX_RATIO:
            raise RecordError(file, "truncated_signal", f"{what}, more than "
                              f"{DEFLATE_MAX_RATIO}x its {info.compress_size} compressed bytes")
        if nbytes > MAX_INFLATED_BYTES:
            raise RecordError(file, "too_large", f"{what}, inflated in every process; store "
                              "it with np.savez (uncompressed: memory-mapped) or as .npy")
        return _Inflated(file, info, shape, dtype, fortran)
    with open(file, "rb") as f:  # the local file header's name and extra field lengths
        f.seek(info.header_offset + 26)
        names_size = int.from_bytes(f.read(2), "little") + int.from_bytes(f.read(2), "little")
    offset = info.header_offset + 30 + names_size + header_size
    if os.path.getsize(file) < offset + nbytes:
        raise RecordError(file, "truncated_signal", f"{what}, the file ends before")
    if not nbytes:
        return np.zeros(shape, dtype)
    return np.memmap(file, dtype, "r", offset, shape, "F" if fortran else "C")


def _npy_header(f):
    """(shape, dtype, fortran order) of the .npy stream `f`, left at the data's first byte."""
    version = np.lib.format.read_magic(f)
    header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
              else np.lib.format.read_array_header_2_0)  # 3.0 differs in encoding only
    shape, fortran, dtype = header(f)
    return tuple(shape), dtype, fortran


def _array_of(file: str, fmt: ArrayFormat):
    if file.lower().endswith(HDF5_SUFFIXES):
        return _hdf5_dataset(file, fmt.key)
    if file.lower().endswith(".npz"):
        return _npz_member(file, fmt.key)
    return _cached(("npy", file), lambda: open_npy(file))


def array_shape(file, key: str = "") -> tuple[int, ...]:
    """The shape of the array of records in `file` (.npy, .npz member or HDF5 dataset `key`),
    without reading it; RecordError when the file cannot be opened."""
    file = os.fspath(file)
    return tuple(_array_of(file, ArrayFormat(fs=1.0, leads=(), key=key)).shape)


def checked_array(path: str, fmt: ArrayFormat):
    """(the stored array, its file, the row or None), its shape and the row checked."""
    file, row = split_locator(path)
    array = _array_of(file, fmt)
    if array.dtype.kind not in "iuf":  # complex values would lose their imaginary part
        raise RecordError(path, "bad_dtype", f"{file}: array of {array.dtype}, expected real "
                          "numbers (integers or floats)")
    want = 2 if row is None else 3
    if array.ndim != want or array.shape[-1 - fmt.time_axis] != len(fmt.leads):
        axes = ["samples", "samples"]
        axes[1 - fmt.time_axis] = f"{len(fmt.leads)} leads"
        expected = ("(records, " if row is not None else "(") + ", ".join(axes) + ")"
        raise RecordError(path, "bad_shape", f"{file}: array of shape "
                          f"{tuple(array.shape)}, expected {expected}")
    if row is not None and not 0 <= row < array.shape[0]:
        raise RecordError(path, "missing_row", f"{file}: row {row} requested, the "
                          f"array holds {array.shape[0]} records")
    return array, file, row


def _record_array(path: str, fmt: ArrayFormat):
    """One record's stored array (h5py reads the row here; a memory map stays lazy), its size
    checked from the header first: too_large beyond MAX_RECORD_BYTES stored or limits.MAX_SAMPLES
    values (read_array makes float64 of them: a (12, 2**28) int8 .npy had asked for 24 GiB)."""
    array, file, row = checked_array(path, fmt)
    shape = tuple(array.shape[row is not None:])
    samples = math.prod(shape)
    if samples * array.dtype.itemsize > MAX_RECORD_BYTES or samples > MAX_SAMPLES:
        raise RecordError(path, "too_large", f"{file}: one record of shape {shape} "
                          f"{array.dtype} is {samples * array.dtype.itemsize} bytes, "
                          f"{samples} samples; expected at most {MAX_RECORD_BYTES} bytes and "
                          f"{MAX_SAMPLES} samples")
    if row is None:
        return array
    try:
        return array[row]
    except (OSError, ValueError) as err:
        raise RecordError(path, "unreadable", f"{file}: reading row {row} failed: "
                          f"{err}") from None


def read_array(path: str, fmt: ArrayFormat, *, fs_range=FS_RANGE, **kwargs):
    check_sampling_rate(path, fmt.fs, "stated sampling rate", fs_range=fs_range)
    stored = _record_array(path, fmt)
    raw = np.asarray(stored, np.float64)  # one record (copied out of a memory map)
    raw = raw if fmt.time_axis == 0 else raw.T
    if fmt.trim_zero_padding:
        signal_rows = np.flatnonzero((raw != 0).any(axis=1))  # NaN counts as signal
        if not signal_rows.size:
            raise RecordError(path, "no_signal", f"{path} holds only zero padding")
        raw = raw[signal_rows[0]:signal_rows[-1] + 1]
    return canonical_ecg(raw, fmt.leads, [fmt.units] * len(fmt.leads), fmt.fs,
                         path=path, **kwargs)
