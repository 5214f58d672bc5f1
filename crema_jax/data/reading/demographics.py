"""A record's age, sex and patient id in one vocabulary, however its format spelled them.

    sex_of(text) -> "Male" | "Female" | None      MALE / Male / M / male, FEMALE / Female / F
    age_in_years(value, unit) -> int | None        completed years of an age in years, months,
                                                   weeks, days or hours
    patient_id_of(text) -> str | None              the id stripped; None for a missing-value
                                                   word (MISSING_PATIENT_IDS) or blank

Every source writes `meta["sex"]` as "Male" or "Female" (WFDB `# Sex:` comments, PTB-XL's and
CODE-15's codes, the hospital exports' MALE, Female, M, ...) and `meta["age"]` in years; an
unknown or unstated value ("Unknown", "U", "O", "UN", "") is None, never guessed. A patient id
written as a missing-value word (NaN, NA, N/A, None, null: what pandas, R and spreadsheets
write for an empty cell) is no patient id: the record is its own patient, as with an empty
cell, never one large patient "NaN" that moves every such record into one split.
"""
from __future__ import annotations

import math

# Compared case-insensitively after stripping; "" (blank) is missing too.
MISSING_PATIENT_IDS = frozenset({"", "nan", "na", "n/a", "none", "null"})
_SEX = {"m": "Male", "male": "Male", "f": "Female", "female": "Female"}

# Units of an age per year: MUSE's AgeUnits words and DICOM AS's letters (PS3.5 6.2).
_YEAR, _MONTH, _WEEK, _DAY, _HOUR = 1.0, 12.0, 365.25 / 7, 365.25, 365.25 * 24
AGE_UNITS_PER_YEAR = {
    "years": _YEAR, "year": _YEAR, "y": _YEAR,
    "months": _MONTH, "month": _MONTH, "m": _MONTH,
    "weeks": _WEEK, "week": _WEEK, "w": _WEEK,
    "days": _DAY, "day": _DAY, "d": _DAY,
    "hours": _HOUR, "hour": _HOUR, "h": _HOUR,
}


def sex_of(text) -> str | None:
    """"Male" or "Female" for the spellings of either (case-insensitive: M, MALE, F, Female,
    ...); None for anything else (unknown, other, unstated)."""
    return _SEX.get(str(text or "").strip().casefold())


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


def patient_id_of(text) -> str | None:
    """The patient id `text` stripped, or None when it is blank or a missing-value word
    (MISSING_PATIENT_IDS, any case: "NaN", "N/A", "None", ...)."""
    if text is None:
        return None
    text = str(text).strip()
    return None if text.casefold() in MISSING_PATIENT_IDS else text
