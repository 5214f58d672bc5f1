"""What `embed` and `predict` say of the ECGs they could not read, in one wording for both: the
summary line (`line`) and the error when none could be read (`check_some_read`). The library
(inference/embed.py) only counts the skips (data/pipeline/skips.py's SkipStats) and logs the
first few one by one (embed.SKIPS_NAMED).
"""
from __future__ import annotations

from crema_jax.cli import command


def reasons(skipped) -> str:
    """"truncated_signal 1, missing_file 2": the records skipped (a SkipStats), by reason ("none"
    for no reason recorded)."""
    return ", ".join(f"{reason} {count}" for reason, count in
                     sorted(skipped.counts.items())) or "none"


def line(skipped, earlier: int = 0) -> str:
    """"skipped 300 unreadable records (no_signal 300): ['a', ...] and 295 more": the records
    skipped, by reason, and by path the ones the warnings above it named (SkipStats.logged).
    `earlier`: how many of them a resumed run kept from an earlier run (counted once, and
    named by no warning of this run): "skipped 3 unreadable records (no_signal 3; 2 kept from
    an earlier run): ['c']"."""
    named = list(skipped.logged)
    now = skipped.total - earlier
    more = now - len(named)
    return (f"skipped {skipped.total} unreadable records ({reasons(skipped)}"
            + (f"; {earlier} kept from an earlier run" if earlier else "") + ")"
            + (f": {named}" if now else "") + (f" and {more} more" if more > 0 else ""))


def check_some_read(out: dict, given: str) -> None:
    """CommandError naming the input `given` when embed's dict `out` holds no row: every ECG was
    skipped, and why (a CSV of no row had been written, exit 0)."""
    if not len(out["outputs"]):
        raise command.CommandError(f"{given}: no ECG could be read ({out['skipped'].total} "
                                   f"skipped: {reasons(out['skipped'])}); nothing written")
