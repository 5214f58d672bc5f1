"""Reading one record of any stored format into the canonical Ecg (ecg.canonical_ecg).

A layout's RecordInfo names a record by `path` and says how to read it by `reader`:
- None: a WFDB record (.hea + .mat/.dat; wfdb_records.read_record).
- ArrayFormat: stored arrays (arrays.py): a row of an HDF5 / .npy / .npz array of records, or a
  .npy file holding one record, with the sampling rate, leads and unit the array cannot state.
- ClinicalFile: a hospital export (DICOM waveform, HL7 aECG, GE MUSE XML, EDF+; clinical.py).
- BadRecord: a record the layout already knows it cannot use (an exam missing from its
  dataset's table, a file that does not open); reading it raises its RecordError, so it is
  skipped and counted where every bad record is (the pipeline's SkipStats, prepare's table).

`read(path, reader, **kwargs)` takes read_record's keyword arguments and returns what it
returns; a record it cannot use raises RecordError, the message naming the file. `read_keyed`
also hashes the files read (prepare's content_key), a URL's from the one local copy.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

from crema_jax.data.reading import arrays, clinical, remote_records, wfdb_records
from crema_jax.data.reading.ecg import Ecg, RecordError
from crema_jax.runtime import storage


@dataclasses.dataclass(frozen=True)
class BadRecord:
    reason: str                        # a RecordError reason
    message: str                       # names the file and what was expected


# The reader kinds by name, for plain-data (JSON) tasks that cross machines: a Beam worker gets
# its shard's records from a file, and pickles from shared storage are never loaded.
_READER_KINDS = {"array": arrays.ArrayFormat, "clinical": clinical.ClinicalFile,
                 "bad": BadRecord}


def reader_to_json(reader) -> dict | None:
    """A RecordInfo's reader as JSON data ({"kind", "fields"}; None stays None)."""
    if reader is None:
        return None
    kind = next(k for k, cls in _READER_KINDS.items() if type(reader) is cls)
    return {"kind": kind, "fields": dataclasses.asdict(reader)}


def reader_from_json(data: dict | None):
    """reader_to_json's inverse (JSON lists back to the dataclasses' tuples)."""
    if data is None:
        return None
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in data["fields"].items()}
    return _READER_KINDS[data["kind"]](**fields)


def read(path, reader=None, **kwargs) -> Ecg:
    """The record at `path` as the canonical Ecg; `kwargs` are read_record's. A URL
    (gs://...) is read from a local copy (remote_records.py)."""
    if storage.is_remote(path) and not isinstance(reader, BadRecord):
        return remote_records.read_staged(str(path), reader, read, **kwargs)
    if reader is None:
        return wfdb_records.read_record(path, **kwargs)
    if isinstance(reader, BadRecord):
        raise RecordError(path, reader.reason, reader.message)
    if isinstance(reader, clinical.ClinicalFile):
        return clinical.read_clinical(path, reader, **kwargs)
    return arrays.read_array(str(path), reader, **kwargs)


def read_keyed(path, reader, key: Callable[..., str], **kwargs) -> tuple[Ecg, str]:
    """(read(path, reader, **kwargs), key(the path read, copy_of=`path`)): `key` is
    duplicates.content_key, of a URL's record computed on the local copy it is read from
    (remote_records.read_staged), so its files are fetched once, not again to be hashed."""
    if not storage.is_remote(path) or isinstance(reader, BadRecord):
        ecg = read(path, reader, **kwargs)
        return ecg, key(path, copy_of=path)
    keys = []

    def read_and_key(local, local_reader, **local_kwargs):
        ecg = read(local, local_reader, **local_kwargs)
        keys.append(key(local, copy_of=str(path)))
        return ecg

    return remote_records.read_staged(str(path), reader, read_and_key, **kwargs), keys[0]


def stored_length(path, reader=None) -> tuple[int, float]:
    """(samples as stored, sampling rate) without reading the signal: WFDB's header length, an
    array's time axis (zero padding included). For window counts; `read` has the truth."""
    if reader is None:
        header = wfdb_records.read_header(path)
        return int(header.sig_len or 0), float(header.fs or 0.0)
    if isinstance(reader, BadRecord):
        raise RecordError(path, reader.reason, reader.message)
    if isinstance(reader, clinical.ClinicalFile):
        parsed = clinical.clinical_formats.parse(path)
        return int(parsed.signal.shape[0]), float(parsed.fs)
    array, _, row = arrays.checked_array(str(path), reader)
    return int(array.shape[(row is not None) + reader.time_axis]), float(reader.fs)
