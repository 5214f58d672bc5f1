"""A hospital ECG export (DICOM waveform, HL7 aECG, GE MUSE XML, EDF+) as the canonical Ecg.

`ClinicalFile` is the RecordInfo.reader of such files (read.py dispatches on it); the format is
detected by content (clinical_formats.py). What a file says about its patient is reduced to
`patient_hash(key)`: a salted SHA-256 of its patient identifier, for patient-grouped splits.
Names, birth dates and identifiers never reach an Ecg, an index, a cache, a log or a report.
The salt is the environment variable CREMA_JAX_PATIENT_SALT (set it to a secret: identifiers
such as record numbers are few enough to be recovered from an unsalted hash by trying them all),
read from the environment so that it is never written into a cache's settings. Hashing is
silent: the warning that the salt is the public default (`warn_if_public_salt`) is given where
the hashes are kept, by the clinical_exports layout whose index puts them into a cache, its
splits and reports; reading a file for its signal (embed, predict) keeps no patient id.

The file's sex, however its format spells it (MALE, Female, F, ...), is "Male", "Female" or left
out (demographics.sex_of), as every other source writes it. Channels the reader dropped as no
ECG lead (clinical_formats.Parsed.dropped) count in the Ecg's repairs as leads_dropped.

Beyond canonical_ecg's own checks, a file whose leads do not give all 12 (after deriving the
limb leads) is skipped as `missing_leads` unless the reader says `require_12_leads=False`.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import os

import numpy as np
from absl import logging

from crema_jax.data.reading import (clinical_formats, demographics, safe_files, wfdb_header,
                                    wfdb_records)
from crema_jax.data.reading import leads as leads_lib
from crema_jax.data.reading.ecg import Ecg, RecordError, canonical_ecg, check_sampling_rate
from crema_jax.data.reading.limits import FS_RANGE

SALT_ENV = "CREMA_JAX_PATIENT_SALT"
_DEFAULT_SALT = "crema_jax.patient"
# Files that a folder of exports may hold beside the ECGs; the folder layout does not read them.
NOT_ECG_SUFFIXES = (".csv", ".json", ".txt", ".md", *wfdb_header.FILE_EXTENSIONS)


@dataclasses.dataclass(frozen=True)
class ClinicalFile:
    require_12_leads: bool = True


def patient_hash(key: str | None) -> str:
    """"p" + 16 hex digits of SHA-256(salt NUL key); "" for no key (blank or a missing-value
    word: demographics.patient_id_of). Silent (the module docstring says where the default salt
    is warned about)."""
    key = demographics.patient_id_of(key)
    if key is None:
        return ""
    salt = os.environ.get(SALT_ENV) or _DEFAULT_SALT
    return "p" + hashlib.sha256(f"{salt}\0{key}".encode("utf-8")).hexdigest()[:16]


def warn_if_public_salt() -> None:
    """Once per process, without CREMA_JAX_PATIENT_SALT: a warning that the patient ids about to
    be kept (an index, a cache) are hashed with the public default salt."""
    if not os.environ.get(SALT_ENV):
        _warn_public_salt()


@functools.cache
def _warn_public_salt() -> None:
    logging.warning("%s is not set: patient ids are hashed with crema_jax's public default salt, "
                    "so a holder of the cache could recover them by trying every id; set it to a "
                    "secret (the same on every host of a run) for data that leaves this machine",
                    SALT_ENV)


def is_export_candidate(path, root) -> bool:
    """Whether a file below `root` may be an export: not hidden nor in a hidden or system
    folder (safe_files.is_system), not of a table's or a WFDB file's suffix
    (NOT_ECG_SUFFIXES)."""
    return not safe_files.is_system(path, root) and \
        not os.path.basename(path).lower().endswith(NOT_ECG_SUFFIXES)


def export_candidates(root) -> list[str]:
    """Every file below `root` that may be an export (safe_files.walk: sorted, never into a
    symlinked folder; is_export_candidate)."""
    return [path for path in safe_files.walk(root, ("",)) if is_export_candidate(path, root)]


def exports_among(paths) -> list[str]:
    """The candidate `paths` whose first bytes name an export format (clinical_formats.detect);
    any other file (a PDF, a FIFO) is passed over. A file that cannot be opened (no permission,
    removed meanwhile) is kept: read, it is an `unreadable` skip, counted and named, never
    dropped without a word."""
    found = []
    for path in paths:
        try:
            if clinical_formats.detect(path):
                found.append(path)
        except RecordError:  # not a regular file
            continue
        except OSError:
            found.append(path)
    return found


def is_clinical_path(path) -> bool:
    """Whether a command-line record path names an export file rather than a WFDB record: a
    path with a WFDB header beside it (`path.hea`) is a record, any other path that is a file or
    has a suffix (not one of NOT_ECG_SUFFIXES) an export, so an export removed after it was
    listed reads as an unreadable export, not a missing `.hea`. ValueError (one line naming
    both files) for a file beside a WFDB header of its name (E07500 and E07500.hea) that the
    header does not name as its signal file: which one is meant cannot be told, and one had
    silently been read for the other. A file the header names (WFDB allows an extensionless
    signal file, E1 beside E1.hea) is that record's signal."""
    path = str(path)
    if os.path.isfile(path + ".hea"):
        if os.path.isfile(path) and not wfdb_records.names_file(path + ".hea", path):
            raise ValueError(f"{path} and {path}.hea: a file and a WFDB record share the name "
                             f"{os.path.basename(path)!r}; expected one record per name (rename "
                             "the file, e.g. with its format's suffix)")
        return False
    named = os.path.splitext(os.path.basename(path))[1] != ""
    return (os.path.isfile(path) or named) and not path.lower().endswith(NOT_ECG_SUFFIXES)


def read_meta(path) -> dict:
    """The record's meta without the canonical signal: format, exam_id, statements, age, sex,
    patient_id (the salted hash). Raises RecordError as `read_clinical` would on a bad file,
    except for damage inside Philips XLI and SCP-ECG rhythm data, which is left coded here
    (clinical_formats.parse's decode=False) and found by `read_clinical`."""
    return _meta(clinical_formats.parse(path, decode=False))


def _meta(parsed) -> dict:
    meta = {**parsed.meta, "sex": demographics.sex_of(parsed.meta.get("sex"))}
    meta = {k: v for k, v in meta.items() if v not in (None, "", [])}
    meta["statements"] = tuple(parsed.meta.get("statements", ()))
    meta.update(format=parsed.format, patient_id=patient_hash(parsed.patient_key))
    return meta


def read_clinical(path, reader: ClinicalFile = ClinicalFile(), *,
                  fs_range=FS_RANGE, **kwargs) -> Ecg:
    """The export at `path` as the canonical Ecg; kwargs are canonical_ecg's."""
    path = str(path)
    try:
        parsed = clinical_formats.parse(path)
    except OSError as e:
        raise RecordError(path, "unreadable", f"{path}: {e.strerror or e}") from e
    check_sampling_rate(path, parsed.fs, "sampling rate", fs_range=fs_range)
    if reader.require_12_leads:
        _check_leads(path, parsed.names + parsed.dropped)
    ecg = canonical_ecg(parsed.signal, parsed.names, parsed.units, parsed.fs, path=path,
                        meta=_meta(parsed), **kwargs)
    if parsed.dropped:  # the channels the reader left unread, counted as canonical_ecg counts
        ecg.repairs["leads_dropped"] = ecg.repairs.get("leads_dropped", 0) + len(parsed.dropped)
        ecg.repaired_leads["leads_dropped"] = (ecg.repaired_leads.get("leads_dropped", ())
                                               + tuple(parsed.dropped))
    return ecg


def _check_leads(path: str, names) -> None:
    present = np.zeros(leads_lib.NUM_LEADS, bool)
    for name in names:
        row = leads_lib.lead_index(name or "")
        if row is not None:
            present[row] = True
    _, derivable, _ = leads_lib.derive_limb_leads(np.zeros((leads_lib.NUM_LEADS, 1)), present)
    if not derivable.all():
        missing = [lead for lead, ok in zip(leads_lib.LEADS, derivable) if not ok]
        raise RecordError(path, "missing_leads", f"{path}: leads {missing} are neither recorded "
                          f"nor derivable (the file's channels: {list(names)}), expected 12")
