"""RawArraySource reads arrays through canonical_ecg, as WfdbSource reads files."""
import numpy as np
import pytest

from crema_jax.data.pipeline.sources import RawArraySource, Reading
from crema_jax.data.reading.ecg import RecordError


def _source(x, nan_policy):
    reading = Reading(target_fs=250.0, nan_policy=nan_policy, preprocess=None)
    return RawArraySource(x, fs=250.0, reading=reading)


def test_nan_runs_in_arrays_follow_the_data_path_policy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 12, 500)).astype(np.float32)
    x[0, 2, 100:110] = np.nan
    x[1] = np.nan                                          # nothing finite at all
    source = _source(x, "interpolate")
    got = source.load(source[0])["signal"]
    t = np.arange(500)
    good = ~np.isnan(x[0, 2])
    np.testing.assert_array_equal(got[2], np.interp(t, t[good], x[0, 2, good]).astype(np.float32))
    np.testing.assert_array_equal(got[[0, 1, 3]], x[0, [0, 1, 3]])
    with pytest.raises(RecordError) as err:                 # skipped, as a file would be
        source.load(source[1])
    assert err.value.reason == "no_signal"
    zeroed = _source(x, "zero")
    assert (zeroed.load(zeroed[0])["signal"][2, 100:110] == 0).all()
    dropped = _source(x, "drop_window")
    with pytest.raises(RecordError) as err:
        dropped.load(dropped[0])
    assert (err.value.reason, err.value.path) == ("nan_window", "arrays[0]")
