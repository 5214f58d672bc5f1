"""SCP-ECG (EN 1064 / ISO 11073-91064: European carts' binary export), short-term rhythm data.

    looks_like(head) -> bool                     the record's first bytes
    read(path) -> (rows, names, fs, meta, key)   rows in uV per lead, before stacking
    read_meta(path) -> (meta, key)               the same meta, the rhythm data not decoded

The decoding (Section 2's Huffman tables or the standard's default one, first or second
differences, reference-beat subtraction with Sections 4 and 5) is `ecgdatakit`'s SCP-ECG parser
(Apache-2.0, the [clinical] extra), the one maintained Python decoder of the format, its
bit-by-bit Huffman loop replaced by `scp_huffman`'s vectorised one (the same values and
errors); it is used for this format alone (its EDF reader rounds rates to integers and reads a
truncated file with a warning only, so EDF stays on edfio). What is read from its record, by
the standard's fields:
- Section 3: the leads and their SCP lead codes (1 I, 2 II, 3-8 V1-V6, 61 III, 62 aVR,
  63 aVL, 64 aVF), names as the parser normalises them;
- Section 6: samples x AVM (nV per count, as uV: AVM / 1000; after reference-beat subtraction
  the decoder's common unit of Sections 5 and 6); the rate 1e6 / the sample interval in us (not
  the parser's rounded integer rate);
- Section 1: patient id (tag 2, for hashing only), age (tag 4), sex (tag 8); Sections 8/11:
  the interpretation statements.
Refused, each a RecordError. Checked before the parser runs (it would allocate or loop on them
first): a file shorter than the record size it declares (truncated_signal), one above 8 MB, more
than 32 leads, more samples than the file has bits, or more than 5,000 QRS zones (unreadable),
leads not recorded together (unequal_lengths). After it: a CRC mismatch (unreadable: the
standard's CRC-CCITT guards every section, so a mismatch is damage), bimodal compression and
anything it calls corrupt or unsupported (unreadable; e.g. long-term Section 12 data), an AVM of
0 (bad_units).
"""
from __future__ import annotations

import functools
import os
import warnings

import numpy as np

from crema_jax.data.reading import scp_huffman
from crema_jax.data.reading.ecg import RecordError


def _u16(data: bytes, pos: int) -> int:
    return int.from_bytes(data[pos:pos + 2], "little")


def _u32(data: bytes, pos: int) -> int:
    return int.from_bytes(data[pos:pos + 4], "little")


def looks_like(head: bytes) -> bool:
    """Section 0 right after the 6-byte preamble (id 0 at byte 8), its first pointer naming
    Section 0 itself at byte 7 (1-based), as every SCP-ECG record starts."""
    if len(head) < 32:
        return False
    return (_u16(head, 8) == 0 and _u16(head, 22) == 0 and _u32(head, 28) == 7
            and _u32(head, 10) >= 26)


MAX_BYTES = 8 << 20      # a short-term record (10 s: ~30 KB; 5 min uncompressed: ~4 MB)
MAX_LEADS = 32
MAX_QRS = 5000           # Section 4's subtraction zones: tens in a 10-s record


def _check_layout(path, data: bytes) -> None:
    """What the decoder would act on before checking it (the file already within MAX_BYTES):
    the record size, Section 3's lead count and sample ranges (one common range: leads recorded
    together; a sample takes at least one bit of the file), Section 4's QRS count; refused here
    as RecordErrors."""
    declared = _u32(data, 2)
    if len(data) < declared:
        raise RecordError(path, "truncated_signal", f"{path}: SCP-ECG file holds {len(data)} "
                          f"bytes, its record size says {declared}")
    sections = {}
    for pos in range(22, min(6 + _u32(data, 10), len(data)) - 9, 10):
        sid, length, index = _u16(data, pos), _u32(data, pos + 2), _u32(data, pos + 6)
        if length >= 16 and 1 <= index <= len(data) - length + 1:
            sections[sid] = data[index - 1 + 16:index - 1 + length]
    leads = sections.get(3, b"")
    count = leads[0] if leads else 0
    ranges = {(_u32(leads, 2 + 9 * k), _u32(leads, 6 + 9 * k)) for k in range(count)
              if 2 + 9 * k + 9 <= len(leads)}
    if count > MAX_LEADS:
        raise RecordError(path, "unreadable", f"{path}: SCP-ECG Section 3 declares {count} "
                          f"leads, expected at most {MAX_LEADS}")
    if len(ranges) > 1:
        raise RecordError(path, "unequal_lengths", f"{path}: SCP-ECG leads cover samples "
                          f"{sorted(ranges)[:3]}..., expected one range (leads recorded together)")
    if ranges and (end := max(ranges)[1]) - min(ranges)[0] + 1 > 8 * len(data):
        raise RecordError(path, "unreadable", f"{path}: SCP-ECG leads end at sample {end}, "
                          f"more than a {len(data)}-byte file can hold")
    qrs = _u16(sections[4], 4) if len(sections.get(4, b"")) >= 6 else 0
    if qrs > MAX_QRS:
        raise RecordError(path, "unreadable", f"{path}: SCP-ECG Section 4 declares {qrs} QRS "
                          f"complexes, expected at most {MAX_QRS}")


@functools.cache
def _meta_parser_class():
    """ecgdatakit's parser without its two decoders, Sections 5 and 6 (Huffman, differences,
    reference beats): the other sections are parsed and checked by the same code, CRCs included."""
    from ecgdatakit.parsing.parsers.scp_ecg import SCPECGParser

    class MetaParser(SCPECGParser):
        def _parse_section5(self, ctx, record):
            return None

        def _parse_section6(self, ctx, record, median):
            return None

    return MetaParser


def _parse(path, decode: bool):
    """ecgdatakit's record of the file (the rhythm data decoded or not), its refusals and CRC
    warnings raised as RecordErrors."""
    import ecgdatakit  # the [clinical] extra; only SCP-ECG files need it
    from ecgdatakit.parsing.parsers.scp_ecg import SCPECGParser

    if os.path.getsize(path) > MAX_BYTES:
        raise RecordError(path, "unreadable", f"{path}: SCP-ECG file of "
                          f"{os.path.getsize(path)} bytes, expected a short-term record (at most "
                          f"{MAX_BYTES})")
    with open(path, "rb") as f:
        _check_layout(path, f.read())
    if decode:
        scp_huffman.install()
    parser = SCPECGParser() if decode else _meta_parser_class()()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            record = parser.parse(path)
        except (ecgdatakit.ECGDataKitError, ValueError, OverflowError, MemoryError) as e:
            raise RecordError(path, "unreadable", f"{path}: SCP-ECG file does not decode "
                              f"({type(e).__name__}: {e})") from e
    bad_crc = [str(w.message) for w in caught if issubclass(w.category,
                                                            ecgdatakit.ChecksumWarning)]
    if bad_crc:
        raise RecordError(path, "unreadable", f"{path}: {bad_crc[0]} (a damaged file)")
    return record


def _details(record) -> tuple[dict, str | None]:
    statements = [" ".join(p for p in pair if p) for pair in
                  (record.interpretation.statements if record.interpretation else [])]
    patient = record.patient
    meta = {"statements": [s for s in statements if s],
            "sex": patient.sex, "age": patient.age}
    return meta, patient.patient_id.strip() or None


def read_meta(path) -> tuple[dict, str | None]:
    """(meta, patient key) as `read` gives them, without decoding the rhythm data: damage inside
    Sections 5 and 6 that their CRCs do not show is found by `read`."""
    return _details(_parse(path, decode=False))


def read(path) -> tuple[list[np.ndarray], list[str], float, dict, str | None]:
    record = _parse(path, decode=True)
    if "bimodal" in (record.recording.acquisition.signal.compression or ""):
        raise RecordError(path, "unreadable", f"{path}: SCP-ECG bimodal compression (decimated "
                          "rhythm data) is not read")
    interval = record.raw_metadata.get("rhythm_sample_interval_us") or 0
    rows, names = [], []
    for lead in record.leads:
        # The decoder's scale: Section 6's AVM, or after reference-beat subtraction the common
        # unit of Sections 5 and 6 (gcd of their AVMs), as uV per count.
        if lead.resolution_unit != "uV" or lead.resolution <= 0:
            raise RecordError(path, "bad_units", f"{path}: SCP-ECG lead {lead.label}: Section 6 "
                              "amplitude value multiplier is 0, expected nV per count")
        rows.append(np.asarray(lead.samples, np.float64) * lead.resolution)
        names.append(lead.label)
    meta, key = _details(record)
    return rows, names, 1e6 / interval if interval else float("nan"), meta, key
