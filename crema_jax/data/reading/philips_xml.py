"""Philips (Sierra) ECG XML, schema 1.03 to 1.04.02: the waveform fields, read by the schema.

    leads(path, root) -> (rows, names, uv_per_count, fs)     counts per lead, before scaling
    leads(path, root, decode=False) -> (None, names, ...)    every check but XLI's LZW decode
    details(root) -> (meta, patient_key)

What the schema (SierraECGSchema_1_04_01.xsd) documents, in the order it is applied:
1. `waveforms/parsedwaveforms` holds every lead, lead after lead ("all the data for channel 1
   comes first"); @dataencoding "Base64" (or "Plain": counts as text).
2. Compression: @compression="XLI" (1.04), or @compressflag="True" with @compressmethod="XLI"
   (1.03); otherwise the bytes are little-endian int16 (@bitspersample 16).
3. @leadlabels names the leads and @numberofleads how many are used (1.04); a 1.03 file has
   neither and its `signalcharacteristics/acquisitiontype` (STD-12, 10-WIRE) implies
   I, II, III, aVR, aVL, aVF, V1-V6. XLI files often carry 16 chunks: the first
   @numberofleads are the leads.
4. Samples per lead = @durationperchannel (ms) x rate / 1000, the rate @samplespersecond (1.04)
   else `signalcharacteristics/samplingrate`.
5. Physical value = (count - @signaloffset) x @resolution, in uV ("all amplitudes are in
   microvolts"); without the attributes (1.03), `signalcharacteristics/resolution` and
   `signaloffset`. Samples are signed 16-bit words (@bitspersample 16, @signalsigned True);
   other word sizes are refused.
XLI is decoded as the reference decoder of the sierra-ecg-tools project (`sierraecg`) decodes
it, its LZW (`lzw_decode`) and second-difference step (`second_differences`) written here to run
~7x and ~80x faster, each tested against sierraecg's on the same streams; one chunk at a time
and only the chunks of the leads used: each chunk's header is checked first (a negative or
overlong size is a damaged file, one the reference's `xli_decode` loop ran backwards on) and its
output capped at twice the lead's 2 x samples bytes (LZW turns 10 bits into up to ~770 bytes).
The reference's `read_file` would not do: it rebuilds the residual leads of uncompressed files
too (their leads are stored as they are) and leaves out the resolution and the offset. An XLI
cart stores III, aVR, aVL and aVF as residuals against I and II; they are rebuilt as that
reference does, step by step:
III = II - I - r3, aVR = -r4 - floor((I + II) / 2), aVL = floor((I - III) / 2) - r5,
aVF = floor((II + III) / 2) - r6. Uncompressed data holds the leads themselves.
Interpretation statements: `interpretations/interpretation/statement` (leftstatement and
rightstatement). The patient id is returned for hashing only; names never leave this module.
"""
from __future__ import annotations

import base64
import binascii
import math

import numpy as np

from crema_jax.data.reading.ecg import RecordError, positive_scale
from crema_jax.data.reading.limits import MAX_SAMPLES
from crema_jax.data.reading.leads import LEADS as STD_LEADS

MAX_DURATION_MS = 3_600_000  # a resting ECG is 10-11 s; longer is a damaged header


def _find(node, path: str):
    """ElementTree find by local names, whatever the namespace (1.04 files declare Philips')."""
    return None if node is None else node.find("/".join(f"{{*}}{p}" for p in path.split("/")))


def _text(node, path: str) -> str:
    found = _find(node, path)
    return (found.text or "").strip() if found is not None else ""


def _number(path, value, field: str, *, positive: bool = False,
            reason: str = "bad_units") -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not math.isfinite(number) or (positive and number <= 0):
        raise RecordError(path, reason, f"{path}: Philips XML {field} is {value!r}, expected a "
                          f"{'positive ' if positive else ''}finite number")
    return number


def leads(path, root, *, decode: bool = True
          ) -> tuple[list[np.ndarray] | None, list[str], float, float]:
    """The counts of each lead, the lead names, uV per count and the rate (Hz, unchecked).
    decode=False: rows None, an XLI stream's chunk headers checked but its LZW (in pure Python,
    the file's cost) not run; the other encodings are checked in full."""
    wave = _find(root, "waveforms/parsedwaveforms")
    signal = _find(root, "dataacquisition/signalcharacteristics")
    if wave is None:
        raise RecordError(path, "no_signal", f"{path}: Philips XML has no "
                          "waveforms/parsedwaveforms")
    fs = _number(path, wave.get("samplespersecond") or _text(signal, "samplingrate"),
                 "samplespersecond (or signalcharacteristics/samplingrate)", positive=True,
                 reason="bad_sampling_rate")
    uv = positive_scale(path, wave.get("resolution") or _text(signal, "resolution"),
                        "Philips XML resolution (or signalcharacteristics/resolution)")
    offset = _number(path, wave.get("signaloffset") or _text(signal, "signaloffset") or 0,
                     "signaloffset")
    bits = (wave.get("bitspersample") or wave.get("nbitspersample")
            or _text(signal, "bitspersample") or "16")
    signed = wave.get("signalsigned") or _text(signal, "signalsigned") or "True"
    if bits.strip() != "16" or signed.strip() == "False":
        raise RecordError(path, "unreadable", f"{path}: Philips XML samples of {bits} bits, "
                          f"signalsigned {signed}: expected signed 16-bit samples")
    duration_ms = _number(path, wave.get("durationperchannel"), "durationperchannel",
                          positive=True, reason="unreadable")
    if duration_ms > MAX_DURATION_MS:
        raise RecordError(path, "unreadable", f"{path}: Philips XML durationperchannel is "
                          f"{duration_ms:.0f} ms, expected at most {MAX_DURATION_MS} (1 hour)")
    samples = int(round(duration_ms * fs / 1000.0))
    names = (wave.get("leadlabels") or "").split()
    if names:
        count = _number(path, wave.get("numberofleads") or len(names), "numberofleads",
                        positive=True, reason="unreadable")
        names = names[:int(min(count, len(names)))]
    elif _text(signal, "acquisitiontype") in ("STD-12", "10-WIRE"):
        names = list(STD_LEADS)
    else:
        raise RecordError(path, "unreadable", f"{path}: Philips XML names no leads (no "
                          "@leadlabels, acquisitiontype not STD-12 or 10-WIRE)")
    if samples * len(names) > MAX_SAMPLES:  # before any decoding: XLI inflates ~600x
        raise RecordError(path, "too_large", f"{path}: Philips XML declares {len(names)} leads "
                          f"x {samples} samples ({fs:g} Hz x {duration_ms:.0f} ms), more than "
                          f"the {MAX_SAMPLES} samples a record is read whole with")
    encoding, text = wave.get("dataencoding", ""), wave.text or ""
    if encoding == "Plain":
        try:
            counts = np.array(text.split(), np.int64)
        except (ValueError, OverflowError) as e:
            raise RecordError(path, "unreadable", f"{path}: Philips XML Plain waveform: {e}, "
                              "expected integer counts") from None
        rows = _split(path, counts, len(names), samples)
        return [r - offset for r in rows], names, uv, fs
    if encoding != "Base64":
        raise RecordError(path, "unreadable", f"{path}: Philips XML dataencoding {encoding!r}, "
                          "expected Base64 or Plain")
    try:
        data = base64.b64decode(text)
    except (binascii.Error, ValueError) as e:
        raise RecordError(path, "unreadable", f"{path}: Philips XML waveform: {e}") from e
    xli = (wave.get("compression") == "XLI"
           or (wave.get("compressflag") == "True" and wave.get("compressmethod") == "XLI"))
    if xli:
        if not decode:
            _xli_chunks(path, data, names)
            return None, names, uv, fs
        rows = _xli(path, data, names, samples)
    elif wave.get("compression") or wave.get("compressflag") == "True":
        raise RecordError(path, "unreadable", f"{path}: Philips XML compression "
                          f"{wave.get('compression') or wave.get('compressmethod')!r}, "
                          "expected XLI or none")
    else:
        if len(data) % 2:
            raise RecordError(path, "truncated_signal", f"{path}: Philips XML waveform holds "
                              f"{len(data)} bytes, expected int16 samples")
        rows = _split(path, np.frombuffer(data, "<i2").astype(np.int64), len(names), samples)
    return [r - offset for r in rows], names, uv, fs


def _split(path, counts: np.ndarray, leads_: int, samples: int) -> list[np.ndarray]:
    if samples <= 0 or len(counts) < leads_ * samples:
        raise RecordError(path, "truncated_signal", f"{path}: Philips XML holds {len(counts)} "
                          f"samples, expected {leads_} leads x {samples}")
    return list(counts[:leads_ * samples].reshape(leads_, samples))


def _xli_chunks(path, data: bytes, names: list[str]) -> list[tuple[int, bytes]]:
    """(first difference, LZW stream) of the chunk of each lead, each chunk's header checked:
    refused here as a RecordError, before any decoding."""
    if names[:6] != list(STD_LEADS[:6]):
        raise RecordError(path, "unreadable", f"{path}: Philips XLI leads {names[:6]}, expected "
                          "I II III aVR aVL aVF first (their residual coding)")
    offset, chunks = 0, []
    while len(chunks) < len(names):
        size = int.from_bytes(data[offset:offset + 4], "little", signed=True)
        if len(data) - offset < 8 or not 0 < size <= len(data) - offset - 8:
            raise RecordError(path, "truncated_signal", f"{path}: Philips XLI chunk "
                              f"{len(chunks)} at byte {offset} declares {size} bytes, "
                              f"{max(len(data) - offset - 8, 0)} remain ({len(names)} leads "
                              "expected)")
        first = int.from_bytes(data[offset + 6:offset + 8], "little", signed=True)
        chunks.append((first, data[offset + 8:offset + 8 + size]))
        offset += 8 + size
    return chunks


def _xli(path, data: bytes, names: list[str], samples: int) -> list[np.ndarray]:
    rows = []
    for lead, (first, stream) in enumerate(_xli_chunks(path, data, names)):
        # Up to twice the lead's bytes (a chunk may hold more samples than the duration says).
        limit = 4 * samples + 64
        try:
            out = lzw_decode(stream, limit)
        except IndexError as e:  # a code before any string: a damaged stream
            raise RecordError(path, "unreadable", f"{path}: Philips XLI chunk {lead} "
                              f"does not decode ({e})") from e
        if out is None:
            raise RecordError(path, "unreadable", f"{path}: Philips XLI chunk {lead} "
                              f"decodes past {limit} bytes ({samples} samples expected)")
        if len(out) < 2 * samples:
            raise RecordError(path, "truncated_signal", f"{path}: Philips XLI lead {lead} "
                              f"decodes to {len(out) // 2} samples, expected {samples}")
        values = second_differences(np.frombuffer(out + bytes(len(out) % 2), np.uint8), first)
        if np.abs(values).max(initial=0) > 32767:  # the 16-bit samples of a damaged stream
            raise RecordError(path, "unreadable", f"{path}: Philips XLI lead {lead} "
                              "decodes outside 16-bit samples (a damaged stream)")
        rows.append(values[:samples])
    lead_i, lead_ii = rows[0], rows[1]
    rows[2] = lead_ii - lead_i - rows[2]
    rows[3] = -rows[3] - (lead_i + lead_ii) // 2
    rows[4] = (lead_i - rows[2]) // 2 - rows[4]
    rows[5] = (lead_ii + rows[2]) // 2 - rows[5]
    return rows


def lzw_decode(stream: bytes, limit: int, bits: int = 10) -> bytes | None:
    """XLI's LZW as sierraecg's LzwDecoder decodes it, None once the output passes `limit` bytes.

    Codes are the stream's whole `bits`-bit groups, most significant bit first; a code above
    2^bits - 2 ends the data. Codes 0-255 are their byte; a code not yet in the table is the
    previous string plus its first byte (stored under that code); after each code the next free
    code (from 256, up to 2^bits - 2) takes the previous string plus the current one's first byte.
    A first code that is not a byte raises IndexError. The codes are unpacked at once (numpy)
    and each yields a whole string, where the reference reads a bit and a byte per call: the same
    bytes ~7x faster (tests/data/reading/test_clinical.py compares the two)."""
    count = len(stream) * 8 // bits
    groups = np.unpackbits(np.frombuffer(stream, np.uint8))[:count * bits].reshape(count, bits)
    codes = (groups.astype(np.int64) @ (1 << np.arange(bits - 1, -1, -1))).tolist()
    max_code = (1 << bits) - 2
    table: list[bytes | None] = [bytes((i,)) for i in range(256)] + [None] * (max_code - 255)
    previous, next_code, out, total = b"", 256, [], 0
    for code in codes:
        if code > max_code:
            break
        string = table[code]
        if string is None:
            if not previous:
                raise IndexError(f"code {code} before any string")
            string = table[code] = previous + previous[:1]
        if previous and next_code <= max_code:
            table[next_code] = previous + string[:1]
            next_code += 1
        previous = string
        out.append(string)
        total += len(string)
        if total > limit:
            return None
    return b"".join(out)


def second_differences(planar: np.ndarray, first: int) -> np.ndarray:
    """An XLI lead's samples from its decompressed bytes (uint8, even length): the high bytes
    of the n 16-bit words, then their low bytes; words 0 and 1 are samples 0 and 1, and sample
    i >= 2 is 2 s[i-1] - s[i-2] - c[i], with c[2] = `first` (the chunk header's int16) and
    c[i] = word[i-1] - 64 (sierraecg's xli_decode_deltas, vectorised: the same integers, in
    int64, ~80x faster; tests/data/reading/test_clinical.py compares the two)."""
    n = len(planar) // 2
    words = ((planar[:n].astype(np.int64) << 8) | planar[n:]).astype(np.uint16).astype(
        np.int16).astype(np.int64)
    if n < 3:
        return words
    c = np.concatenate(([first], words[2:n - 1] - 64))
    slope = (words[1] - words[0]) - np.cumsum(c)            # s[i] - s[i-1], i = 2 .. n-1
    return np.concatenate((words[:2], words[1] + np.cumsum(slope)))


def details(root) -> tuple[dict, str | None]:
    """meta (exam id, statements, age, sex) and the patient id to hash."""
    statements = []
    interpretation = _find(root, "interpretations/interpretation")
    for statement in [] if interpretation is None else interpretation.findall("{*}statement"):
        text = " ".join(t for t in (_text(statement, "leftstatement"),
                                    _text(statement, "rightstatement")) if t)
        if text:
            statements.append(text)
    patient = _find(root, "patient/generalpatientdata")
    age = _text(patient, "age/years")
    meta = {"exam_id": _text(root, "documentinfo/documentname").removesuffix(".xml"),
            "statements": statements, "sex": _text(patient, "sex"),
            "age": int(age) if age.isdigit() else None}
    return meta, _text(patient, "patientid") or None
