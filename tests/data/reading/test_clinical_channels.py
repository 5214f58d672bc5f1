"""Hospital exports with channels that are not ECG leads (a Holter's respiration trace, a
pacing channel): each is dropped before any check a lead is held to and counted in the
record's repairs; the 12 leads read back as they were stored. A file with no lead left is a
no_signal skip naming its channels."""
import re

import numpy as np
import pytest
import wfdb

from crema_jax.data.reading import clinical
from crema_jax.data.reading.ecg import RecordError
from tests.data import clinical_files as cf

FS = 500.0
# Each extra channel lacks what a lead must state (a unit; DICOM: sensitivity and units) and
# holds a quarter of the leads' samples (EDF: at a quarter of their rate).
EXTRA = {"dcm": ("Respiration", "Pacing"), "xml_aecg": ("MDC_IMPED_TTHOR",),
         "xml_muse": ("PACE",), "edf": ("Resp", "SpO2")}
MUSE_RECORDED = [0, 1, 6, 7, 8, 9, 10, 11]


@pytest.fixture(scope="module")
def signal_mv(cinc_sample_dir):
    """E07500's 12 leads (mV, 500 Hz, 10 s) in the order I..V6, as wfdb reads them."""
    record = wfdb.rdrecord(str(cinc_sample_dir / "E07500"))
    return record.p_signal.T.copy()


@pytest.mark.parametrize("fmt", sorted(EXTRA))
def test_non_ecg_channels_are_dropped_and_counted_not_a_refusal(tmp_path, signal_mv, fmt):
    path = tmp_path / f"exam{cf.SUFFIX[fmt]}"
    stored = cf.WRITERS[fmt](path, signal_mv, FS, extra=EXTRA[fmt])
    ecg = clinical.read_clinical(path, target_fs=None)
    assert ecg.repairs["leads_dropped"] == len(EXTRA[fmt])
    assert ecg.repaired_leads["leads_dropped"] == tuple(EXTRA[fmt])   # named, not only counted
    assert ecg.fs == FS and ecg.signal.shape == (12, 5000) and ecg.lead_present.all()
    recorded = MUSE_RECORDED if fmt == "xml_muse" else list(range(12))
    np.testing.assert_allclose(ecg.signal[recorded], stored[recorded], rtol=1.2e-7, atol=1e-9)
    assert not set(EXTRA[fmt]) & set(ecg.meta["source_leads"])
    meta = clinical.read_meta(path)  # what an index stores: the file is indexed, no BadRecord
    assert meta["patient_id"] == clinical.patient_hash(cf.PATIENT_ID)


def test_an_edf_channel_at_another_rate_with_a_unit_is_dropped_too(tmp_path, signal_mv):
    """A "Resp" signal in ohms at 125 Hz beside 500-Hz leads had been bad_sampling_rate."""
    path = tmp_path / "holter.edf"
    cf.write_edf(path, signal_mv, FS, extra=("Resp",))
    data = bytearray(path.read_bytes())
    ns = int(data[252:256])
    dimension = 256 + ns * 96 + 12 * 8  # signal 12 (the 13th): after 12 leads' 8-byte fields
    data[dimension:dimension + 8] = b"Ohm     "
    path.write_bytes(bytes(data))
    ecg = clinical.read_clinical(path, target_fs=None)
    assert ecg.repairs == {"leads_dropped": 1} and ecg.fs == FS and ecg.lead_present.all()


def _no_lead_left(path, fmt):
    """Every lead's name changed to one that names no lead (the extra channels stay)."""
    if fmt == "dcm":
        import pydicom
        ds = pydicom.dcmread(path)
        for k, ch in enumerate(ds.WaveformSequence[0].ChannelDefinitionSequence[:12]):
            source = ch.ChannelSourceSequence[0]
            source.CodingSchemeDesignator, source.CodeMeaning = "MDC", f"Channel {k}"
        ds.save_as(path)
        return "Channel 0"
    old, new, named = {"xml_aecg": (rb"MDC_ECG_LEAD_", b"MDC_EEG_", "MDC_EEG_I"),
                       "xml_muse": (rb"<LeadID>(I|II|V\d)<", rb"<LeadID>X\1<", "XI"),
                       "edf": (rb"ECG ", b"EMG ", "EMG I")}[fmt]
    path.write_bytes(re.sub(old, new, path.read_bytes()))
    return named


@pytest.mark.parametrize("fmt", sorted(EXTRA))
def test_a_file_with_no_ecg_lead_is_a_no_signal_skip_naming_its_channels(tmp_path, signal_mv,
                                                                         fmt):
    path = tmp_path / f"exam{cf.SUFFIX[fmt]}"
    cf.WRITERS[fmt](path, signal_mv, FS, extra=EXTRA[fmt])
    named = _no_lead_left(path, fmt)
    for read in (clinical.read_meta,
                 lambda p: clinical.read_clinical(p, clinical.ClinicalFile(False))):
        with pytest.raises(RecordError) as err:
            read(path)
        assert err.value.reason == "no_signal" and str(path) in str(err.value)
        assert "holds no ECG lead" in str(err.value)
        assert repr(named) in str(err.value) and repr(EXTRA[fmt][0]) in str(err.value)


def test_a_missing_lead_is_named_beside_the_dropped_channels(tmp_path, signal_mv):
    path = tmp_path / "holter.edf"
    cf.write_edf(path, signal_mv, FS, extra=("Resp",))
    path.write_bytes(path.read_bytes().replace(b"ECG V6", b"EMG V6"))
    with pytest.raises(RecordError) as err:
        clinical.read_clinical(path)
    assert err.value.reason == "missing_leads" and "['V6']" in str(err.value)
    assert "'Resp'" in str(err.value) and "'EMG V6'" in str(err.value)
