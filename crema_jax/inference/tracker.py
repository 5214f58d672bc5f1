"""What embed and predict do with each finished batch: the records it finishes (their rows,
skips and repairs, handed to a partial.Keeper when the run keeps its work on disk) and a
progress line on stderr.

The evaluation pipeline reads records in order (data/pipeline/datasets.py), so once a batch
holds source row m every earlier row is computed or skipped: the records whose rows all lie
at or before m are finished. A record cut into windows may span two batches; it is finished
with its last window.
"""
from __future__ import annotations

import sys
import time

import numpy as np

from crema_jax.runtime import durations

PROGRESS_SECONDS = 10.0  # a progress line at most this often (and one at the end)


class Progress:
    """"embed: 1200/4000 records, 35.2 records/s, ETA 1m20s" on stderr every PROGRESS_SECONDS
    (records/s over this run's records; those kept from an earlier run are counted done)."""

    def __init__(self, label: str, total: int, done: int = 0, *, stream=None,
                 every: float = PROGRESS_SECONDS):
        self.label, self.total, self.start_done = label, total, done
        self.stream = sys.stderr if stream is None else stream
        self.every, self.start = every, time.monotonic()
        self.shown = self.start

    def line(self, done: int, elapsed: float) -> str:
        rate = (done - self.start_done) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        return (f"{self.label}: {done}/{self.total} records, {rate:.1f} records/s, "
                f"ETA {durations.format_duration(eta)}")

    def update(self, done: int, *, last: bool = False) -> None:
        """A line when `every` seconds passed since the last; `last`: the run's end, said only
        after an earlier line (a run of a few seconds prints none: stderr stays for errors)."""
        now = time.monotonic()
        if not self.label or (now - self.shown < self.every if not last
                              else self.shown == self.start):
            return
        self.shown = now
        self.stream.write(self.line(done, now - self.start) + "\n")
        self.stream.flush()


class Tracker:
    """backbones.run's `on_batch` for embed: collects each record's rows, skips and repairs
    once it is finished (the module docstring), by its key, and hands them to `keeper`
    every keeper.flush_seconds (partial.py), else keeps them in `finished`.

    positions: the record positions (in the run's full list) the source reads, in order;
    keys: every record's key (partial.record_key, or the position as text); rows_of/windows_of:
    each source row's position in `positions` and window (None: one row per record);
    stats, repairs: the pipeline's SkipStats, made with hand_over=True (each skip taken with
    its source row: whose it is, whatever file it names; kept here, with its record, as the
    stats keep only counts and a few of each reason) and the source's repairs (None for an
    array)."""

    def __init__(self, positions, keys, *, rows_of=None, windows_of=None, stats=None,
                 repairs=None, keeper=None, progress: Progress | None = None):
        self.positions, self.keys = list(positions), keys
        self.rows_of = None if rows_of is None else np.asarray(rows_of)
        self.windows_of, self.stats, self.repairs = windows_of, stats, repairs
        self.keeper, self.progress = keeper, progress
        self.rows: dict[int, list] = {}       # source record (position in `positions`) -> rows
        self.skips: dict[int, list] = {}
        self.high, self.done = -1, 0
        self.finished: dict[str, dict] = {}   # not yet handed to the keeper (or no keeper)
        self.saved_at = time.monotonic()

    def __call__(self, piece: dict) -> None:
        index = np.asarray(piece["index"], np.int64)
        if not len(index):
            return
        owners = index if self.rows_of is None else self.rows_of[index]
        windows = (np.full(len(index), -1) if self.windows_of is None
                   else np.asarray(self.windows_of)[index])
        outputs = np.asarray(piece["outputs"], np.float32).mean(axis=1)
        for owner, window, row in zip(owners, windows, outputs):
            self.rows.setdefault(int(owner), []).append((int(window), row))
        self.high = max(self.high, int(index.max()))
        self._finish(self._finished_count())

    def _finished_count(self) -> int:
        """How many of the source's records are finished, all rows up to self.high read."""
        m = self.high
        if self.rows_of is None:
            return m + 1
        last = m + 1 == len(self.rows_of) or self.rows_of[m + 1] != self.rows_of[m]
        return int(self.rows_of[m]) + (1 if last else 0)

    def _finish(self, count: int) -> None:
        if self.stats is not None:
            for row, event in self.stats.take():
                if row is None:
                    raise ValueError(f"skip {event}: no source row recorded with it")
                owner = row if self.rows_of is None else int(self.rows_of[row])
                self.skips.setdefault(owner, []).append(list(event))
        for owner in range(self.done, count):
            rows = self.rows.pop(owner, [])
            made = None if self.repairs is None else self.repairs.get(owner)
            skips = self.skips.pop(owner, [])
            self.finished[self.keys[self.positions[owner]]] = {
                "rows": np.stack([r for _, r in rows]) if rows else np.zeros((0, 0), np.float32),
                "window": [w for w, _ in rows], "skips": skips,
                "repairs": None if made is None else [
                    {k: int(v) for k, v in made[0].items()},
                    {k: list(v) for k, v in made[1].items()}]}
        self.done = max(self.done, count)
        if self.progress is not None:
            self.progress.update(self._done_total())
        if self.keeper is not None and (
                time.monotonic() - self.saved_at >= self.keeper.flush_seconds):
            self.save()

    def _done_total(self) -> int:
        before = len(self.keys) - len(self.positions)
        return before + self.done

    def save(self) -> None:
        """Hands the finished records to the keeper (one chunk)."""
        if self.keeper is not None:
            self.keeper.save(self.finished)
            self.finished = {}
        self.saved_at = time.monotonic()

    def end(self) -> None:
        """The run read every record: all are finished."""
        self._finish(len(self.positions))
        self.save()
        if self.progress is not None:
            self.progress.update(self._done_total(), last=True)


def assemble(keys, entries: dict) -> dict:
    """The rows of the records `keys` names (every one finished: in `entries`, by key), in
    their order and their windows' order, as an uninterrupted run yields them: {"outputs"
    (rows, D), "record" (rows,) position in `keys`, "window" (rows,), "events" the skips
    (position in `keys`, reason, path, message) in record order, "made" {position: (repairs,
    repaired_leads)}}."""
    rows, record, window, events, made = [], [], [], [], {}
    for position, key in enumerate(keys):
        entry = entries[key]
        rows += list(entry["rows"])
        record += [position] * len(entry["window"])
        window += entry["window"]
        events += [(position, *skip) for skip in entry["skips"]]
        if entry["repairs"] is not None:
            made[position] = tuple(entry["repairs"])
    return {"outputs": np.stack(rows) if rows else np.zeros((0, 0), np.float32),
            "record": np.asarray(record, np.int64), "window": np.asarray(window, np.int64),
            "events": events, "made": made}
