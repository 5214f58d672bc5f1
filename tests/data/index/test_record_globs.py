"""A glob's matches as records (dataset_index.expand_records): a signal file that another
record's header names is that record's, as in a folder, not a record without a header."""
import os
import shutil

import pytest

from crema_jax.data.index import dataset_index


@pytest.fixture
def shared_signal(tmp_path, cinc_sample_dir):
    """E07500.hea naming shared.mat (its signal file under another stem), E07501 as usual."""
    for name in ("E07500.hea", "E07501.hea", "E07501.mat"):
        shutil.copy(cinc_sample_dir / name, tmp_path / name)
    shutil.copy(cinc_sample_dir / "E07500.mat", tmp_path / "shared.mat")
    hea = tmp_path / "E07500.hea"
    hea.write_text(hea.read_text().replace("E07500.mat", "shared.mat"))
    return tmp_path


def test_a_signal_file_named_by_another_header_is_that_records(shared_signal):
    """shared.mat had been listed as record "shared" (read: missing_header, "cannot read header
    shared.hea") and E07500 left out; a glob of it alone was refused as "WFDB needs the .hea
    header beside a signal file"."""
    root = str(shared_signal)
    assert dataset_index.expand_records(os.path.join(root, "*.mat")) == [
        os.path.join(root, "E07501"), os.path.join(root, "E07500")]
    assert dataset_index.expand_records(os.path.join(root, "sh*.mat")) == [
        os.path.join(root, "E07500")]
    assert dataset_index.expand_records(root) == [os.path.join(root, "E07500"),
                                                  os.path.join(root, "E07501")]


def test_a_signal_file_two_headers_name_is_both_records_and_a_lone_one_still_refused(
        shared_signal):
    root = shared_signal
    (root / "E07502.hea").write_text((root / "E07500.hea").read_text().replace(
        "E07500", "E07502", 1))
    assert dataset_index.expand_records(str(root / "sh*.mat")) == [
        str(root / "E07500"), str(root / "E07502")]
    os.rename(root / "E07501.mat", root / "lone.mat")
    with pytest.raises(FileNotFoundError, match="1 file matched, none is a record: WFDB needs "
                       "the .hea header beside a signal file: lone.mat"):
        dataset_index.expand_records(str(root / "lone.mat*"))


def test_a_signal_file_named_as_is_is_the_record_whose_header_names_it(shared_signal):
    """The path shared.mat, as a glob of it did, names E07500 (it had been record "shared",
    skipped as missing_header); a signal file no header names is still its stem's record."""
    root = str(shared_signal)
    shared = os.path.join(root, "shared.mat")
    assert dataset_index.expand_records(os.path.join(root, "shared.m?t")) == \
        dataset_index.expand_records(shared) == [os.path.join(root, "E07500")]
    assert dataset_index.expand_records(f"{shared}, {root}/E07501.mat") == [
        os.path.join(root, "E07500"), os.path.join(root, "E07501")]
    os.rename(shared_signal / "E07501.mat", shared_signal / "lone.mat")
    assert dataset_index.expand_records(os.path.join(root, "lone.mat")) == [
        os.path.join(root, "lone")]
