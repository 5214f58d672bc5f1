"""Per-record columns held in a few numpy arrays rather than one Python object per record.

A Grain source over a cache keeps each record's path and labels, in the main process and in
every worker it is pickled to. As Python lists of strings and dicts that cost ~2 KB per record
(2 GB per process for a million ECGs); packed, it is the bytes of the text plus 8 per record.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


class PackedStrings:
    """A read-only sequence of strings stored as one UTF-8 buffer and its offsets."""

    def __init__(self, texts: Iterable[str] = ()):
        encoded = [t.encode("utf-8", "surrogatepass") for t in texts]
        self.offsets = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum([len(b) for b in encoded], out=self.offsets[1:])
        self.buffer = np.frombuffer(b"".join(encoded), np.uint8).copy()

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> str:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} strings")
        index %= len(self)
        start, stop = self.offsets[index], self.offsets[index + 1]
        return self.buffer[start:stop].tobytes().decode("utf-8", "surrogatepass")

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def take(self, rows: Sequence[int]) -> "PackedStrings":
        return PackedStrings(self[int(i)] for i in rows)


class PackedLabels:
    """Each record's label names, as column numbers into `vocabulary` (offsets + one array)."""

    def __init__(self, labels: Iterable[Sequence[str]], vocabulary: Sequence[str]):
        column = {name: i for i, name in enumerate(vocabulary)}
        rows = [[column[name] for name in names if name in column] for names in labels]
        self.vocabulary = list(vocabulary)
        self.offsets = np.zeros(len(rows) + 1, np.int64)
        np.cumsum([len(r) for r in rows], out=self.offsets[1:])
        self.columns = np.fromiter((c for r in rows for c in r), np.int32, self.offsets[-1])

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def names(self, index: int) -> list[str]:
        start, stop = self.offsets[index], self.offsets[index + 1]
        return [self.vocabulary[c] for c in self.columns[start:stop]]

    def take(self, rows: Sequence[int], vocabulary: Sequence[str]) -> "PackedLabels":
        """The records at `rows`, over `vocabulary` (names outside it are dropped)."""
        return PackedLabels((self.names(int(i)) for i in rows), vocabulary)

    def multi_hot(self, index: int) -> np.ndarray:
        """float32 (len(vocabulary),): 1 at the record's labels."""
        out = np.zeros(len(self.vocabulary), np.float32)
        out[self.columns[self.offsets[index]:self.offsets[index + 1]]] = 1.0
        return out

    def dense(self) -> np.ndarray:
        """float32 (records, len(vocabulary)) multi-hot matrix."""
        out = np.zeros((len(self), len(self.vocabulary)), np.float32)
        out[np.repeat(np.arange(len(self)), np.diff(self.offsets)), self.columns] = 1.0
        return out
