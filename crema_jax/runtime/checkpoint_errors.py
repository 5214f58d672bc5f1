"""Checkpoint writes that fail, told once: `CheckpointSaveError`, `cause` (the OS's account of
a failure, out of TensorStore's long messages), and Orbax's and asyncio's logs of it dropped
(`quiet_background_save_errors`, `quiet_unretrieved_task_errors`, `absl_quiet`), so that a user
sees one line, not a traceback per background thread. runtime/checkpoint.py raises them
(SaveWatch, save_model_checkpoint).
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import re


class CheckpointSaveError(OSError):
    """A checkpoint save failed; the message names the step, its path and the cause."""


def cause(err: BaseException, limit: int = 300) -> str:
    """The OS's account of the failure when the message carries one (TensorStore writes
    "... [os_error_code='28']" for a full disk), else the innermost error's message; one line."""
    seen = set()
    while id(err) not in seen:
        seen.add(id(err))
        inner = err.__cause__ or err.__context__
        if inner is None:
            break
        err = inner
    text = " ".join((str(err) or type(err).__name__).split())
    text = re.sub(r" ?\[tensorstore_spec='.*'\]$", "", text)  # the store's full spec, ~1 KB
    code = re.search(r"os_error_code='?(\d+)", text)
    if isinstance(err, OSError) and err.errno:
        return f"{err.strerror or os.strerror(err.errno)} (errno {err.errno})"
    if code:
        return f"{os.strerror(int(code.group(1)))} (errno {code.group(1)})"
    for number in _STORAGE_ERRNOS:  # a TensorStore message that lost its os_error_code
        if os.strerror(number) in text:
            return f"{os.strerror(number)} (errno {number})"
    return text if len(text) <= limit else text[:limit - 3] + "..."


# What a checkpoint write fails with for want of room or rights. Which file of a step meets the
# limit first varies, and an error TensorStore wraps (opening a driver) had carried only the
# words: "... Failed writing: "<path>": File too large", cut at the limit before them.
_STORAGE_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES)


def quiet_background_save_errors() -> None:
    """A failed save is reported once, by SaveWatch or save_model_checkpoint: Orbax's own error
    logs of it (a traceback per background thread) are dropped, and so are the failed write
    coroutines asyncio logs when they are collected ("Task exception was never retrieved"). For
    this process from now on (the callbacks outlive the run); `--verbose` keeps them. (The CLI
    drops TensorStore's "Event loop is closed" tracebacks of any failed read or save:
    cli/command.py.)"""
    logging.getLogger("absl").addFilter(_drop_orbax_errors)
    quiet_unretrieved_task_errors()


def quiet_unretrieved_task_errors() -> None:
    """Drops asyncio's logs of coroutines whose failure nobody awaited ("Task exception was
    never retrieved"): after a checkpoint read or write fails, TensorStore's other reads or
    writes of the same step fail too, and asyncio prints each with a traceback when it is
    collected, after the one line that reported the failure. For this process from now on."""
    logger = logging.getLogger("asyncio")
    if _drop_unretrieved_task_errors not in logger.filters:
        logger.addFilter(_drop_unretrieved_task_errors)


@contextlib.contextmanager
def absl_quiet(*message_starts: str):
    """Absl log records starting with one of `message_starts` dropped inside the block."""
    def drop(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(message_starts)
    logger = logging.getLogger("absl")
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def _drop_unretrieved_task_errors(record: logging.LogRecord) -> bool:
    return not str(record.msg).split("\n", 1)[0].endswith("exception was never retrieved")


def _drop_orbax_errors(record: logging.LogRecord) -> bool:
    return not (record.levelno >= logging.ERROR and
                f"{os.sep}orbax{os.sep}" in (record.pathname or ""))
