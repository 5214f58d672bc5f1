"""Reading a record stored under a URL (gs://, s3://, memory://; runtime/storage.py): the files
reading it opens are copied into a local temporary folder, read there by the local readers (wfdb,
h5py and numpy open local paths only), and the folder is removed. Errors and the Ecg name the
URL, as a local read names the local path.

The files of a WFDB record: its header, the signal files the header names beside it, and a
multi-segment record's segment headers with their signal files; a record stored as one file
(array layouts, hospital exports): that file. One record is staged at a time, so memory and
disk hold one record, whatever the dataset's size.
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


def _wfdb_files(folder: str, name: str) -> list[str]:
    """Names in `folder` that reading WFDB record `name` opens (as far as they can be told
    from its headers; a header that does not parse is staged alone and the reader reports it)."""
    names, headers = [], [name]
    while headers:
        header_name = headers.pop(0) + ".hea"
        names.append(header_name)
        try:
            header = wfdb_header.parse_header(safe_files.read_text(
                storage.join(folder, header_name), limit=wfdb_header.MAX_HEADER_BYTES))
        except (OSError, ValueError, wfdb_header.HeaderError):
            continue
        names += [s.file_name for s in header.signals if _beside(s.file_name)]
        if len(headers) + len(names) < 10_000 and header.n_seg is not None:
            headers += [s for s in dict.fromkeys(header.segments) if _beside(s)]
    return list(dict.fromkeys(names))


def read_staged(url: str, reader, read_local: Callable[..., Ecg], **kwargs) -> Ecg:
    """read_local(local copy of the record at `url`, reader, **kwargs), naming `url`."""
    folder, name = url.rstrip("/").rsplit("/", 1)
    if reader is None and os.path.splitext(name)[1].lower() in wfdb_header.FILE_EXTENSIONS:
        name = os.path.splitext(name)[0]
    wanted = _wfdb_files(folder, name) if reader is None else [name]
    with tempfile.TemporaryDirectory(prefix="crema_jax-record-") as tmp:
        for file_name in wanted:
            if storage.isfile(storage.join(folder, file_name)):
                storage.download(storage.join(folder, file_name), os.path.join(tmp, file_name))
        try:
            ecg = read_local(os.path.join(tmp, name), reader, **kwargs)
        except RecordError as err:
            raise RecordError(err.path.replace(tmp, folder), err.reason,
                              err.message.replace(tmp, folder)) from None
    return dataclasses.replace(ecg, path=ecg.path.replace(tmp, folder))
