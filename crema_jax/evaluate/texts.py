"""The texts the reports write for the statistics' results (report.md, the comparison plots,
the leaderboard and the drop test's verdict): a missing value, a p-value, a class left out of
the drop test, two models of one weights (compare's A and B, the benchmark's rows). Here, below
both paired.py and the reports, so the statistics can word a verdict with them and every report
writes them alike; plain text, no JAX (paired.py, plots.py and report_markdown.py import it).
"""
from __future__ import annotations

import math

# A missing value (a class that could not be scored, an undefined CI, no p-value).
DASH = "\u2014"

# How a bound is written: "<" the true p is below the value, "<=" at most the value.
BOUND_TEXT = {"<": "<", "<=": "≤"}


def p_text(entry: dict) -> str:
    """An entry's p-value as the reports write it (DASH without one): its bound, rounded up
    to two significant digits, when `p_bound` is "<" (no resample resolved it) or "<="
    (holm_bounded: "≤"), else the value (below 0.001: "< 0.001")."""
    value = entry.get("p")
    if value is None:
        return DASH
    bound = entry.get("p_bound")
    if bound is not None:
        digits = 1 - math.floor(math.log10(value))
        return (f"{BOUND_TEXT[bound]} "
                f"{math.ceil(round(value * 10 ** digits, 9)) / 10 ** digits:g}")
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def below_floor_text(entry: dict) -> str:
    """One class left out of the drop test (paired.paired_drop_difference's
    `classes_below_floor`), as its verdict and the reports write it."""
    return (f"{entry['class']} (the {entry['test_set']} test set has {entry['positives']} "
            f"positive and {entry['negatives']} negative patients)")


def same_weights_text(random: bool, seed: int) -> str:
    """What two models of one weights_digest (inference/backbones.py) are, in the words compare
    and the benchmark use: '(seed 3, one architecture and data path)' for a random init, else
    equal weights."""
    return (f"the same random init (seed {int(seed)}, one architecture and data path)" if random
            else "the same model (equal weights, architecture and data path)")


def same_model_text(random: bool, seed: int | None) -> str:
    """compare's A and B that compute the same thing (`random`: the same random init, drawn
    from `seed`), as compare prints it and report.md notes it."""
    return (f"A and B are {same_weights_text(random, seed)}: every difference is 0"
            + ("; --init_seed_b=N draws B from another seed, the folds, label subsets and "
               "bootstrap kept" if random else ""))
