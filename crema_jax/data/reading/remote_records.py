"""Reading a record stored under a URL (gs://, s3://, memory://; runtime/storage.py): the files
reading it opens are copied into a local temporary folder, read there by the local readers (wfdb,
h5py and numpy open local paths only), and the folder is removed. Errors and the Ecg name the
URL, as a local read names the local path.

The files of a WFDB record: its header, the signal files the header names beside it, and a
multi-segment record's segment headers with their signal files, and its own NAME.dat / NAME.mat
(what its content_key hashes); a record stored as one file (array layouts, hospital exports):
that file. Each is fetched once: `prepare` hashes the same local copy it reads
(read.read_keyed). One record is staged at a time, so memory and disk hold one record, whatever
the dataset's size.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Callable

from crema_jax.data.reading import safe_files, wfdb_header
from crema_jax.data.reading.ecg import Ecg, RecordError
from crema_jax.runtime import storage


def _beside(name: str) -> bool:
    """A file name in the record's own folder (never a path out of it)."""
    return "/" not in name and name not in ("", ".", "..", "~")


def _stage_header(url: str, local: str):
    """The WFDB header at `url` copied to `local` and parsed; None for a header that is not
    there, or does not parse (copied for the reader to report). Fetched once: the bytes parsed
    are the bytes staged."""
    try:
        data = storage.read_bytes(url, limit=wfdb_header.MAX_HEADER_BYTES)
    except FileNotFoundError:
        return None
    except ValueError:  # larger than any header: the reader says so
        storage.download(url, local, missing_ok=True)
        return None
    with open(local, "wb") as f:
        f.write(data)
    try:
        return wfdb_header.parse_header(safe_files.decode_text(data))
    except (ValueError, wfdb_header.HeaderError):
        return None


def _stage_wfdb(folder: str, name: str, tmp: str) -> None:
    """Copy into `tmp` each file of `folder` that reading WFDB record `name` opens (as far as
    its headers tell: a multi-segment record's segment headers and their signal files too) and
    the record's own NAME.dat / NAME.mat (the files its content_key hashes, duplicates.py), each
    fetched once; a file that is not there is left out, for the reader to report. A record
    whose own header is missing or does not parse fetches nothing more: it is skipped."""
    names, headers, seen = [], [name], set()
    while headers:
        header_name = headers.pop(0) + ".hea"
        if header_name in seen:
            continue
        seen.add(header_name)
        header = _stage_header(storage.join(folder, header_name), os.path.join(tmp, header_name))
        if header is None:
            continue
        if not names:   # the record's own header: its NAME.dat / NAME.mat too
            names += [name + s for s in wfdb_header.SIGNAL_SUFFIXES]
        names += [s.file_name for s in header.signals if _beside(s.file_name)]
        if len(headers) + len(names) < 10_000 and header.n_seg is not None:
            headers += [s for s in dict.fromkeys(header.segments) if _beside(s)]
    for file_name in dict.fromkeys(names):
        if file_name not in seen:
            storage.download(storage.join(folder, file_name), os.path.join(tmp, file_name),
                             missing_ok=True)


def read_staged(url: str, reader, read_local: Callable[..., Ecg], **kwargs) -> Ecg:
    """read_local(local copy of the record at `url`, reader, **kwargs), naming `url`."""
    folder, name = url.rstrip("/").rsplit("/", 1)
    if reader is None and os.path.splitext(name)[1].lower() in wfdb_header.FILE_EXTENSIONS:
        name = os.path.splitext(name)[0]
    with tempfile.TemporaryDirectory(prefix="crema_jax-record-") as tmp:
        if reader is None:
            _stage_wfdb(folder, name, tmp)
        else:
            storage.download(url, os.path.join(tmp, name), missing_ok=True)
        try:
            ecg = read_local(os.path.join(tmp, name), reader, **kwargs)
        except RecordError as err:
            raise RecordError(err.path.replace(tmp, folder), err.reason,
                              err.message.replace(tmp, folder)) from None
    return dataclasses.replace(ecg, path=ecg.path.replace(tmp, folder))
