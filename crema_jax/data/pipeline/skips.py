"""What happens to a record that fails: it is counted by reason in a SkipStats and dropped.

Bad input never stops a run: `transforms.ReadChunk` catches `RecordError` (and any unexpected
exception, wrapped with the record's path), counts it by reason in a `SkipStats` and drops the
record from its chunk (`transforms.NonEmpty` then filters out chunks left empty); `strict=True`
re-raises instead, naming the file and the problem. A damaged cache (cache/source.py's
DamagedCacheError) always stops the run, naming the shard, unless
data.skip_damaged_cache_records makes it a `damaged_cache_record` skip. How counts are surfaced:
- in-process (num_workers=0): the `SkipStats` passed to `make_*_dataset` holds exact counts;
- worker processes: each skip is logged (absl warning, with path and reason; past a
  `log_limit`, counted only) and, when `data.skip_log_dir` is set, appended as one JSON line to
  `<skip_log_dir>/skips-<pid>.jsonl` (reason, path, message, and whether it was logged one by
  one: `logged`); `SkipStats.from_log_dir(dir)` sums them (each worker owns its file, so no
  locking between processes). Counts are events: a bad record is counted once per epoch in
  which it is read.
"""
from __future__ import annotations

import collections
import json
import os
import threading
from typing import Iterable

from absl import logging


def skip_table(events: Iterable[tuple[str, str]]) -> dict:
    """The skip table of (reason, path) events: {reason: {"count": events, "paths": sorted}},
    reasons in sorted order (SkipStats.summary, and prepare's summary.json and printed table)."""
    paths = collections.defaultdict(list)
    for reason, path in events:
        paths[reason].append(path)
    return {reason: {"count": len(paths[reason]), "paths": sorted(paths[reason])}
            for reason in sorted(paths)}


class SkipStats:
    """Counts of skipped records by reason, with their paths (see the module docstring)."""

    def __init__(self, log_dir: str = "", log_limit: int | None = None):
        """log_limit: how many skips are logged one by one (None: all); later ones are counted
        and kept as every skip is, and one warning says that they are no longer logged (a
        folder of 300 CT images had given 300 warning lines)."""
        self.log_dir = log_dir
        self.log_limit = log_limit
        self.counts: collections.Counter = collections.Counter()
        self.paths: dict[str, list[str]] = collections.defaultdict(list)
        self.logged: list[str] = []  # the paths logged one by one, in the order recorded
        # Every skip as (reason, path, message), in the order recorded (embed's and predict's
        # side file of skips names them all), and each one's source row (`record`'s `index`;
        # None when not given): whose skip it is, whatever file its path names.
        self.events: list[tuple[str, str, str]] = []
        self.rows: list[int | None] = []
        self._lock = threading.Lock()  # Grain reads with several threads per process.

    def __getstate__(self):
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def record(self, reason: str, path: str, message: str, index: int | None = None) -> None:
        """One skip; `index`: the source row (example) it is of."""
        with self._lock:
            before = self.total
            logged = self.log_limit is None or before < self.log_limit
            if logged:
                logging.warning("skipping %s [%s]: %s", path, reason, message)
            elif before == self.log_limit:
                logging.warning("more records skipped: counted, no longer logged one by one")
            self._add(reason, path, logged, message, index)
            if self.log_dir:
                os.makedirs(self.log_dir, exist_ok=True)
                line = json.dumps({"reason": reason, "path": path, "message": message,
                                   "logged": logged})
                with open(os.path.join(self.log_dir, f"skips-{os.getpid()}.jsonl"), "a",
                          encoding="utf-8") as f:
                    f.write(line + "\n")

    def _add(self, reason: str, path: str, logged: bool, message: str = "",
             index: int | None = None) -> None:
        self.counts[reason] += 1
        self.events.append((reason, path, message))
        self.rows.append(index)
        self.paths[reason].append(path)
        if logged:
            self.logged.append(path)

    def rows_since(self, start: int) -> list[tuple[int | None, tuple[str, str, str]]]:
        """(source row, event) of each skip after the first `start`, as one snapshot (reading
        threads may record more meanwhile)."""
        with self._lock:
            return list(zip(self.rows[start:], self.events[start:]))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> dict:
        return skip_table((reason, path) for reason, paths in self.paths.items()
                          for path in paths)

    @classmethod
    def of_events(cls, events: Iterable[tuple[str, str, str]],
                  log_limit: int | None = None) -> "SkipStats":
        """The stats of (reason, path, message) events recorded earlier (a resumed run's kept
        skips and its own), logging nothing again: the first `log_limit` count as logged."""
        stats = cls(log_limit=log_limit)
        for i, (reason, path, message) in enumerate(events):
            stats._add(reason, path, log_limit is None or i < log_limit, message)
        return stats

    @classmethod
    def from_log_dir(cls, log_dir: str) -> "SkipStats":
        """Sum the per-process JSON-lines files written by every worker: counts, paths, and
        `logged`, the paths the workers logged one by one (file by file, each in the order its
        worker recorded them; a line written before lines said so counts as logged, as every
        worker skip then was)."""
        stats = cls()
        if os.path.isdir(log_dir):
            for name in sorted(os.listdir(log_dir)):
                if name.startswith("skips-") and name.endswith(".jsonl"):
                    with open(os.path.join(log_dir, name), encoding="utf-8") as f:
                        for line in f:
                            event = json.loads(line)
                            stats._add(event["reason"], event["path"],
                                       bool(event.get("logged", True)),
                                       event.get("message", ""))
        return stats
