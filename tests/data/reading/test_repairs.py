"""Ecg.repairs in words (reading/repairs.py): each expected text written out by hand."""
from crema_jax.data.reading import repairs


def test_a_records_repairs_in_the_order_they_are_made():
    made = {"leads_derived": 1, "flat_leads": 1, "nan_replaced": 10, "all_nan_leads": 1,
            "leads_dropped": 2}
    leads = {"leads_derived": ("III",), "flat_leads": ("V2",), "nan_replaced": ("II",),
             "all_nan_leads": ("III",), "leads_dropped": ("vx", "RESP")}
    assert repairs.describe(made, leads) == (
        "extra channels dropped (vx, RESP); NaN samples interpolated (10 in II); all-NaN leads "
        "dropped (III); flat leads dropped (V2); limb leads derived (III)")
    # ECGFounder's path: NaN set to 0, an all-NaN lead fed as zeros.
    assert repairs.describe({"nan_zeroed": 5010, "all_nan_leads_zeroed": 1},
                            {"nan_zeroed": ("II", "III"), "all_nan_leads_zeroed": ("III",)}) == (
        "NaN samples set to 0 (5010 in II, III); all-NaN leads fed as zeros (III)")


def test_counts_alone_without_leads_unknown_repairs_and_none():
    # A cache's index rows keep counts only; a repair this module does not know is named.
    assert repairs.describe({"nan_replaced": 7, "flat_leads": 2, "odd_fix": 1}) == (
        "NaN samples interpolated (7); flat leads dropped (2); odd fix (1)")
    assert repairs.describe({}) == "" and repairs.describe({"flat_leads": 0}) == ""


def test_a_runs_summary_names_the_first_records_of_each_kind():
    flat = {"flat_leads": 1}
    records = [("A", {"nan_replaced": 3}, {"nan_replaced": ("V1",)}), ("CLEAN", {}, {}),
               ("B", flat, {"flat_leads": ("V2",)}), ("C", flat, {"flat_leads": ("V3",)}),
               ("D", flat, {"flat_leads": ("I",)}), ("E", flat, {"flat_leads": ("V6",)})]
    assert repairs.summary(records, 9, "crema data path") == (
        "5 of 9 records repaired (crema data path): NaN samples interpolated in 1: A (3 in V1); "
        "flat leads dropped in 4: B (V2), C (V3), D (I) and 1 more")
    assert repairs.summary([("CLEAN", {}, {})], 1) == ""


def test_records_that_only_lack_leads_are_not_counted_as_repaired():
    """A 1-lead file given to a 12-lead model is not "repaired": it lacks leads, said apart."""
    absent = {"leads_absent": 11}
    named = {"leads_absent": ("II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5",
                              "V6")}
    assert repairs.summary([("L1", absent, named), ("L2", absent, named)], 2) == (
        "2 of 2 records lacking some leads the model reads: leads not in the file in 2: L1 (II, "
        "III, aVR, aVL, aVF, V1, V2, V3, V4, V5, V6), L2 (II, III, aVR, aVL, aVF, V1, V2, V3, V4, "
        "V5, V6)")
    assert repairs.summary([("A", {"nan_zeroed": 2}, {}), ("M", {"leads_absent": 1},
                                                          {"leads_absent": ("III",)})],
                           3, "ecgfounder data path") == (
        "1 of 3 records repaired, 1 of 3 lacking some leads the model reads (ecgfounder data "
        "path): NaN samples set to 0 in 1: A (2); leads not in the file in 1: M (III)")
