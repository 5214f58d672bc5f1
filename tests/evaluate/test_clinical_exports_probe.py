"""`crema-jax probe` on a folder of hospital exports: the 50 CinC records written as DICOM, HL7
aECG, GE MUSE XML and EDF+ files (tests/data/clinical_files.py, from the standards' fields), each
naming a patient. The probe runs end to end, and no patient name or identifier appears in what
it writes or prints."""
import csv

import numpy as np
import pytest
import wfdb

from crema_jax.cli import probe
from tests.data import clinical_files as cf
from tests.evaluate.conftest import header_labels
from tests.evaluate.test_cli import COMMON, _run

FORMATS = ("dcm", "xml_aecg", "xml_muse", "edf", "xml_philips", "scp")


@pytest.mark.slow
def test_probe_on_exports_writes_and_prints_no_patient_identity(cinc_sample_dir, tmp_path, capfd):
    exports, rows = tmp_path / "exports", []
    exports.mkdir()
    for i, header in enumerate(sorted(cinc_sample_dir.glob("*.hea"))):
        signal, fields = wfdb.rdsamp(str(header.with_suffix("")))
        fmt = FORMATS[i % len(FORMATS)]
        name = f"exam{i:02d}{cf.SUFFIX[fmt]}"
        kwargs = {"patient_id": f"MRN-{90000 + i}"}
        cf.WRITERS[fmt](exports / name, np.nan_to_num(signal.T), float(fields["fs"]), **kwargs)
        rows.append({"file": name, "labels": ";".join(sorted(header_labels(header)))})
    with open(exports / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["file", "labels"])
        writer.writeheader()
        writer.writerows(rows)
    workdir = tmp_path / "probe"
    _run(probe, checkpoint="random", model_size="tiny", layout="clinical_exports",
         root=str(exports), layout_option=[f"labels={exports / 'labels.csv'}"],
         workdir=str(workdir), lead_sets=["12"], label_fractions=["1.0"], cross_domain=False,
         probe_steps=20, **COMMON)
    printed = "".join(capfd.readouterr())
    report = (workdir / "report.json").read_text()
    assert '"macro_auroc"' in report  # the probe ran to its scores
    written = [p.read_bytes().decode("latin-1") for p in workdir.rglob("*") if p.is_file()]
    with np.load(workdir / "predictions.npz", allow_pickle=False) as pred:  # compressed arrays
        written += [" ".join(map(str, pred[key].ravel())) for key in pred.files
                    if pred[key].dtype.kind in "USO"]
    identities = [*cf.PATIENT_NAME.split("^"), *(f"MRN-{90000 + i}" for i in range(len(rows)))]
    for text in (printed, *written):
        for identity in identities:
            assert identity not in text
