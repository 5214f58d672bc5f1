"""A RecordInfo's reader survives the trip through JSON that shard tasks take (the plan file a
Beam worker reads its shard from): each kind comes back equal, of its own class, with tuples."""
import json

import pytest

from crema_jax.data.reading import arrays, clinical, read


@pytest.mark.parametrize("reader", [
    None,
    arrays.ArrayFormat(fs=400.0, leads=("I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3",
                                        "V4", "V5", "V6"), units="uV", time_axis=0,
                       key="tracings", trim_zero_padding=True),
    arrays.ArrayFormat(fs=500.0, leads=("I",)),
    clinical.ClinicalFile(require_12_leads=False),
    read.BadRecord("unreadable", "x.hea: cannot read header"),
])
def test_reader_round_trips_through_json(reader):
    data = json.loads(json.dumps(read.reader_to_json(reader)))
    back = read.reader_from_json(data)
    assert back == reader and type(back) is type(reader)
    if isinstance(reader, arrays.ArrayFormat):
        assert isinstance(back.leads, tuple)
        hash(back)  # frozen and hashable, as the original
