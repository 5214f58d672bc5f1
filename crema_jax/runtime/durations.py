"""How every command writes a duration (a run's ETA, prepare's): hours, minutes and seconds as
1h02m03s, or 2m05s under an hour."""
from __future__ import annotations

import math


def format_duration(seconds: float) -> str:
    """`seconds` rounded to whole seconds, as 1h02m03s (2m05s under an hour; "?" when not a
    finite number, e.g. an ETA before any step was timed)."""
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
