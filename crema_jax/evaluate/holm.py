"""Holm's step-down correction of a family of p-values (Holm 1979), some of which may be bounds
(a bootstrap p no resample resolved, paired.py)."""
from __future__ import annotations

import numpy as np


def holm(p_values) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979), in the given order: with the m p-values
    sorted ascending, p_(i) becomes max over j <= i of min(1, (m - j + 1) p_(j)). Rejecting
    where the adjusted p < alpha controls the family-wise error rate at alpha."""
    p = np.asarray(p_values, np.float64)
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (len(p) - np.arange(len(p))) * p[order])
    adjusted = np.empty_like(p)
    adjusted[order] = np.maximum.accumulate(scaled) if len(p) else scaled
    return adjusted.tolist()


def holm_bounded(p_values, bounds) -> list[tuple[float, str | None]]:
    """Holm's adjusted p-values (`holm`) of p-values some of which are bounds (`bounds[i]`
    "<": the true p is below p_values[i], as a bootstrap p no resample resolved; None: exact),
    each with its own bound: (adjusted, None) when exact, else (adjusted, "<" or "<=").

    Holm's adjusted p never decreases when a raw p increases, so with each bounded p at its
    bound (`holm` of p_values) every adjusted value is an upper bound, and with each at 0 a
    lower one: where the two agree the value is exact (an exact p's term is the running max).
    Otherwise it inherits the bound of the raw p whose term is the running max: "<" when that
    p is a "<" bound and its term (m - j + 1) p_(j) is below the cap of 1, else "<=" (a capped
    term, or an exact term that a bounded p could displace in the order)."""
    p = np.asarray(p_values, np.float64)
    bounded = np.asarray([b is not None for b in bounds], bool)
    if len(bounds) != len(p) or any(b not in (None, "<") for b in bounds):
        raise ValueError(f"bounds {list(bounds)}: expected one None or '<' per p-value "
                         f"({len(p)})")
    upper, lower = holm(p), holm(np.where(bounded, 0.0, p))
    order = np.argsort(p, kind="stable")
    scaled = (len(p) - np.arange(len(p))) * p[order]
    source = np.empty(len(p), np.int64)
    best = -1
    for rank, i in enumerate(order):  # the term that is the running max (the first reaching
        # it; on a tie, to rounding, an exact p's term, which the bounded one need not reach)
        tie = best >= 0 and bool(np.isclose(scaled[rank], scaled[best], rtol=1e-9, atol=0.0))
        if (best < 0 or (scaled[rank] > scaled[best] and not tie)
                or (tie and not bounded[i] and bounded[order[best]])):
            best = rank
        source[i] = best
    out = []
    for i in range(len(p)):
        rank = source[i]
        if np.isclose(upper[i], lower[i], rtol=1e-9, atol=0.0):
            out.append((upper[i], None))
        elif bounded[order[rank]] and scaled[rank] < 1.0:
            out.append((upper[i], "<"))
        else:
            out.append((upper[i], "<="))
    return out
