"""The benchmark leaderboard's slow statistics (benchmark_leaderboard.py): how many resamples and
exchanges its paired tests draw (and the texts that say so in leaderboard.md), running them with
a progress line per panel, and the cache that spares a rerun over the same cells from computing
them again.

The cache (`Cache`, workdir/leaderboard_cache.json) holds each result under a digest of
everything it is computed from: the kind of result, the arrays it reads (labels, the models'
probabilities, patient keys: dtype, shape and bytes), the settings (seed, alpha, resamples,
exchanges, classes) and the code that computes it (the source of this module and of
benchmark_leaderboard, paired, permutation, scoring and holm; numpy's and scipy's versions). A
result is reused only where all of these are the same, so it is the result that computing it
again would give; anything else (a cell recomputed, a model added once it raises the resamples
of every test, a setting or the code changed) gives another digest, and it is computed. Only
the entries a run used are written back: the file does not grow with old results.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import pathlib
import time

import numpy as np
import scipy

from crema_jax.evaluate import paired, permutation
from crema_jax.runtime import files

CACHE_FILE = "leaderboard_cache.json"
# The most resamples the paired tests draw unless the task file's bootstrap asks for more.
RESAMPLES_CAP = 19_999
# The modules whose code computes a cached result (`_code_digest`).
_CODE = ("benchmark_leaderboard", "leaderboard_tests", "paired", "permutation", "scoring", "holm")
_code_digest_memo: list[str] = []


def permutations_for(pending: list, alpha: float) -> int:
    """The exchanges each per-class permutation test draws: permutation.enough_for the table's
    per-class Holm family (at most one test per class of each pending comparison)."""
    return permutation.enough_for(sum(len(t["classes"]) for t in pending), alpha)


def holm_resamples(m: int, alpha: float) -> int:
    """The fewest bootstrap resamples B with which Holm's correction over m comparisons can
    reach alpha / 2 from the smallest p a bootstrap gives, its bound 2 / (B + 1):
    m x 2 / (B + 1) <= alpha / 2, so B + 1 >= 4 m / alpha."""
    return math.ceil(4 * m / alpha) - 1


def resamples_for(pending: list, suite: dict) -> int:
    """The resamples of each paired bootstrap: the task file's `bootstrap`, raised to
    holm_resamples over the table's macro comparisons, at most to RESAMPLES_CAP. With 500
    resamples and 40 comparisons no model could be called worse (40 x 2 / 501 = 0.16)."""
    needed = holm_resamples(len(pending), suite["alpha"])
    return int(max(suite["bootstrap"], min(RESAMPLES_CAP, needed)))


def macro_text(m: int, b: int, suite: dict) -> str:
    """What the macro tests were: their resamples (raised from the task file's for Holm's
    family, resamples_for), and the smallest adjusted p a bound can give where the cap leaves
    it above alpha / 2."""
    raised = (f", raised from the task file's {suite['bootstrap']} so that Holm's correction "
              f"can reach alpha" if b > suite["bootstrap"] else "")
    text = (f"paired bootstrap of the macro AUROC difference over patients ({b} resamples"
            f"{raised}; seed {suite['seed']}: a p no resample resolves is the bound "
            f"2/{b + 1}, shown as < and entering Holm's correction at that value: an adjusted "
            f"p it decides is a bound too); Holm's correction over the {m} comparisons of the "
            f"table")
    floor = m * 2 / (b + 1)
    if floor > suite["alpha"] / 2:
        text += (f" (an adjusted p is at least {floor:.2g}: more comparisons than {b} "
                 f"resamples resolve; set the task file's bootstrap to "
                 f"{holm_resamples(m, suite['alpha'])} or more)")
    return text


def per_class_text(m: int, n_permutations: int, alpha: float) -> str:
    """What the per-class tests were, and the smallest Holm-adjusted p a permutation p can
    give (m / (n + 1)) where the cap on exchanges leaves it above alpha / 2."""
    text = (f"each class's AUROC difference by a paired permutation test ({n_permutations} "
            f"exchanges of the models' ranks within patients), DeLong's test at "
            f"{paired.PERMUTATION_BELOW} positives and negatives; Holm's correction over the "
            f"{m} per-class tests of the table")
    floor = m / (n_permutations + 1)
    if floor > alpha / 2:
        text += (f" (a permutation-tested class's adjusted p is at least {floor:.2g}: more "
                 f"tests than {n_permutations} exchanges resolve)")
    return text


def _code_digest() -> str:
    if not _code_digest_memo:
        digest = hashlib.sha256(f"numpy {np.__version__} scipy {scipy.__version__}".encode())
        for name in _CODE:
            digest.update(pathlib.Path(__file__).with_name(f"{name}.py").read_bytes())
        _code_digest_memo.append(digest.hexdigest())
    return _code_digest_memo[0]


class Cache:
    """Results keyed by what they are computed from (module docstring). `path` None: nothing
    is read or written, every result is computed. `computed` / `reused` count them."""

    def __init__(self, path=None, log=print):
        self.path, self.found, self.used = path, {}, {}
        self.computed = self.reused = 0
        if path is not None and pathlib.Path(path).is_file():
            try:
                self.found = json.loads(pathlib.Path(path).read_text())["entries"]
                if not isinstance(self.found, dict):
                    raise TypeError(f"entries is a {type(self.found).__name__}, not a mapping")
            except (OSError, ValueError, KeyError, TypeError) as err:
                log(f"{path}: does not read ({type(err).__name__}: {err}); the leaderboard's "
                    "tests are computed again")
                self.found = {}

    @staticmethod
    def key(kind: str, arrays: dict, settings: dict) -> str:
        digest = hashlib.sha256(f"{_code_digest()} {kind} ".encode())
        digest.update(json.dumps(settings, sort_keys=True).encode())
        for name in sorted(arrays):
            value = np.ascontiguousarray(arrays[name])
            digest.update(f" {name} {value.dtype.str} {value.shape} ".encode())
            digest.update(value.tobytes())
        return digest.hexdigest()

    def get(self, kind: str, arrays: dict, settings: dict, compute) -> tuple[dict, bool]:
        """(`compute()`'s result, or the cached one, a copy either way; whether it came from
        the cache file). A result asked for again in this run (two entries of one model) is
        this run's, counted once: neither computed again nor reused."""
        key = self.key(kind, arrays, settings)
        reused = key in self.found
        if key not in self.used:
            self.used[key] = (self.found[key] if reused
                              else json.loads(json.dumps(compute())))  # as a rerun reads it
            self.computed, self.reused = self.computed + (not reused), self.reused + reused
        return copy.deepcopy(self.used[key]), reused

    def save(self) -> None:
        if self.path is not None:
            files.write_json_atomic(self.path, {"entries": self.used})


def run_test(t: dict, settings: dict) -> dict:
    """One pending paired test (benchmark_leaderboard._column) run and reduced to what the
    table keeps: the macro AUROC's paired bootstrap, each tested class's difference, p and
    test."""
    test = paired.compare_predictions(t["labels"], t["a"], t["b"], t["classes"],
                                      groups=t["groups"], alpha=settings["alpha"],
                                      n_resamples=settings["n_resamples"], seed=settings["seed"],
                                      n_permutations=settings["n_permutations"],
                                      metrics=("macro_auroc",))
    macro = test["macro_auroc"]
    return {"macro_auroc": {k: macro[k] for k in ("a", "b", "difference", "ci", "p", "p_bound")},
            "per_class": {c: {"difference": e["difference"], "p": e["p"], "test": e["test"]}
                          for c, e in test["per_class"].items()
                          if e.get("p") is not None and not e["not_testable"]}}


def run_tests(pending: list, suite: dict, cache: Cache, log) -> tuple[list, dict]:
    """(every pending test's result, in order, with its column, protocol, model, reference and
    against; the settings they drew: test_resamples, test_permutations). A line per panel says
    how far the tests are, how many came from the cache and how long they took."""
    settings = {"alpha": suite["alpha"], "seed": suite["seed"],
                "n_resamples": resamples_for(pending, suite),
                "n_permutations": permutations_for(pending, suite["alpha"])}
    panels: dict = {}
    for t in pending:
        panels.setdefault((t["column"], t["protocol"]), []).append(t)
    log(f"leaderboard: {len(pending)} paired tests in {len(panels)} "
        f"panel{'s' if len(panels) != 1 else ''} "
        f"({settings['n_resamples']} resamples, {settings['n_permutations']} exchanges)")
    start, tests = time.time(), []
    for (column, protocol), group in panels.items():
        t0, reused = time.time(), 0
        for t in group:
            arrays = {k: t[k] for k in ("labels", "a", "b", "groups")}
            result, hit = cache.get("paired test", arrays, {**settings, "classes": t["classes"]},
                                    lambda t=t: run_test(t, settings))
            reused += hit
            tests.append({**{k: t[k] for k in ("column", "protocol", "model", "reference",
                                               "against")}, **result})
        log(f"leaderboard: {column} / {protocol}: {len(group)} tests ({reused} reused) in "
            f"{time.time() - t0:.1f} s; {len(tests)} of {len(pending)} done, "
            f"{time.time() - start:.1f} s")
    return tests, {"test_resamples": settings["n_resamples"],
                   "test_permutations": settings["n_permutations"]}
