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
  missing_row       ROW beyond the array's records
  no_signal         nothing but zero padding, or every lead NaN (canonical_ecg's reasons follow)

Reads are lazy and per record: an HDF5 file stays open in each process and one row is read per
record (h5py); a .npy array is memory-mapped; a .npz member (a zip entry, which cannot be
mapped) is read whole, once per process -- use .npy for arrays larger than memory.
"""
from __future__ import annotations

import dataclasses
import os
import zipfile

import numpy as np

from crema_jax.data.reading.ecg import RecordError, canonical_ecg

HDF5_SUFFIXES = (".hdf5", ".h5", ".hdf")


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
        self.dataset = self.handle[key]

    def close(self):
        self.handle.close()


def _hdf5_dataset(file: str, key: str):
    if not os.path.isfile(file):
        raise RecordError(file, "missing_signal_file", f"{file} does not exist")
    return _cached(("h5", file, key), lambda: _Hdf5Dataset(file, key)).dataset


def _npy_array(file: str):
    """A memory-mapped .npy array, after checking its header against the file's size."""
    try:
        with open(file, "rb") as f:
            version = np.lib.format.read_magic(f)
            header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                      else np.lib.format.read_array_header_2_0)  # 3.0 differs in encoding only
            shape, _, dtype = header(f)
            offset = f.tell()
    except FileNotFoundError:
        raise RecordError(file, "missing_signal_file", f"{file} does not exist") \
            from None
    except (OSError, ValueError) as err:
        raise RecordError(file, "unreadable", f"{file}: not a .npy array: {err}") \
            from None
    if dtype.hasobject:
        raise RecordError(file, "unreadable", f"{file} holds Python objects; expected a "
                          "numeric array (object arrays need unpickling: never done)")
    need = offset + int(np.prod(shape)) * dtype.itemsize
    if os.path.getsize(file) < need:
        raise RecordError(file, "truncated_signal", f"{file} is truncated: its header "
                          f"announces {shape} {dtype} ({need} bytes), the file holds "
                          f"{os.path.getsize(file)}")
    return np.load(file, mmap_mode="r", allow_pickle=False)


def _npz_member(file: str, key: str):
    def load():
        try:
            with np.load(file, allow_pickle=False) as npz:
                names = list(npz.files)
                name = key or (names[0] if len(names) == 1 else "")
                if name not in names:
                    raise RecordError(file, "unreadable", f"{file}: expected member "
                                      f"{key or '(the only one)'!r}, it holds {names}")
                return npz[name]
        except (OSError, ValueError, zipfile.BadZipFile) as err:
            raise RecordError(file, "unreadable", f"{file}: not a readable .npz "
                              f"archive of numeric arrays: {err}") from None
    return _cached(("npz", file, key), load)


def _array_of(file: str, fmt: ArrayFormat):
    if file.lower().endswith(HDF5_SUFFIXES):
        return _hdf5_dataset(file, fmt.key)
    if file.lower().endswith(".npz"):
        return _npz_member(file, fmt.key)
    return _cached(("npy", file), lambda: _npy_array(file))


def array_shape(file, key: str = "") -> tuple[int, ...]:
    """The shape of the array of records in `file` (.npy, .npz member or HDF5 dataset `key`),
    without reading it; RecordError when the file cannot be opened."""
    file = os.fspath(file)
    return tuple(_array_of(file, ArrayFormat(fs=1.0, leads=(), key=key)).shape)


def checked_array(path: str, fmt: ArrayFormat):
    """(the stored array, its file, the row or None), its shape and the row checked."""
    file, row = split_locator(path)
    array = _array_of(file, fmt)
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
    """One record's stored array (h5py reads the row here; a memory map stays lazy)."""
    array, file, row = checked_array(path, fmt)
    if row is None:
        return array
    try:
        return array[row]
    except (OSError, ValueError) as err:
        raise RecordError(path, "unreadable", f"{file}: reading row {row} failed: "
                          f"{err}") from None


def read_array(path: str, fmt: ArrayFormat, *, fs_range=(50.0, 10000.0), **kwargs):
    if not fs_range[0] <= fmt.fs <= fs_range[1]:
        raise RecordError(path, "bad_sampling_rate", f"{path}: stated sampling rate "
                          f"{fmt.fs:g} Hz, expected {fs_range[0]:g}-{fs_range[1]:g} Hz")
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
