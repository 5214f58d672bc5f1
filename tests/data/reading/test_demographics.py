"""A record's age in years, whatever unit its format stated it in: ages stated in months,
weeks, days or hours read back as completed years."""
import numpy as np
import pytest

from crema_jax.data.reading import clinical
from tests.data import clinical_files as cf

FS = 500.0
SIGNAL = np.stack([np.sin(2 * np.pi * (1 + 0.1 * k) * np.arange(5000) / FS) for k in range(12)])


@pytest.mark.parametrize("age, units, years", [
    ("6", "MONTHS", 0), ("30", "MONTHS", 2), ("61", "YEARS", 61), ("61", None, 61),
    ("3", "WEEKS", 0), ("106", "WEEKS", 2), ("400", "DAYS", 1), ("20", "HOURS", 0),
    ("9000", "HOURS", 1), ("6", "FORTNIGHTS", None), ("", "YEARS", None)])
def test_muse_age_in_its_age_units_is_completed_years(tmp_path, age, units, years):
    """<PatientAge>6</PatientAge><AgeUnits>MONTHS</AgeUnits> had been read as 6 years."""
    path = tmp_path / "exam.xml"
    cf.write_muse(path, SIGNAL, FS, age=age, age_units=units)
    assert clinical.read_meta(path).get("age") == years


@pytest.mark.filterwarnings("ignore:Invalid value for VR AS")  # "61Y", on purpose
@pytest.mark.parametrize("age, years", [("061Y", 61), ("006M", 0), ("030M", 2), ("106W", 2),
                                        ("400D", 1), ("61Y", None)])
def test_dicom_age_string_is_completed_years(tmp_path, age, years):
    path = tmp_path / "exam.dcm"
    cf.write_dicom(path, SIGNAL, FS, age=age)
    assert clinical.read_meta(path).get("age") == years
