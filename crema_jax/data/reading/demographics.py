"""A record's age in years, whatever unit its format stated it in.

    age_in_years(value, unit) -> int | None        completed years of an age in years, months,
                                                   weeks, days or hours

Every source writes `meta["age"]` in years; an unknown or unstated value is None, never guessed.
"""
from __future__ import annotations

import math

# Units of an age per year: MUSE's AgeUnits words and DICOM AS's letters (PS3.5 6.2).
_YEAR, _MONTH, _WEEK, _DAY, _HOUR = 1.0, 12.0, 365.25 / 7, 365.25, 365.25 * 24
AGE_UNITS_PER_YEAR = {
    "years": _YEAR, "year": _YEAR, "y": _YEAR,
    "months": _MONTH, "month": _MONTH, "m": _MONTH,
    "weeks": _WEEK, "week": _WEEK, "w": _WEEK,
    "days": _DAY, "day": _DAY, "d": _DAY,
    "hours": _HOUR, "hour": _HOUR, "h": _HOUR,
}


def age_in_years(value, unit="years") -> int | None:
    """The completed years of an age of `value` `unit`s (YEARS, MONTHS, WEEKS, DAYS, HOURS or
    DICOM's Y, M, W, D, H; any case): 6 months -> 0, 30 months -> 2. None for a value that is
    not a non-negative finite number or a unit not among those."""
    per_year = AGE_UNITS_PER_YEAR.get(str(unit or "").strip().casefold())
    try:
        number = float(str(value).strip())
    except (TypeError, ValueError):
        return None
    if per_year is None or not math.isfinite(number) or number < 0:
        return None
    return int(number // per_year)
