"""What was repaired in a record, in words: THE one place where `Ecg.repairs` (repair name ->
count) and `Ecg.repaired_leads` (repair name -> leads) become text, for a record
(`describe`: predict's per-record line and CSV column) and for a run (`summary`: the one note
embed and predict print). ecg.py says what each repair does.

    describe({"nan_replaced": 10, "flat_leads": 1}, {"nan_replaced": ("II",),
              "flat_leads": ("V2",)})
    -> "NaN samples interpolated (10 in II); flat leads dropped (V2)"
"""
from __future__ import annotations

from typing import Mapping, Sequence

# Repair name -> what was done, in the order a record is repaired (ecg.canonical_ecg).
WORDS = {
    "leads_dropped": "extra channels dropped",
    "nan_replaced": "NaN samples interpolated",
    "nan_zeroed": "NaN samples set to 0",
    "all_nan_leads": "all-NaN leads dropped",
    "all_nan_leads_zeroed": "all-NaN leads fed as zeros",
    "flat_leads": "flat leads dropped",
    "flat_leads_kept": "flat leads fed as recorded",
    "leads_derived": "limb leads derived",
    "leads_absent": "leads not in the file",
}
# Not repairs but what a file lacks (a lead, or a lead's signal): said beside them, counted
# apart in a run's summary.
NOTES = ("leads_absent", "flat_leads_kept")
# Repairs counted in samples rather than in leads: "10 in II".
SAMPLE_COUNTS = ("nan_replaced", "nan_zeroed")
SHOWN = 3  # records named per kind of repair in a run's summary


def _rank(name: str) -> tuple:
    """Known repairs in WORDS's order, then any other in name order."""
    return (0, list(WORDS).index(name), "") if name in WORDS else (1, 0, name)


def _order(repairs: Mapping) -> list[str]:
    """The repairs made (a count above 0), in _rank's order."""
    return sorted((name for name in repairs if repairs[name]), key=_rank)


def _what(name: str) -> str:
    return WORDS.get(name, name.replace("_", " "))


def _detail(name: str, count: int, leads: Sequence[str]) -> str:
    """"10 in II, III" for samples, "III, V1" for leads; the count alone without leads."""
    where = ", ".join(leads)
    if name in SAMPLE_COUNTS:
        return f"{count} in {where}" if where else str(count)
    return where or str(count)


def describe(repairs: Mapping, repaired_leads: Mapping | None = None) -> str:
    """One record's repairs: "NaN samples interpolated (10 in II); flat leads dropped (V2)";
    "" for none."""
    named = repaired_leads or {}
    return "; ".join(f"{_what(name)} ({_detail(name, int(repairs[name]), named.get(name, ()))})"
                     for name in _order(repairs))


def summary(records: Sequence[tuple[str, Mapping, Mapping]], total: int, where: str = "") -> str:
    """A run's repairs, per kind: how many records and which (the first SHOWN, with their
    details): "2 of 5 records repaired (WHERE): NaN samples interpolated in 2: A (10 in II),
    B (3 in V1); flat leads dropped in 1: A (V2)". `records`: (id, repairs, repaired_leads) of
    records read (with or without repairs); `total`: the records given. Records that only lack
    leads (NOTES) are counted apart: "1 of 2 records repaired, 1 of 2 lacking some leads the
    model reads (WHERE): ...". "" when none was repaired or lacks a lead."""
    repaired = [r for r in records if _order(r[1])]
    if not repaired:
        return ""
    fixed = sum(any(name not in NOTES for name in _order(r[1])) for r in repaired)
    lacking = sum(any(name in NOTES for name in _order(r[1])) for r in repaired)
    heads = ([f"{fixed} of {total} records repaired"] if fixed else []) + (
        [f"{lacking} of {total} {'records ' * (not fixed)}lacking some leads the model reads"]
        if lacking else [])
    kinds: dict[str, list[str]] = {}
    for record_id, repairs, named in repaired:
        for name in _order(repairs):
            detail = _detail(name, int(repairs[name]), (named or {}).get(name, ()))
            kinds.setdefault(name, []).append(f"{record_id} ({detail})")
    parts = []
    for name in sorted(kinds, key=_rank):
        shown = kinds[name][:SHOWN]
        more = len(kinds[name]) - len(shown)
        parts.append(f"{_what(name)} in {len(kinds[name])}: {', '.join(shown)}"
                     + (f" and {more} more" if more else ""))
    where = f" ({where})" if where else ""
    return f"{', '.join(heads)}{where}: {'; '.join(parts)}"
