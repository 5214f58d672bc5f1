"""A paired permutation test of two AUROCs on the same records (Bandos, Rockette & Gur 2005,
"A permutation test sensitive to differences in areas for comparing ROC curves from a paired
design", Statistics in Medicine 24(18)).

Each model's scores become midranks over the records (so two models on different scales, a
logit and a probability, are comparable); a permutation exchanges the two models' ranks of
every record of a chosen set of patients (all of a patient's records together, scoring.Groups'
ids; each record its own patient without ids). The statistic is AUROC(A) - AUROC(B) on the
exchanged ranks, the same difference as on the scores for the identity. Under the null that
the two models' ranks of a patient are exchangeable (their ROC curves equal), every exchange
is as likely as the one observed; the test is sensitive to AUROC differences.

- p, two-sided: the share of exchanges whose |difference| reaches the observed one (within
  1e-12). With G patients, every one of the 2^G exchanges when 2^G <= n_permutations (a
  complete enumeration, `enumerated`), else n_permutations random ones (each patient exchanged
  with probability 1/2: the bits, most significant first, of the bytes of
  numpy's default_rng(seed).integers(0, 256, (n_permutations, ceil(G / 8)), uint8), drawn in
  blocks of a multiple of 4 rows, which give the same bytes as one call) and
  p = (1 + hits) / (n_permutations + 1), a valid p-value that is never 0 (Phipson & Smyth
  2010).
- The null is one of exchangeable ranks: an exchanged rank vector is no longer a ranking, so
  even the complete enumeration is a close approximation, not an exact level. Measured
  (bench/calibration.py; docs/benchmarks.md), it rejects a true null in 4.5-5.2% of tests at
  5 to 30 positives, and fewer at 3, where DeLong's normal approximation rejects 6-17%.

Computation: the AUROC counts, for each record of the smaller class, how many records of the
other class rank below it (ties 1/2). A record of the smaller class takes one of its two ranks
(exchanged or not), so these counts are a matrix product of the exchange flags of the larger
class with (below the rank from A) - (below the rank from B) for each of the 2k candidate
ranks: O(permutations x records x k), k the smaller class's size.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.stats

from crema_jax.evaluate import scoring

N_PERMUTATIONS = 9999
# The most exchanges a test draws for a large Holm family (`enough_for`).
MAX_PERMUTATIONS = 99_999
# Statistics this close are equal (rounding of values equal in exact arithmetic): here an
# exchange's |statistic| against the observed one, in paired.py a bootstrap difference against 0.
TIE = 1e-12
# Exchange flags drawn per block: at most this many (permutation, record) cells at once.
_BLOCK_CELLS = 1 << 22


def _below(ranks: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(thresholds, records): 1 where the record's rank is below the threshold, 1/2 tied."""
    return ((ranks[None, :] < thresholds[:, None])
            + 0.5 * (ranks[None, :] == thresholds[:, None]))


class _Differences:
    """AUROC(A) - AUROC(B) of exchanged midranks, for many exchange patterns at once."""

    def __init__(self, y: np.ndarray, ranks_a: np.ndarray, ranks_b: np.ndarray):
        # Count over the smaller class (AUROC(neg above pos) = 1 - AUROC: the sign flips).
        self.sign = 1.0 if y.sum() <= (~y).sum() else -1.0
        small = y if self.sign > 0 else ~y
        self.small, self.large = np.flatnonzero(small), np.flatnonzero(~small)
        self.k = len(self.small)
        self.scale = self.sign / (self.k * len(self.large))
        # The 2k ranks a small-class record can take: A's (column i), B's (column k + i).
        candidates = np.concatenate([ranks_a[self.small], ranks_b[self.small]])
        below_a = _below(ranks_a[self.large], candidates)
        below_b = _below(ranks_b[self.large], candidates)
        self.base_a, self.base_b = below_a.sum(1), below_b.sum(1)
        # Counts of halves up to the record count are exact in float32 (below 2^23 records).
        self.delta = (below_b - below_a).T.astype(np.float32)  # (large records, 2k)

    def __call__(self, flags: np.ndarray) -> np.ndarray:
        """flags (permutations, records) bool, True = exchanged: the differences."""
        shift = (flags[:, self.large].astype(np.float32) @ self.delta).astype(np.float64)
        count_a, count_b = self.base_a + shift, self.base_b - shift  # A*'s and B*'s counts
        swapped, cols = flags[:, self.small], np.arange(self.k)
        # A small-class record takes B's rank in A* when exchanged, and A's in B*.
        a = np.where(swapped, count_a[:, self.k + cols], count_a[:, cols]).sum(1)
        b = np.where(swapped, count_b[:, cols], count_b[:, self.k + cols]).sum(1)
        return (a - b) * self.scale


def auroc_difference(y_true, scores_a, scores_b, *, groups=None,
                     n_permutations: int = N_PERMUTATIONS, seed=0) -> dict:
    """The paired permutation test of AUROC(A) - AUROC(B) for one binary column (at least one
    positive and one negative): {"difference", "p", "n_permutations", "enumerated"}
    (module docstring)."""
    y = np.asarray(y_true).reshape(-1) > 0.5
    scoring.check_finite({"model A": scores_a, "model B": scores_b})
    a = np.asarray(scores_a, np.float64).reshape(-1)
    b = np.asarray(scores_b, np.float64).reshape(-1)
    if not len(a) == len(b) == len(y):
        raise ValueError(f"labels ({len(y)}) and scores ({len(a)}, {len(b)}) differ in length")
    if y.all() or not y.any():
        raise ValueError("the permutation test needs at least one positive and one negative")
    differences = _Differences(y, scipy.stats.rankdata(a), scipy.stats.rankdata(b))
    patient = scoring.Groups(len(y), groups).ids
    n_groups = int(patient.max()) + 1
    observed = float(differences(np.zeros((1, len(y)), bool))[0])
    enumerated = n_groups < 63 and 2 ** n_groups <= n_permutations
    # Rows per block: a multiple of 4, so that each block's bytes are whole 32-bit draws and
    # the blocks together are the bytes of one call (numpy discards a draw's unused bytes).
    per_block = max(4, _BLOCK_CELLS // len(y) // 4 * 4)
    hits, total = 0, 0
    if enumerated:
        codes = np.arange(2 ** n_groups, dtype=np.int64)
        for start in range(0, len(codes), per_block):
            block = codes[start:start + per_block]
            flags = (block[:, None] >> np.arange(n_groups)[None, :]) & 1 == 1
            hits += _hits(differences(flags[:, patient]), observed)
        p = hits / 2 ** n_groups
    else:
        rng = np.random.default_rng(seed)
        while total < n_permutations:
            flags = _coin_flips(rng, min(per_block, n_permutations - total), n_groups)
            hits += _hits(differences(flags[:, patient]), observed)
            total += len(flags)
        p = (1 + hits) / (n_permutations + 1)
    return {"difference": observed, "p": float(min(1.0, p)),
            "n_permutations": 2 ** n_groups if enumerated else n_permutations,
            "enumerated": enumerated}


def enough_for(tests: int, alpha: float) -> int:
    """Exchanges for each of `tests` permutation tests corrected together by Holm: enough that
    the smallest p a test gives, 1 / (n + 1), stays resolvable, m / (n + 1) <= alpha / 2; at
    least N_PERMUTATIONS, at most MAX_PERMUTATIONS (the cost is linear in n)."""
    return int(min(MAX_PERMUTATIONS, max(N_PERMUTATIONS, math.ceil(2 * tests / alpha) - 1)))


def _coin_flips(rng: np.random.Generator, rows: int, columns: int) -> np.ndarray:
    """(rows, columns) bool, each True with probability 1/2: the bits of uniform bytes."""
    octets = rng.integers(0, 256, size=(rows, -(-columns // 8)), dtype=np.uint8)
    return np.unpackbits(octets, axis=1, count=columns).astype(bool)


def _hits(values: np.ndarray, observed: float) -> int:
    return int(np.sum(np.abs(values) >= abs(observed) - TIE))
