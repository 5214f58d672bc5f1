"""The vectorised SCP-ECG Huffman decoder against streams whose values are known (encoded here,
bit by bit, from random codes of random tables, table switches included) and against
ecgdatakit's bit-by-bit decoder, results and refusals alike."""
import numpy as np
import pytest

from crema_jax.data.reading import scp_ecg, scp_huffman
from tests.data import clinical_files as cf

ecg_parser = pytest.importorskip("ecgdatakit.parsing.parsers.scp_ecg")
from ecgdatakit.exceptions import CorruptedFileError  # noqa: E402


def _random_table(rng, n_tables: int, complete: bool) -> list[tuple]:
    """(prefix bits, code as a bit string, total bits, mode, value) of a prefix-free table:
    canonical codes of random lengths (Kraft sum 1 when `complete`, else some patterns left
    without a code), one of them a switch to each other table."""
    lengths = sorted(rng.integers(2, 9, 12).tolist())   # at least 4 codes
    while sum(2.0 ** -k for k in lengths) > 1:
        lengths.pop()
    codes, code, previous = [], 0, lengths[0]
    for k in lengths:
        code <<= k - previous
        codes.append(format(code, f"0{k}b"))
        code, previous = code + 1, k
    if complete:  # lengthen the last code's siblings until the tree is full
        while sum(2.0 ** -len(c) for c in codes) < 1:
            last = codes[-1]
            nxt = format(int(last, 2) + 1, f"0{len(last)}b")
            codes.append(nxt)
    table = []
    for k, bits in enumerate(codes):
        extra = int(rng.choice([0, 0, 0, 3, 8, 16]))
        table.append((len(bits), bits, len(bits) + extra, 1, int(rng.integers(-200, 200))))
    for k in range(n_tables - 1):  # switch codes: to each table but the first, by number
        prefix, bits, _, _, _ = table[k]
        table[k] = (prefix, bits, prefix, 0, 2 + k)
    return table


def _section2(tables: list[list[tuple]]) -> bytes:
    """Section 2's body: each code's prefix bits stored bit-reversed (first bit in the LSB)."""
    body = len(tables).to_bytes(2, "little")
    for table in tables:
        body += len(table).to_bytes(2, "little")
        for prefix, bits, total, mode, value in table:
            body += bytes([prefix, total, mode]) + value.to_bytes(2, "little", signed=True)
            body += int(bits[::-1], 2).to_bytes(4, "little")
    return body


def _encode(rng, tables, count: int) -> tuple[bytes, np.ndarray]:
    """A stream of `count` values in `tables` (table 1 first), switching tables at random."""
    bits, values, current = [], [], 0
    while len(values) < count:
        prefix, code, total, mode, value = tables[current][rng.integers(len(tables[current]))]
        bits.append(code)
        if mode == 0:
            current = value - 1
            continue
        extra = total - prefix
        raw = int(rng.integers(-(1 << (extra - 1)), 1 << (extra - 1))) if extra else 0
        bits.append(format(raw & ((1 << extra) - 1), f"0{extra}b") if extra else "")
        values.append(value + raw)
    text = "".join(bits)
    text += "0" * (-len(text) % 8)
    return int(text, 2).to_bytes(len(text) // 8, "big") if text else b"", np.array(values)


def _reference(data, count, tables, what):
    return ecg_parser._huffman_decode(data, count, tables, what)


def _outcome(fn, *args):
    try:
        return fn(*args).tolist()
    except CorruptedFileError as e:
        return f"CorruptedFileError: {e}"


@pytest.mark.parametrize("seed", range(12))
def test_random_tables_and_switches_decode_to_the_encoded_values(seed):
    rng = np.random.default_rng(seed)
    n_tables = 1 + seed % 3
    spec = [_random_table(rng, n_tables, complete=True) for _ in range(n_tables)]
    tables = ecg_parser._parse_huffman_tables(_section2(spec))
    count = int(rng.integers(1, 3000))
    data, expected = _encode(rng, spec, count)
    decoded = scp_huffman.decode(data, count, tables, "Section 6", _refuse)
    assert decoded.dtype == np.int64 and decoded.tolist() == expected.tolist()
    assert _reference(data, count, tables, "Section 6").tolist() == expected.tolist()


def test_the_default_table_decodes_every_code_length():
    """Values 0, +-1..8 (prefix codes), 8- and 16-bit escapes, as clinical_files' writer
    encodes them (the same second differences a 10-s, 12-lead record holds)."""
    rng = np.random.default_rng(7)
    values = np.concatenate([np.arange(-300, 301), rng.integers(-32768, 32768, 2000),
                             np.round(rng.normal(0, 5, 5000))]).astype(np.int64)
    rng.shuffle(values)
    data = cf._huffman_default(values)
    tables = [ecg_parser._DEFAULT_TABLE]
    assert scp_huffman.decode(data, len(values), tables, "x", _refuse).tolist() == \
        values.tolist()


def _refuse(*args):
    raise AssertionError("the bit-by-bit reference decoder was run on a valid stream")


@pytest.mark.parametrize("seed", range(16))
def test_damaged_streams_give_the_reference_decoders_values_or_error(seed):
    """Cut short, garbled, with codes missing from the table (an incomplete tree) or a switch
    to a table that does not exist: the same values or the same CorruptedFileError text."""
    rng = np.random.default_rng(100 + seed)
    n_tables = 1 + seed % 2
    spec = [_random_table(rng, n_tables, complete=seed % 4 < 2) for _ in range(n_tables)]
    if seed % 8 == 7:  # a switch to table 9
        prefix, bits, *_ = spec[0][0]
        spec[0][0] = (prefix, bits, prefix, 0, 9)
    tables = ecg_parser._parse_huffman_tables(_section2(spec))
    count = int(rng.integers(50, 800))
    data, _ = _encode(rng, [[c for c in t if c[3] == 1 or c[4] <= n_tables] for t in spec],
                      count)
    damaged = bytearray(data)
    if seed % 3 == 0:
        damaged = damaged[:len(damaged) * 2 // 3]
    else:
        spots = rng.integers(0, len(damaged), 3)
        for spot in spots:
            damaged[spot] = int(rng.integers(256))
    damaged = bytes(damaged)
    for n in (count, count + 40):   # more values than the stream holds, too
        assert _outcome(scp_huffman.decode, damaged, n, tables, "Section 6", _reference) == \
            _outcome(_reference, damaged, n, tables, "Section 6")


def test_reading_a_record_decodes_each_lead_with_the_vectorised_decoder(tmp_path, monkeypatch,
                                                                        cinc_sample_dir):
    """scp_ecg.read decodes the 12 leads' Section 6 streams here (not bit by bit: ~5 ms a lead),
    to the values written."""
    import wfdb
    signal_mv = wfdb.rdrecord(str(cinc_sample_dir / "E07500")).p_signal.T.copy()
    path = tmp_path / "exam.scp"
    stored = cf.write_scp(path, signal_mv, 500.0)
    calls = []
    fast = scp_huffman._fast
    monkeypatch.setattr(scp_huffman, "_fast", lambda *a: calls.append(a[1]) or fast(*a))
    rows, names, fs, _, _ = scp_ecg.read(path)
    assert calls == [5000] * 12 and fs == 500.0
    assert np.abs(np.array(rows) / 1000.0 - stored).max() < 1e-9


def test_a_stream_cut_inside_a_codes_extra_bits_is_the_reference_decoders_error():
    """5 and -3 (12 bits), then 100's 8-bit escape (10 prefix bits, 8 value bits) cut after 12
    of its 18 bits: its prefix is there, its value is not."""
    data = cf._huffman_default(np.array([5, -3, 100]))[:3]
    with pytest.raises(CorruptedFileError, match="Huffman data ends after 2 of 3 samples"):
        scp_huffman.decode(data, 3, [ecg_parser._DEFAULT_TABLE], "Section 6", _reference)
    assert scp_huffman._fast(data, 3, [ecg_parser._DEFAULT_TABLE]) is None
    assert scp_huffman._fast(data, 2, [ecg_parser._DEFAULT_TABLE]).tolist() == [5, -3]


def test_a_long_tail_past_the_values_is_not_decoded_in_every_table(monkeypatch):
    """1,000 values in 20 tables, then 100 KB the values never reach: the fast path was given
    all of it (every bit position in every table: 3.4 s and ~500 MB, an 8 MB stream of dozens
    of tables past any worker's memory); now only the bytes 1,000 codes can span."""
    import tracemalloc
    rng = np.random.default_rng(5)
    spec = [_random_table(rng, 3, complete=True) for _ in range(3)]
    spec += [_random_table(rng, 1, complete=True) for _ in range(17)]   # tables never used
    tables = ecg_parser._parse_huffman_tables(_section2(spec))
    data, expected = _encode(rng, spec, 1000)
    data += rng.integers(0, 256, 100_000, dtype=np.uint8).tobytes()
    given = []
    fast = scp_huffman._fast
    monkeypatch.setattr(scp_huffman, "_fast", lambda *a: given.append(len(a[0])) or fast(*a))
    longest = max(c[2] for table in spec for c in table)
    tracemalloc.start()
    try:
        decoded = scp_huffman.decode(data, 1000, tables, "Section 6", _refuse)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert given == [1000 * longest // 8 + 1] and peak < 64 << 20
    assert decoded.tolist() == expected.tolist()
    assert _reference(data, 1000, tables, "Section 6").tolist() == expected.tolist()


# Table 1: "1" a switch to table 2, "01" the value 3, "00" 4; table 2: "1" back to table 1,
# "0" the value 9. Every code is 1 or 2 bits: 100 values span at most 26 bytes.
_SWITCHING = [[(1, "1", 1, 0, 2), (2, "01", 2, 1, 3), (2, "00", 2, 1, 4)],
              [(1, "1", 1, 0, 1), (1, "0", 1, 1, 9)]]


def _bits(text: str) -> bytes:
    text += "0" * (-len(text) % 8)
    return int(text, 2).to_bytes(len(text) // 8, "big")


def test_values_past_the_bytes_their_codes_span_are_decoded_from_the_whole_stream():
    """1,000 table switches before the 100 values: the bytes 100 codes can span hold none of
    them, so the whole stream is decoded (by the reference), to the same values and errors (the
    7 bits padding the last byte are 3 more fours and a bit)."""
    tables = ecg_parser._parse_huffman_tables(_section2(_SWITCHING))
    data = _bits("11" * 500 + "01" * 50 + "1" + "0" * 25 + "1" + "00" * 25)
    expected = [3] * 50 + [9] * 25 + [4] * 25
    assert scp_huffman.decode(data, 100, tables, "Section 6", _reference).tolist() == expected
    assert _outcome(scp_huffman.decode, data, 104, tables, "Section 6", _reference) == \
        "CorruptedFileError: SCP Section 6: Huffman data ends after 103 of 104 samples"


def test_a_stream_over_the_state_budget_goes_to_the_reference_decoder(monkeypatch):
    """Bits x tables past MAX_STATES: the reference decodes it (on all the bytes) and the fast
    path is not run; at the budget, the fast path is."""
    tables = ecg_parser._parse_huffman_tables(_section2(_SWITCHING))
    data = _bits("01" * 300 + "1" + "0" * 300)   # 300 threes, then table 2's 300 nines: 113 B
    expected = [3] * 300 + [9] * 300
    calls = []

    def reference(*args):
        calls.append(len(args[0]))
        return _reference(*args)

    monkeypatch.setattr(scp_huffman, "MAX_STATES", 8 * 113 * 2 - 1)   # 113 bytes, 2 tables
    assert scp_huffman.decode(data, 600, tables, "x", reference).tolist() == expected
    assert calls == [len(data)]
    monkeypatch.setattr(scp_huffman, "MAX_STATES", 8 * 113 * 2)
    assert scp_huffman.decode(data, 600, tables, "x", _refuse).tolist() == expected
