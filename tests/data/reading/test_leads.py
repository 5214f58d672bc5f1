"""check_lead_names: the one check of a list of lead names (data.leads, --lead_sets entries)."""
import pytest

from crema_jax.data.reading.leads import check_lead_names

TWELVE = "('I', 'II', 'III', 'aVR', 'aVL', 'aVF', 'V1', 'V2', 'V3', 'V4', 'V5', 'V6')"


@pytest.mark.parametrize("names", [("I",), ("V6", "I"), ("aVR", "II", "V1", "III")])
def test_known_distinct_leads_in_any_order_pass(names):
    assert check_lead_names(names, "data.leads") is None


@pytest.mark.parametrize("names, said", [
    (("I", "v1", "X"), f"f: unknown leads ['v1', 'X']; expected names from {TWELVE}"),
    ((), f"f: no leads; expected names from {TWELVE}"),
    (("",), f"f: unknown leads ['']; expected names from {TWELVE}"),
    (("V1", "II", "V1", "II", "I"), "f: II+V1 named twice; expected distinct leads"),  # canonical
    (("aVF", "aVF", "aVF"), "f: aVF named twice; expected distinct leads"),
])
def test_unknown_missing_or_repeated_leads_are_named(names, said):
    with pytest.raises(ValueError) as err:
        check_lead_names(names, "f")
    assert str(err.value) == said


def test_the_message_says_what_else_the_field_takes():
    with pytest.raises(ValueError) as err:
        check_lead_names(["I", "V7"], "--lead_sets entry 'I+V7'", expected="one of ['12'] or "
                         "'+'-joined names")
    assert str(err.value) == ("--lead_sets entry 'I+V7': unknown leads ['V7']; expected one of "
                              f"['12'] or '+'-joined names from {TWELVE}")
