"""The allowed values of a number, written once for every layer: the config's fields
(config_checks.py) and the evaluation settings and commands' flags (evaluate/ranges.py) are
checked, and their refusals worded, by the same `Range`. Pure Python, so that `--help` imports
nothing heavy."""
from __future__ import annotations

import dataclasses
import math
import numbers


@dataclasses.dataclass(frozen=True)
class Range:
    """A finite number (an integer with `integer`) from `low` to `high` (None: unbounded), ends
    included unless open, or the one value of `special`; None passes (a setting left to the data
    path's recipe).

    `text` is the refusal's "expected ...": `what` (by default "an integer" or "a finite
    number"; "" where the message needs no noun), the bounds, `unit`, then `note` in
    parentheses; `special` (value, meaning) comes first: "-1 (auto) or an id >= 0"."""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    what: str | None = None
    unit: str = ""
    note: str = ""
    special: tuple[int, str] | None = None

    def ok(self, value) -> bool:
        if value is None:
            return True
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        if self.integer and not isinstance(value, numbers.Integral):  # 20.0 bootstrap resamples
            return False                                   # had been a TypeError after the checks
        if not math.isfinite(value):
            return False
        if self.special is not None and value == self.special[0]:
            return True
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    @property
    def text(self) -> str:
        return f"expected {self.expected}"

    @property
    def expected(self) -> str:
        """`text` without its "expected ": "an integer >= 1", "a rate in [0, 1)", "> 0"."""
        what = self.what if self.what is not None else (
            "an integer" if self.integer else "a finite number")
        low, high = _shown(self.low), _shown(self.high)
        if self.low is not None and self.high is not None:
            bounds = (f"in {'(' if self.low_open else '['}{low}, "
                      f"{high}{')' if self.high_open else ']'}")
        elif self.low is not None:
            bounds = f"{'>' if self.low_open else '>='} {low}"
        else:
            bounds = f"{'<' if self.high_open else '<='} {high}" if self.high is not None else ""
        said = " ".join(p for p in (what, bounds, self.unit, self.note and f"({self.note})") if p)
        return said if self.special is None else (
            f"{self.special[0]} ({self.special[1]}) or {said}")


def _shown(bound) -> str:
    """A bound as written: integers in full (4294967295, not 4.29497e+09), floats as Python
    writes them (60.0, 0.05)."""
    return "" if bound is None else str(bound)


POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
FRACTION = Range(0, 1, high_open=True)      # drop-path, label smoothing: 1 would drop all
COUNT = Range(1, integer=True)
INDEX = Range(0, integer=True)

# Reader processes (data.num_workers, the evaluation commands' --num_workers, a benchmark task
# file's num_workers) and reading threads per process (data.read_threads). A fixed cap, not one
# of os.cpu_count(): a config checked on a laptop runs unchanged on a 96-core host, which 256
# leaves room for (2.7 readers a core). data.num_workers=100000 had started hundreds of worker
# processes, taken ~15 GB and then ignored SIGTERM and Ctrl-C (only SIGKILL ended it, its
# workdir's lock left behind); 10**20 evaluation workers had run for ever.
MAX_READERS = 256
READERS = Range(0, MAX_READERS, integer=True)
