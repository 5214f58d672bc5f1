"""Input files as they really are: the one folder walker of every command, and opens and reads
bounded by a file's kind and real size.

- A special file (FIFO, device, socket) named like a record is never read: opening a FIFO for
  reading blocks until a writer comes, and a device such as /dev/zero never ends. Files are
  opened with O_NONBLOCK (no effect on regular files, no wait on a FIFO) and checked with fstat
  on the open descriptor, so a file swapped after the check is still caught.
- A read never takes more than the file's size at open (a file that grows meanwhile is read up
  to that size), and callers compare what a header announces with that size before allocating.
- Folder walks never follow symlinked directories: a link back up the tree would make them
  endless (a linked folder is not walked; files that are links are listed, and then read only if
  they lead to a regular file).
"""
from __future__ import annotations

import csv
import fnmatch
import glob
import io
import os
import re
import stat

from crema_jax.runtime import files, storage


class NotRegularFileError(OSError, ValueError):
    """A path that leads to a FIFO, device, socket or folder where a file was expected (a
    ValueError too: an input the command cannot use, reported in one line)."""


def open_regular(path):
    """A binary file object of `path`, opened without blocking; NotRegularFileError (naming the
    path and its kind) when it is not a regular file."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFileError(f"{os.fspath(path)} is {files.kind_of(mode)}, not a "
                                      "regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


class _TextFile(io.TextIOWrapper):
    """A text file whose `with` block ends a CSV or decoding failure inside it in a ValueError
    naming the file (csv's "field larger than field limit" and a UTF-16 file's decoding error
    named none). Its CSV readers are strict: an unbalanced quote is an error, not a cell that
    swallows every row after it."""

    def __exit__(self, kind, err, traceback):
        super().__exit__(kind, err, traceback)
        if isinstance(err, csv.Error):
            hint = ("; a quote opens a cell that never closes" if "end of data" in str(err)
                    else "")
            raise ValueError(f"{self.source}: not a readable CSV file ({err}{hint})") from None
        if isinstance(err, UnicodeDecodeError):
            raise ValueError(f"{self.source}: not {self.encoding.split('-sig')[0].upper()} text "
                             f"({err.reason} at byte {err.start}); save it as UTF-8") from None
        return False


def open_text(path, *, encoding: str = "utf-8-sig", newline: str | None = None):
    """open(path, encoding=..., newline=...) for reading, through open_regular. UTF-8 with or
    without the byte order mark a spreadsheet's "CSV UTF-8" starts with (read as part of the
    first column's name, it hid that column). Used as `with open_text(...) as f:`, a CSV or
    decoding failure in the block is a ValueError naming the file."""
    f = _TextFile(open_regular(path), encoding=encoding, newline=newline)
    f.source = os.fspath(path)
    return f


def read_bytes(path, *, limit: int | None = None) -> bytes:
    """The bytes of a regular file, at most its size at open; ValueError when that size exceeds
    `limit` (a file far larger than its kind ever is: read nothing of it). A URL (gs://...)
    is read through runtime/storage.py."""
    if storage.is_remote(path):
        return storage.read_bytes(path, limit=limit)
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if limit is not None and size > limit:
            raise ValueError(f"{os.fspath(path)} is {size} bytes, expected at most {limit}")
        return f.read(size)


def decode_text(data: bytes) -> str:
    """UTF-8 when the bytes are valid UTF-8 (ASCII is), else Latin-1 (every byte a character,
    so any file decodes): a WFDB header's "µV" is written in either, and read as Latin-1 the
    UTF-8 spelling had become "ÂµV", a unit refused as not a voltage."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def read_text(path, *, limit: int | None = None, encoding: str | None = None) -> str:
    """A regular file's text (read_bytes), in `encoding`, or by default as `decode_text`."""
    data = read_bytes(path, limit=limit)
    return decode_text(data) if encoding is None else data.decode(encoding)


def walk(root, suffixes: tuple[str, ...], *, max_depth: int | None = None,
         unreadable: list | None = None) -> list[str]:
    """Every file below `root` whose name ends with one of `suffixes`: each folder's files
    sorted, then its sub-folders in sorted order; symlinked folders are not entered. Hidden
    files and folders (a name starting with ".": macOS's ._E1.hea metadata twins, .git) and
    SYSTEM_FOLDERS are passed over (`is_system`): no place of records.
    max_depth: how many folders down to look (0 = `root`'s own files; None = all).
    unreadable: a list that gets each folder that cannot be listed (no permission, removed
    meanwhile), for the caller to report, but for a system one (`is_system`: hidden, as
    .Trash-1000, or lost+found), passed over as the files in it would be; without the list
    every such folder is passed over. A URL (gs://...) is listed through runtime/storage.py
    (object stores hold no links)."""
    if storage.is_remote(root) and max_depth is None:
        return storage.walk(os.fspath(root), suffixes)
    out = []
    root = os.fspath(root)
    top = root.rstrip(os.sep).count(os.sep)
    onerror = None if unreadable is None else (
        lambda err: None if is_system(err.filename, root) else unreadable.append(err.filename))
    for folder, dirs, names in os.walk(root, followlinks=False, onerror=onerror):
        dirs[:] = sorted(d for d in dirs if not _no_place_of_records(d))
        if max_depth is not None and folder.rstrip(os.sep).count(os.sep) - top >= max_depth:
            dirs.clear()
        out.extend(os.path.join(folder, f) for f in sorted(names)
                   if f.endswith(suffixes) and not f.startswith("."))   # a file: hidden only
    return out


# Folders a file system keeps for itself (lost+found: the fragments fsck recovered).
SYSTEM_FOLDERS = ("lost+found",)


def is_system(path, root) -> bool:
    """Whether `path` below `root` is hidden or in a hidden folder (a name starting with "."),
    or in one of SYSTEM_FOLDERS: no place of records (clinical.is_export_candidate passes its
    files over, `walk` does not report it unreadable)."""
    parts = os.path.relpath(path, root).split(os.sep)
    return any(part not in (".", "..") and _no_place_of_records(part) for part in parts)


def _no_place_of_records(name: str) -> bool:
    """A hidden name (".git", "._E1.hea") or one of SYSTEM_FOLDERS."""
    return name.startswith(".") or name in SYSTEM_FOLDERS


def glob_paths(pattern: str, *, unreadable: list | None = None) -> list[str]:
    """The files glob.glob(pattern, recursive=True) names, sorted, except those reached through
    a symlinked folder: the pattern's fixed leading folder is walked by `walk` (as deep as the
    pattern reaches; never into a link loop) and the paths below it matched. unreadable: as
    `walk`'s, the folders within the pattern's reach that cannot be listed."""
    parts = pattern.split(os.sep)
    fixed = next((i for i, part in enumerate(parts) if glob.has_magic(part)), None)
    if fixed is None:
        return [pattern] if os.path.isfile(pattern) else []
    base = os.sep.join(parts[:fixed]) or (os.sep if pattern.startswith(os.sep) else ".")
    regex = re.compile(_pattern_regex(parts[fixed:]))
    depth = None if "**" in parts[fixed:] else len(parts) - fixed - 1
    out = []
    for path in walk(base, ("",), max_depth=depth, unreadable=unreadable):
        relative = os.path.relpath(path, base)
        hidden = any(p.startswith(".") for p in relative.split(os.sep))  # as glob: no dotfiles
        if regex.fullmatch(relative) and not hidden:
            out.append(path if parts[:fixed] else relative)
    return sorted(out)


def _pattern_regex(parts: list[str]) -> str:
    """A regex of glob components: `**` any number of folders (none included), `*` and `?`
    within one name."""
    pieces = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            pieces.append(".*" if last else f"(?:[^{os.sep}]+{os.sep})*")
            continue
        # fnmatch's translation lets `*` cross folders; confine it to one name.
        body = fnmatch.translate(part)[4:-3].replace(".*", f"[^{os.sep}]*").replace(
            "(?s:", "(?:")
        pieces.append(body + ("" if last else os.sep))
    return "".join(pieces)
