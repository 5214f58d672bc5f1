"""The local folders a run makes for its output, removed again when it ends having written
nothing there: a run refused before doing any work (a missing data.root, a failed compile, an
error before the first batch) had left an empty workdir or output folder the user never had.

    made = to_make(path)      # before the run: `path` and its missing parents, deepest first
    note(out_file, "--out")   # or the line a command prints for the folders its output makes
    ...                       # the run (it creates them as it needs)
    remove_if_empty(made)     # after it, however it ended
    with removed_on_failure(folder): ...   # or only when the block raises (a failed write)

Only empty folders are removed: nothing a run or anyone else wrote there is lost, and a folder
that existed before the run is never in `made`.
"""
from __future__ import annotations

import contextlib
import os

from crema_jax.runtime import files


def to_make(path) -> list[str]:
    """The local folders that do not exist yet on the way to `path` (it and its missing
    parents), deepest first; none for a URL (an object store has no folders)."""
    if files.is_url(path):
        return []
    path = os.path.abspath(os.fspath(path))
    made = []
    while not os.path.lexists(path) and path != os.path.dirname(path):
        made.append(path)
        path = os.path.dirname(path)
    return made


def note(path, flag: str = "--out") -> str:
    """What writing output file `path` will create, as the line a command prints once it is
    written ("--out: created folder /a/b"; "" when its folder exists, or for a URL): a typo in
    the path then shows at once, not as a stray tree found later. Asked before writing (after,
    all exist)."""
    if files.is_url(path):
        return ""
    missing = to_make(os.path.dirname(os.path.abspath(os.fspath(path))))
    if not missing:
        return ""
    made = missing[0] if len(missing) == 1 else f"{missing[0]} (and above it {missing[-1]})"
    return f"{flag}: created folder {made}"


def remove_if_empty(made: list[str]) -> None:
    """Removes the folders `to_make` listed when no file (nor link) is anywhere under the
    deepest one; otherwise leaves every one of them as it is."""
    if not made or not os.path.isdir(made[0]) or os.path.islink(made[0]):
        return
    tree = list(os.walk(made[0], topdown=False))
    if any(names or any(os.path.islink(os.path.join(folder, d)) for d in folders)
           for folder, folders, names in tree):
        return
    try:
        for folder, *_ in tree:           # deepest first, made[0] last
            os.rmdir(folder)
        for parent in made[1:]:
            os.rmdir(parent)
    except OSError:                       # written meanwhile, or a link: left as it is
        pass


@contextlib.contextmanager
def removed_on_failure(path):
    """The folders `to_make(path)` lists, removed while empty when the block raises: a failed
    write (a full disk) leaves no folder it made (an empty --hub_folder had stayed)."""
    made = to_make(path)
    try:
        yield
    except BaseException:
        remove_if_empty(made)
        raise
