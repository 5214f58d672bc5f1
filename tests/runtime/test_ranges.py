"""runtime/ranges.py: the one Range of the config's fields and the evaluation flags, its values
and the words of its refusals."""
import numpy as np
import pytest

from crema_jax.runtime.ranges import COUNT, INDEX, Range


@pytest.mark.parametrize("valid,expected", [
    (Range(0, what=""), ">= 0"),
    (Range(0, low_open=True, what=""), "> 0"),
    (Range(high=64, what=""), "<= 64"),
    (Range(high=60.0, what=""), "<= 60.0"),                      # a bound as written
    (Range(0.05, what="", unit="Hz"), ">= 0.05 Hz"),
    (Range(0, what="", note="0 = no clipping"), ">= 0 (0 = no clipping)"),
    (Range(50, 10_000, what="a rate in Hz"), "a rate in Hz in [50, 10000]"),
    (Range(0, 2**32 - 1, integer=True), "an integer in [0, 4294967295]"),
    (Range(0, 1, low_open=True, high_open=True), "a finite number in (0, 1)"),
    (Range(1, integer=True, special=(-1, "every device")), "-1 (every device) or an integer >= 1"),
    (COUNT, "an integer >= 1"),
])
def test_expected_says_the_bounds_as_written(valid, expected):
    assert valid.expected == expected
    assert valid.text == "expected " + expected


def test_special_is_the_one_value_outside_the_bounds_that_passes():
    mesh = Range(1, integer=True, special=(-1, "every device"))
    assert [mesh.ok(v) for v in (-1, 0, 1, 8, -2, -1.0, 1.5)] \
        == [True, False, True, True, False, False, False]


def test_numbers_of_any_real_type_are_checked_and_bools_are_not_numbers():
    assert INDEX.ok(np.int64(3)) and not INDEX.ok(np.float64(3.0)) and not INDEX.ok(-1)
    fraction = Range(0, 1)
    assert fraction.ok(np.float32(0.5)) and not fraction.ok(np.float32(1.5))
    assert not fraction.ok(True) and not fraction.ok(np.nan) and not fraction.ok("0.5")
