"""The one way a duration is written (runtime/durations.py)."""
import math

import pytest

from crema_jax.runtime import durations


@pytest.mark.parametrize("seconds, text", [
    (0, "0m00s"), (5.4, "0m05s"), (125, "2m05s"), (3599.4, "59m59s"), (3599.6, "1h00m00s"),
    (3723, "1h02m03s"), (25 * 3600 + 61, "25h01m01s"), (math.inf, "?"), (math.nan, "?")])
def test_hours_minutes_and_seconds(seconds, text):
    assert durations.format_duration(seconds) == text
