"""The paired permutation test (evaluate/permutation.py) against references written here: the
AUROC as the mean of psi over (positive, negative) pairs (1 above, 1/2 tied), each exchange
applied to the two models' midranks as the module docstring states, and scikit-learn over
every exchange of a small set."""
import itertools

import numpy as np
import pytest
import scipy.stats
from sklearn.metrics import roc_auc_score

from crema_jax.evaluate import permutation


def _auroc_by_pairs(y: np.ndarray, values: np.ndarray) -> np.ndarray:
    """values (exchanges, records): each row's AUROC, the mean of psi over all pairs."""
    pos, neg = values[:, y], values[:, ~y]
    psi = ((pos[:, :, None] > neg[:, None, :])
           + 0.5 * (pos[:, :, None] == neg[:, None, :]))
    return psi.mean(axis=(1, 2))


def reference_exchange_p(y, a, b, *, groups=None, seed=0, n_permutations=9999):
    """The documented test, written out: midranks of each model; every one of the 2^G patient
    exchanges when 2^G <= n_permutations (p = share with |d| >= |observed|), else
    n_permutations exchanges, patient g of exchange i exchanged where bit g of row i of
    default_rng(seed).integers(0, 256, (n, ceil(G / 8)), uint8) unpacked (most significant bit
    first) is 1, p = (1 + hits) / (n + 1). Returns (observed difference, p)."""
    y = np.asarray(y) > 0.5
    ra, rb = scipy.stats.rankdata(a), scipy.stats.rankdata(b)
    ids = (np.arange(len(y)) if groups is None
           else np.unique(groups, return_index=True, return_inverse=True))
    if groups is not None:  # patients numbered in order of first appearance
        _, first, inverse = ids
        order = np.argsort(np.argsort(first))
        ids = order[inverse]
    n_groups = int(ids.max()) + 1
    observed = roc_auc_score(y, a) - roc_auc_score(y, b)
    if 2 ** n_groups <= n_permutations:
        flags = np.array(list(itertools.product([False, True], repeat=n_groups)))
    else:
        octets = np.random.default_rng(seed).integers(
            0, 256, size=(n_permutations, -(-n_groups // 8)), dtype=np.uint8)
        flags = np.unpackbits(octets, axis=1)[:, :n_groups].astype(bool)
    swap = flags[:, ids]
    d = _auroc_by_pairs(y, np.where(swap, rb, ra)) - _auroc_by_pairs(y, np.where(swap, ra, rb))
    hits = int(np.sum(np.abs(d) >= abs(observed) - 1e-12))
    if 2 ** n_groups <= n_permutations:
        return observed, hits / len(flags)
    return observed, (1 + hits) / (n_permutations + 1)


def test_every_exchange_of_ten_records_against_scikit_learn():
    """2^10 exchanges: the exact p, each exchange scored by roc_auc_score on the exchanged
    midranks; the same with three records of one patient exchanged together (2^8)."""
    rng = np.random.default_rng(3)
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0, 1, 0])
    a = rng.normal(size=10)
    b = np.round(a + rng.normal(size=10), 1)   # ties within B
    ra, rb = scipy.stats.rankdata(a), scipy.stats.rankdata(b)
    observed = roc_auc_score(y, a) - roc_auc_score(y, b)
    for groups in (None, ["p0", "p0", "p1", "p2", "p0", "p3", "p4", "p5", "p6", "p7"]):
        ids = np.arange(10) if groups is None else np.unique(groups, return_inverse=True)[1]
        diffs = []
        for bits in itertools.product([0, 1], repeat=int(ids.max()) + 1):
            swap = np.array(bits, bool)[ids]
            diffs.append(roc_auc_score(y, np.where(swap, rb, ra))
                         - roc_auc_score(y, np.where(swap, ra, rb)))
        want = np.mean(np.abs(diffs) >= abs(observed) - 1e-12)
        got = permutation.auroc_difference(y, a, b, groups=groups)
        assert got["enumerated"] and got["n_permutations"] == len(diffs)
        assert got["difference"] == pytest.approx(observed, abs=1e-12)
        assert got["p"] == pytest.approx(want, abs=1e-12)
        assert 0.05 < want < 1   # a p that a wrong exchange would move


@pytest.mark.parametrize("n,positives,groups", [(60, 5, False), (90, 40, True), (45, 30, False)])
def test_random_exchanges_match_the_written_out_test(n, positives, groups):
    """Monte Carlo exchanges: the same p as the reference drawn by the documented recipe, on
    correlated models with a real difference; the class counted may be the positives or the
    negatives (the smaller), patients of 1-3 records."""
    rng = np.random.default_rng(n)
    y = np.zeros(n, bool)
    y[rng.choice(n, positives, replace=False)] = True
    shared = rng.normal(size=n)
    a = shared + 1.2 * y + 0.6 * rng.normal(size=n)
    b = 1 / (1 + np.exp(-(shared + 0.4 * y + 0.6 * rng.normal(size=n))))  # another scale
    ids = np.repeat(np.arange(n), rng.integers(1, 4, size=n))[:n] if groups else None
    got = permutation.auroc_difference(y, a, b, groups=ids, n_permutations=2000, seed=[7, 1])
    observed, p = reference_exchange_p(y, a, b, groups=ids, seed=[7, 1], n_permutations=2000)
    assert not got["enumerated"] and got["n_permutations"] == 2000
    assert got["difference"] == pytest.approx(observed, abs=1e-12)
    assert got["p"] == pytest.approx(p, abs=1e-12)
    assert 1 / 2001 <= got["p"] < 0.5


def test_equal_models_and_monotone_rescaling():
    """Equal scores: every exchange leaves the difference at 0, p = 1. A monotone rescaling of
    one model (probabilities to logits) leaves its ranks, and so the p, unchanged."""
    rng = np.random.default_rng(1)
    y = rng.random(50) < 0.2
    y[:2] = [True, False]
    a, b = rng.random(50), rng.random(50)
    assert permutation.auroc_difference(y, a, a)["p"] == 1.0
    p = permutation.auroc_difference(y, a, b, n_permutations=999)["p"]
    assert permutation.auroc_difference(y, a, np.log(b / (1 - b)), n_permutations=999)["p"] == p


def test_refusals():
    with pytest.raises(ValueError, match="at least one positive and one negative"):
        permutation.auroc_difference(np.ones(5), np.arange(5.0), np.arange(5.0))
    with pytest.raises(ValueError, match=r"labels \(5\) and scores \(4, 5\) differ in length"):
        permutation.auroc_difference([0, 1, 0, 1, 0], np.arange(4.0), np.arange(5.0))
    with pytest.raises(ValueError, match="model B"):
        permutation.auroc_difference([0, 1, 0, 1, 0], np.arange(5.0), [0, 1, np.nan, 2, 3])


def test_random_exchanges_do_not_depend_on_the_block_size(monkeypatch):
    """The exchanges are drawn in blocks of rows (memory); any block size gives the bytes of
    one call, as the reference draws them: 45 patients, 6 bytes a row, blocks of 4 and 8
    rows."""
    rng = np.random.default_rng(11)
    y = rng.random(45) < 0.3
    y[:2] = [True, False]
    a, b = rng.normal(size=45), rng.normal(size=45) + 0.8 * y
    _, want = reference_exchange_p(y, a, b, seed=5, n_permutations=999)
    for cells in (45 * 4, 45 * 8 + 7, 1 << 22):
        monkeypatch.setattr(permutation, "_BLOCK_CELLS", cells)
        got = permutation.auroc_difference(y, a, b, seed=5, n_permutations=999)
        assert got["p"] == pytest.approx(want, abs=1e-12)


def test_enough_exchanges_for_a_holm_family():
    """n + 1 >= 2 m / alpha, so that m / (n + 1), the smallest adjusted p of a permutation p,
    stays at or below alpha / 2; 9,999 at least, 99,999 at most."""
    assert permutation.enough_for(10, 0.05) == 9999
    assert permutation.enough_for(1000, 0.05) == 39_999    # 2 x 1000 / 0.05 - 1
    assert permutation.enough_for(1000, 0.01) == 99_999    # 199,999 capped
    assert 1000 / (permutation.enough_for(1000, 0.05) + 1) == pytest.approx(0.025)
