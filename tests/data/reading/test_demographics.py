"""A record's sex and age in one vocabulary, whatever its format spelled them: every export's
spellings read back as the WFDB, PTB-XL and CODE-15 layouts write them ("Male", "Female"), and
ages stated in months, weeks, days or hours as completed years."""
import numpy as np
import pytest

from crema_jax.data.reading import clinical, wfdb_header
from tests.data import clinical_files as cf

FS = 500.0
SIGNAL = np.stack([np.sin(2 * np.pi * (1 + 0.1 * k) * np.arange(5000) / FS) for k in range(12)])


# (format, the file's own spelling, what meta["sex"] must be; None: left out of meta).
SPELLINGS = [
    ("xml_muse", "MALE", "Male"), ("xml_muse", "FEMALE", "Female"), ("xml_muse", "UNKNOWN", None),
    ("xml_philips", "Male", "Male"), ("xml_philips", "Female", "Female"),
    ("xml_philips", "Unknown", None),
    ("dcm", "M", "Male"), ("dcm", "F", "Female"), ("dcm", "O", None),
    ("xml_aecg", "M", "Male"), ("xml_aecg", "F", "Female"), ("xml_aecg", "UN", None),
    ("scp", 1, "Male"), ("scp", 2, "Female"), ("scp", 0, None),  # Section 1 tag 8's codes
]


@pytest.mark.parametrize("fmt, spelled, sex", SPELLINGS)
def test_every_format_spells_sex_male_or_female(tmp_path, fmt, spelled, sex):
    path = tmp_path / f"exam{cf.SUFFIX[fmt]}"
    cf.WRITERS[fmt](path, SIGNAL, FS, sex=spelled)
    for meta in (clinical.read_meta(path), clinical.read_clinical(path).meta):
        assert meta.get("sex") == sex


@pytest.mark.parametrize("line, sex", [("Sex: Male", "Male"), ("Sex: female", "Female"),
                                       ("Sex: M", "Male"), ("Sex: F", "Female"),
                                       ("Sex: Unknown", None), ("Sex: ", None)])
def test_wfdb_comments_use_the_same_vocabulary(line, sex):
    assert wfdb_header.parse_comments([line])["sex"] == sex


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
