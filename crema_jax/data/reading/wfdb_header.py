"""A strict, fast parser for WFDB header (.hea) files.

`wfdb.rdheader` costs ~5 ms per header (it looks every field up in a pandas table); indexing a
million records and reading 200+ ECGs/s per process need it ~50x cheaper, so single-segment
headers are parsed here with plain string operations. The syntax follows the WFDB header
specification (https://physionet.org/physiotools/wag/header-5.htm):

  record line:  NAME[/n_seg] n_sig [fs[/counter_freq[(base_counter)]] [sig_len [time [date]]]]
  signal line:  FILE FMT[xSPF][:SKEW][+OFFSET] [GAIN[(BASELINE)][/UNITS] [RES [ZERO [INIT
                [CHECKSUM [BLOCK [DESCRIPTION...]]]]]]]
  comments:     lines starting with '#', anywhere.

Unlike wfdb's permissive regular expressions, a field that does not parse is an error here
(`HeaderError`), so a corrupted line is reported instead of read as garbage.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re

from crema_jax.data.reading import demographics

# A WFDB record's files: its header, and its signal files (.dat; .mat in the CinC challenges).
# The one list of WFDB suffixes: every layout, listing and file check takes it from here.
SIGNAL_SUFFIXES = (".dat", ".mat")
FILE_EXTENSIONS = (".hea", *SIGNAL_SUFFIXES)
# Headers are a few hundred bytes (a multi-segment one lists a line per segment); a "header" of
# megabytes is not one, and is refused before it is read.
MAX_HEADER_BYTES = 4 << 20


def record_name(path: str) -> str:
    """A WFDB file's path without its extension (any case: E1.HEA too); any other path as is."""
    root, ext = os.path.splitext(path)
    return root if ext.lower() in FILE_EXTENSIONS else path


_FMT_RE = re.compile(r"^(\d+)(?:x(\d+))?(?::(\d+))?(?:\+(\d+))?$")
_GAIN_RE = re.compile(r"^([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?:\((-?\d+)\))?(?:/(\S*))?$")
_FS_RE = re.compile(r"^(\d*\.?\d+(?:[eE][-+]?\d+)?)(?:/([-\d.eE+]+)(?:\((-?[\d.]+)\))?)?$")
_DEFAULT_GAIN = 200.0  # WFDB: a missing or zero gain means 200 adu per physical unit.


class HeaderError(ValueError):
    """A header that does not follow the WFDB syntax; `.line` is the 1-based line number."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.line = line


@dataclasses.dataclass(frozen=True)
class SignalSpec:
    file_name: str
    fmt: str
    samps_per_frame: int
    skew: int
    byte_offset: int
    adc_gain: float
    baseline: int
    units: str
    name: str
    checksum: int | None = None  # 16-bit signed sum of the signal's samples; None if omitted.


@dataclasses.dataclass(frozen=True)
class Header:
    record_name: str
    n_seg: int | None          # None for single-segment records.
    fs: float | None           # None when the header omits it (WFDB would assume 250 Hz).
    sig_len: int | None        # None when omitted (then implied by the signal file size).
    signals: tuple[SignalSpec, ...]
    comments: tuple[str, ...]  # Comment lines without the leading '#', stripped.
    segments: tuple[str, ...] = ()  # A multi-segment record's segment names ("~": a gap).
    segment_lengths: tuple[int, ...] = ()  # Their lengths in samples, as the header states.
    n_sig: int | None = None   # A multi-segment record's number of signals (else len(signals)).


def _int(token: str, what: str, line: int, *, count: bool = False) -> int:
    """An integer field; a count (of signals, samples, segments) must not be negative: -3
    signals kept 10 of 12 signal lines and scrambled the leads."""
    try:
        value = int(token)
    except ValueError:
        raise HeaderError(f"{what} must be an integer, got {token!r}", line) from None
    if count and value < 0:
        raise HeaderError(f"{what} must be a non-negative integer, got {token!r}", line)
    return value


def _parse_record_line(tokens: list[str], line: int) -> tuple[str, int | None, int, float | None, int | None]:
    name, _, n_seg = tokens[0].partition("/")
    if not name:
        raise HeaderError("record line has no record name", line)
    if len(tokens) < 2:
        raise HeaderError("record line must give the number of signals after the name", line)
    n_sig = _int(tokens[1], "number of signals", line, count=True)
    fs = None
    if len(tokens) > 2:
        match = _FS_RE.match(tokens[2])
        if match is None:
            raise HeaderError(f"sampling frequency must be a number, got {tokens[2]!r}", line)
        fs = float(match.group(1))
    sig_len = (_int(tokens[3], "number of samples per signal", line, count=True)
               if len(tokens) > 3 else None)
    return name, (_int(n_seg, "number of segments", line, count=True) if n_seg else None), \
        n_sig, fs, sig_len


def _parse_signal_line(tokens: list[str], line: int) -> SignalSpec:
    if len(tokens) < 2:
        raise HeaderError("signal line must give a file name and a format", line)
    fmt = _FMT_RE.match(tokens[1])
    if fmt is None:
        raise HeaderError(f"format field must look like 16[x1][:0][+24], got {tokens[1]!r}", line)
    gain, baseline, units = _DEFAULT_GAIN, None, "mV"
    if len(tokens) > 2:
        match = _GAIN_RE.match(tokens[2])
        if match is None:
            raise HeaderError(f"ADC gain field must look like 1000.0(0)/mV, got {tokens[2]!r}", line)
        gain = float(match.group(1))
        if not math.isfinite(gain):
            raise HeaderError(f"ADC gain must be finite, got {tokens[2]!r}", line)
        gain = gain or _DEFAULT_GAIN
        baseline = int(match.group(2)) if match.group(2) is not None else None
        units = match.group(3) or "mV"
    ints = [_int(t, "integer field (resolution/zero/initial value/checksum/block size)", line)
            for t in tokens[3:8]]
    adc_zero = ints[1] if len(ints) > 1 else 0
    return SignalSpec(
        file_name=tokens[0],
        fmt=fmt.group(1),
        samps_per_frame=int(fmt.group(2) or 1),
        skew=int(fmt.group(3) or 0),
        byte_offset=int(fmt.group(4) or 0),
        adc_gain=gain,
        baseline=adc_zero if baseline is None else baseline,  # WFDB: baseline defaults to zero.
        units=units,
        name=" ".join(tokens[8:]),
        checksum=ints[3] if len(ints) > 3 else None,
    )


def signal_file_names(text: str) -> list[str]:
    """The first field of each line after a header's record line (comments and blank lines
    aside): the signal files it names (a multi-segment header's segment names), without
    validating the lines, so a header `parse_header` refuses still says which files are its."""
    lines = [line.split()[0] for line in text.splitlines()
             if line.strip() and not line.strip().startswith("#")]
    return lines[1:]


def parse_header(text: str) -> Header:
    """Parses the text of a .hea file; raises HeaderError on any malformed field."""
    comments, lines = [], []
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#"):
            comments.append(stripped[1:].strip())
        elif stripped:
            lines.append((number, stripped.split()))
    if not lines:
        raise HeaderError("header has no record line")
    number, tokens = lines[0]
    name, n_seg, n_sig, fs, sig_len = _parse_record_line(tokens, number)
    if n_seg is not None:
        # Multi-segment layouts are left to wfdb; the segment names let the reader check each
        # segment's files before wfdb opens them.
        segments = tuple(t[0] for _, t in lines[1:1 + n_seg])
        lengths = tuple(_int(t[1], "segment length", n, count=True) if len(t) > 1 else 0
                        for n, t in lines[1:1 + n_seg])
        return Header(name, n_seg, fs, sig_len, (), tuple(comments), segments, lengths, n_sig)
    if len(lines) - 1 < n_sig:
        raise HeaderError(f"record line announces {n_sig} signals but {len(lines) - 1} signal "
                          f"lines follow", lines[-1][0])
    signals = tuple(_parse_signal_line(t, n) for n, t in lines[1:1 + n_sig])
    return Header(name, None, fs, sig_len, signals, tuple(comments))


def parse_comments(comments: tuple[str, ...] | list[str]) -> dict:
    """Age, sex and SNOMED-CT labels from CinC-style comments (`Age: 78`, `Sex: Male`, `Dx: a,b`).

    Sex is demographics.sex_of's "Male" or "Female" (M, male, F, FEMALE, ...). Unknown or
    unparseable values ("Unknown", "NaN", "") become None; labels an empty tuple.
    """
    fields = {}
    for comment in comments:
        key, sep, value = comment.partition(":")
        if sep:
            fields.setdefault(key.strip().casefold(), value.strip())
    age = None
    try:
        age_value = float(fields.get("age", ""))
        if math.isfinite(age_value) and age_value >= 0:
            age = int(age_value) if age_value.is_integer() else age_value
    except ValueError:
        pass
    sex = demographics.sex_of(fields.get("sex"))
    labels = tuple(dict.fromkeys(c.strip() for c in fields.get("dx", "").split(",") if c.strip()))
    return {"age": age, "sex": sex, "labels": labels}
