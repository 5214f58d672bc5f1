"""SCP-ECG Huffman decoding (Sections 5 and 6), vectorised with numpy.

    decode(data, count, tables, what, reference) -> int64 array of `count` values
    install()     ecgdatakit's SCP-ECG parser decodes with `decode` (once per process)

ecgdatakit's decoder reads the bit stream one bit at a time in Python (~5 ms a lead of 5,000
samples, 95% of reading a 12-lead 10-s record; ~0.5-1 ms here). Here every bit position is
decoded at once: the shortest code of each table that matches the bits there (a lookup table on
the longest prefix), hence the state (bit position, table) that follows it; the chain of states
from bit 0 in table 1 is then walked STRIDE codes a step and filled in (`_chain`), the values
read at its first `count` data codes. The same tables (ecgdatakit's Section 2 parse or the
standard's default one) and the same rules: the shortest matching prefix, a mode-0 code
switching tables without a value, a data code's extra bits a two's-complement number added to
its value.

Anything the fast path does not take (a bit stream that ends early or holds an invalid code or a
switch to an unknown table, a code prefix over 16 bits or more than 32 extra bits) goes to
`reference`, ecgdatakit's own decoder: its result, or its error message, is then the one given.
So does a stream of more than MAX_STATES bits x tables in the bytes `count` values can need
(`decode`): the fast path's memory and time grow with those, the reference's with `count`.
"""
from __future__ import annotations

import functools

import numpy as np

MAX_PREFIX_BITS = 16  # the longest code prefix the fast path takes (a 2**16-row lookup table)
MAX_EXTRA_BITS = 32   # a code's bits after its prefix that it reads (40-bit windows)
LOG_STRIDE = 5        # the chain of codes is walked 2**5 codes a step, then filled in
STRIDE = 1 << LOG_STRIDE
STOP = 1 << 40        # the bits "taken" by an invalid code: past any stream's end
MAX_STATES = 1 << 23  # the (bit position, table) states the fast path takes (~0.3 GB at most)


def _patterns(data: bytes, bits: int) -> np.ndarray:
    """The `bits` bits (at most 16) from each bit position 0..8 * len(data) + 1, MSB first,
    zeros past the end."""
    u = np.frombuffer(bytes(data) + bytes(4), np.uint8).astype(np.intp)
    words = (u[:-3] << 24) | (u[1:-2] << 16) | (u[2:-1] << 8) | u[3:]   # from each byte
    out = np.repeat(words, 8)[:8 * len(data) + 2]
    out *= np.tile(1 << np.arange(8), len(words))[:len(out)]  # << the bit's place in its byte
    out >>= 32 - bits
    out &= (1 << bits) - 1
    return out


def _extra_bits(data: bytes, positions: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """The `widths` bits (1 to 32) from each of `positions` (bit offsets), as two's-complement
    numbers."""
    u = np.frombuffer(bytes(data) + bytes(5), np.uint8).astype(np.int64)
    byte, shift = positions >> 3, positions & 7
    word = np.zeros(len(byte), np.int64)
    for i in range(5):                                  # 40 bits from the byte holding each
        word = (word << 8) | u[byte + i]
    raw = (word >> (40 - shift - widths)) & ((np.int64(1) << widths) - 1)
    return raw - ((raw >> (widths - 1)) << widths)


@functools.lru_cache(maxsize=64)
def _lookup(codes: tuple, t: int, n_tables: int) -> np.ndarray:
    """Per `bits`-bit pattern (the longest prefix), the shortest code of a table (table t of
    n_tables, its codes as (prefix bits, code, total bits, mode, value)) that starts it, as
    columns (bits it takes, next table, reads a value, value, prefix bits, extra bits); a
    switch to an unknown table, or no code, takes STOP bits."""
    bits = max((c[0] for c in codes), default=1)
    rows = np.zeros((1 << bits, 6), np.int64)
    rows[:, 0] = STOP
    for length, code, total, mode, value in sorted(codes, reverse=True):  # shortest last
        span = 1 << (bits - length)
        if mode != 0:
            rows[code * span:(code + 1) * span] = (total, t, 1, value, length, total - length)
        elif 1 <= value <= n_tables:
            rows[code * span:(code + 1) * span] = (length, value - 1, 0, 0, length, 0)
        else:
            rows[code * span:(code + 1) * span] = (STOP, 0, 0, 0, 0, 0)
    return np.ascontiguousarray(rows.T)


def _follow(lookups, patterns, nbits: int) -> np.ndarray:
    """Over the states (bit position, table), flattened as position * len(tables) + table, and
    one last absorbing state, `stop`, where the stream cannot go on (an invalid code, or one
    that would read past its end): the state after each."""
    n = len(lookups)
    stop = (nbits + 1) * n
    follow = np.empty((nbits + 2, n), np.intp)
    positions = np.arange(0, (nbits + 1) * n, n)
    for t, (cols, pattern) in enumerate(zip(lookups, patterns)):
        step = follow[:-1, t]
        cols[0].take(pattern[:nbits + 1], out=step, mode="clip")   # clip: unbuffered
        if n > 1:
            step *= n
            step += cols[1].take(pattern[:nbits + 1])
        step += positions
        np.minimum(step, stop, out=step)
    follow[-1] = stop
    return follow.ravel()[:stop + 1]


def _codes(states: np.ndarray, lookups, patterns, columns) -> np.ndarray:
    """The lookup `columns` (a slice or index of: bits taken, next table, reads a value, value,
    prefix bits, extra bits) of the code at each state."""
    n = len(lookups)
    if n == 1:
        return lookups[0][columns, patterns[0][states]]
    position, table = np.divmod(states, n)
    out = np.zeros(lookups[0][columns, :1].shape[:-1] + (len(states),), np.int64)
    for t, (cols, pattern) in enumerate(zip(lookups, patterns)):
        here = table == t
        out[..., here] = cols[columns, pattern[position[here]]]
    return out


def _chain(follow: np.ndarray, count: int, reads) -> np.ndarray:
    """The states from state 0 on, in order, up to the count-th that `reads` a value or up
    to `stop`: every STRIDE-th state walked on `follow` composed STRIDE times (LOG_STRIDE
    numpy gathers), the states between them filled in STRIDE gathers of those."""
    stop = len(follow) - 1
    far, spare = follow.copy(), np.empty_like(follow)
    for _ in range(LOG_STRIDE):
        far, spare = far.take(far, out=spare, mode="clip"), far  # clip: unbuffered
    segments, found, state = [], 0, 0
    while found < count and state != stop:
        anchors = []
        for _ in range(-(-(count - found) // STRIDE)):  # enough if every state reads a value
            anchors.append(state)
            state = int(far[state])
            if state == stop:
                break
        block = np.empty((STRIDE, len(anchors)), np.intp)
        block[0] = anchors
        for j in range(1, STRIDE):
            block[j] = follow[block[j - 1]]
        segments.append(block.T.ravel())
        found += np.count_nonzero(reads(segments[-1]))
    return np.concatenate(segments)


def _fast(data: bytes, count: int, tables) -> np.ndarray | None:
    """The values, or None where the stream does not give `count` of them."""
    lookups = [_lookup(tuple((p, c, e.total_bits, e.mode, e.value)
                             for (p, c), e in table.codes.items()), t, len(tables))
               for t, table in enumerate(tables)]
    patterns = [_patterns(data, max(table.max_prefix, 1)) for table in tables]
    follow = _follow(lookups, patterns, 8 * len(data))
    stop = len(follow) - 1

    def reads(states):  # a valid code (not followed by stop) that reads a value
        return (_codes(states, lookups, patterns, 2) == 1) & (follow[states] != stop)

    chain = _chain(follow, count, reads)
    states = chain[reads(chain)][:count]
    if len(states) < count:
        return None
    values, prefix, extra = _codes(states, lookups, patterns, slice(3, 6))
    wide = np.flatnonzero(extra)
    values[wide] += _extra_bits(data, states[wide] // len(tables) + prefix[wide], extra[wide])
    return values


def decode(data: bytes, count: int, tables, what: str, reference) -> np.ndarray:
    """`count` values from the Huffman bit stream `data` (MSB first) in `tables`, as
    `reference(data, count, tables, what)` (ecgdatakit's decoder) gives them. The fast path is
    given only the bytes that `count` codes of the longest total bits span, and only where their
    bits times the tables (its memory and time) are at most MAX_STATES; a larger stream, or one
    whose values go on past those bytes (table switches between them), goes to `reference`."""
    if count == 0 or any(c.total_bits - c.prefix_bits > MAX_EXTRA_BITS
                         or c.prefix_bits > MAX_PREFIX_BITS
                         for table in tables for c in table.codes.values()):
        return reference(data, count, tables, what)
    longest = max((c.total_bits for table in tables for c in table.codes.values()), default=0)
    needed = data[:count * longest // 8 + 1]
    if 8 * len(needed) * len(tables) > MAX_STATES:
        return reference(data, count, tables, what)
    values = _fast(needed, count, tables)
    return reference(data, count, tables, what) if values is None else values


@functools.cache
def install() -> None:
    """ecgdatakit's SCP-ECG parser decodes Sections 5 and 6 with `decode` (its one Huffman
    function, a module global it calls by name), its own decoder kept as the reference."""
    from ecgdatakit.parsing.parsers import scp_ecg as library

    reference = library._huffman_decode

    def fast_decode(data, count, tables, what):
        return decode(data, count, tables, what, reference)

    library._huffman_decode = fast_decode
