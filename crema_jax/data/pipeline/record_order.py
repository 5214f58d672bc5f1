"""The order in which a pipeline reads records: one seed -> the same order on every run and after
a checkpoint restore.

Global order: epoch e is a permutation of range(n) drawn from default_rng([seed, e]) (or the
identity when shuffle=False); epochs are concatenated; process p of P takes every P-th position
starting at p; element k of the source is the k-th chunk of B record ids of this process.

Why chunks instead of one Grain element per record: Grain spends ~10 us of bookkeeping per op
per element (~90 us for a source-shuffle-repeat-slice-map-filter-map chain, measured), and
grain's index_shuffle costs ~65 us per element on datasets of ~1e3 records. The cache target
(>= 5,000 ECGs/s per worker = 200 us per ECG including the read) leaves no room for that, so
each Grain element is a batch-sized chunk of records (one vectorised lookup per batch).
"""
from __future__ import annotations

import sys

import numpy as np


class RecordOrder:
    """Grain data source whose element k is the k-th chunk of record ids of this process.

    Global order: epoch e is a permutation of range(n) drawn from default_rng([seed, e]) (or the
    identity when shuffle=False); epochs are concatenated; this process takes every
    process_count-th position starting at process_index; chunk k holds positions [kB, (k+1)B).
    """

    def __init__(self, num_records: int, *, chunk_size: int, seed: int, shuffle: bool,
                 num_epochs: int | None, process_index: int, process_count: int):
        if num_records <= 0:
            raise ValueError("the data source holds no records (check data.root / data.split)")
        self.n, self.chunk, self.seed, self.shuffle = num_records, chunk_size, seed, shuffle
        self.num_epochs, self.pi, self.pc = num_epochs, process_index, process_count
        total = sys.maxsize if num_epochs is None else num_records * num_epochs
        self.per_process = len(range(process_index, total, process_count))
        self._perms: dict[int, np.ndarray] = {}

    def __getstate__(self):
        return {**self.__dict__, "_perms": {}}  # Workers rebuild permutations on demand.

    def __len__(self) -> int:
        return -(-self.per_process // self.chunk)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) >= 2:  # Keep the two latest: chunks rarely span more epochs.
                self._perms.pop(min(self._perms))
            self._perms[epoch] = (np.random.default_rng([self.seed, epoch]).permutation(self.n)
                                  if self.shuffle else np.arange(self.n))
        return self._perms[epoch]

    def __getitem__(self, k: int) -> np.ndarray:
        local = np.arange(k * self.chunk, min((k + 1) * self.chunk, self.per_process))
        positions = self.pi + self.pc * local
        epochs, within = np.divmod(positions, self.n)
        out = np.empty(len(positions), np.int64)
        for epoch in np.unique(epochs):
            sel = epochs == epoch
            out[sel] = self._permutation(int(epoch))[within[sel]]
        return out

    def __repr__(self) -> str:
        return (f"RecordOrder(n={self.n}, chunk={self.chunk}, seed={self.seed}, "
                f"shuffle={self.shuffle}, epochs={self.num_epochs}, shard={self.pi}/{self.pc})")
