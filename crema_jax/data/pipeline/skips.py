"""What happens to a record that fails: it is counted by reason in a SkipStats and dropped.

Bad input never stops a run: `transforms.ReadChunk` catches `RecordError` (and any unexpected
exception, wrapped with the record's path), counts it by reason in a `SkipStats` and drops the
record from its chunk (`transforms.NonEmpty` then filters out chunks left empty); `strict=True`
re-raises instead, naming the file and the problem. A damaged cache (cache/source.py's
DamagedCacheError) always stops the run, naming the shard, unless
data.skip_damaged_cache_records makes it a `damaged_cache_record` skip. How counts are surfaced:
- in-process (num_workers=0): the `SkipStats` passed to `make_*_dataset` holds exact counts,
  and the first KEEP skips of each reason (bounded, however many records a run skips);
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

# How many skips of each reason a SkipStats keeps (path and message), and how many logged paths:
# the counts are exact, what is kept is bounded.
KEEP = 20


def skip_table(events: Iterable[tuple[str, str]]) -> dict:
    """The skip table of (reason, path) events: {reason: {"count": events, "paths": sorted}},
    reasons in sorted order (SkipStats.summary, and prepare's summary.json and printed table)."""
    paths = collections.defaultdict(list)
    for reason, path in events:
        paths[reason].append(path)
    return {reason: {"count": len(paths[reason]), "paths": sorted(paths[reason])}
            for reason in sorted(paths)}


class SkipStats:
    """Counts of skipped records by reason, with the first few of each (see the module
    docstring). Memory stays bounded however many records are skipped (a pretrain over
    millions of records with a bad shard): the counts are exact, and `examples` keeps the
    first `keep` (path, message) of each reason, `logged` the first `keep` paths logged one by
    one. A consumer that needs every skip (embed's and predict's OUT.skipped.csv: the
    inference layer keeps each with its record) asks for `hand_over=True` and takes them as
    they come (`take`)."""

    def __init__(self, log_dir: str = "", log_limit: int | None = None, *, keep: int = KEEP,
                 hand_over: bool = False):
        """log_limit: how many skips are logged one by one (None: all); later ones are counted
        as every skip is, and one warning says that they are no longer logged (a folder of 300
        CT images had given 300 warning lines)."""
        self.log_dir = log_dir
        self.log_limit = log_limit
        self.keep = keep
        self.counts: collections.Counter = collections.Counter()
        # reason -> its first `keep` skips as (path, message), in the order recorded
        self.examples: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
        self.logged: list[str] = []  # the first `keep` paths logged one by one, in order
        # hand_over: every skip not yet taken, as (source row: `record`'s `index`, None when
        # not given; (reason, path, message)): whose skip it is, whatever file its path names.
        self._pending: list | None = [] if hand_over else None
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
            self.add(reason, path, message, logged=logged)
            if self._pending is not None:
                self._pending.append((index, (reason, path, message)))
            if self.log_dir:
                os.makedirs(self.log_dir, exist_ok=True)
                line = json.dumps({"reason": reason, "path": path, "message": message,
                                   "logged": logged})
                with open(os.path.join(self.log_dir, f"skips-{os.getpid()}.jsonl"), "a",
                          encoding="utf-8") as f:
                    f.write(line + "\n")

    def add(self, reason: str, path: str, message: str = "", *, logged: bool = False) -> None:
        """Counts one skip recorded elsewhere (a worker's file, a resumed run's kept skips),
        logging nothing; `logged`: it was logged one by one where it was recorded."""
        self.counts[reason] += 1
        if len(self.examples[reason]) < self.keep:
            self.examples[reason].append((path, message))
        if logged and len(self.logged) < self.keep:
            self.logged.append(path)

    def take(self) -> list[tuple[int | None, tuple[str, str, str]]]:
        """The skips recorded since the last take (hand_over=True), as (source row, (reason,
        path, message)) in the order recorded: one snapshot, no longer held here."""
        if self._pending is None:
            raise ValueError("SkipStats.take: made without hand_over=True, so no skip is kept "
                             "to hand over")
        with self._lock:
            taken, self._pending = self._pending, []
        return taken

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def paths(self) -> dict[str, list[str]]:
        """{reason: the paths of its `examples`}: the first `keep`, in the order recorded."""
        return {reason: [path for path, _ in kept] for reason, kept in self.examples.items()}

    def summary(self) -> dict:
        """skip_table's {reason: {"count", "paths"}}: the counts exact, the paths those of
        `examples` (the first `keep` of each reason), sorted."""
        table = skip_table((reason, path) for reason, paths in self.paths.items()
                           for path in paths)
        for reason, entry in table.items():
            entry["count"] = self.counts[reason]
        return table

    @classmethod
    def from_log_dir(cls, log_dir: str) -> "SkipStats":
        """Sum the per-process JSON-lines files written by every worker: counts, examples,
        and `logged`, the paths the workers logged one by one (file by file, each in the order
        its worker recorded them; a line written before lines said so counts as logged, as
        every worker skip then was)."""
        stats = cls()
        if os.path.isdir(log_dir):
            for name in sorted(os.listdir(log_dir)):
                if name.startswith("skips-") and name.endswith(".jsonl"):
                    with open(os.path.join(log_dir, name), encoding="utf-8") as f:
                        for line in f:
                            event = json.loads(line)
                            stats.add(event["reason"], event["path"],
                                      event.get("message", ""),
                                      logged=bool(event.get("logged", True)))
        return stats
