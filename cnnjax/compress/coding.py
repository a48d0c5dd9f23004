"""Entropy coding for compressed models: canonical Huffman codes and relative sparse indices.

Deep Compression (Han et al. 2016, Sec. 3-4) stores a pruned, weight-shared layer as, for each
kept weight, the gap to the previous kept weight (a few bits) and its codebook index (a few bits),
both Huffman coded. This module holds the two codings; `cnnjax.compress` builds the file format on
them.

* Huffman: `code_lengths` from symbol counts (the textbook merge of the two rarest), then
  `canonical_codes`, so a table is stored as one length per symbol and rebuilt exactly.
  `huffman_encode` / `huffman_decode` pack and unpack symbol arrays as bits (most significant
  first).
* Relative indices: `encode_gaps` turns sorted positions into gaps of `1 .. 2**index_bits`; a gap
  that does not fit is bridged by filler entries (positions that store a zero weight, as in the
  paper's Fig. 2), flagged so that `decode_gaps` drops them again.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping

import numpy as np

from cnnjax.errors import ConfigError


def code_lengths(counts: Mapping[int, int]) -> dict[int, int]:
    """Huffman code length of each symbol with a positive count.

    Args:
      counts: `{symbol: occurrences}`; symbols with count 0 get no code.

    Returns:
      `{symbol: bits}`; a single symbol gets 1 bit (a code needs at least one), none gives `{}`.
    """
    used = sorted((int(s), int(c)) for s, c in counts.items() if c > 0)
    if len(used) <= 1:
        return {s: 1 for s, _ in used}
    # Heap of (count, tie-breaker, symbols under this node); merging two nodes deepens all of
    # their symbols by one bit. The tie-breaker keeps the result independent of dict order.
    heap = [(count, i, [symbol]) for i, (symbol, count) in enumerate(used)]
    heapq.heapify(heap)
    depth = {s: 0 for s, _ in used}
    order = len(heap)
    while len(heap) > 1:
        count_a, _, symbols_a = heapq.heappop(heap)
        count_b, _, symbols_b = heapq.heappop(heap)
        for symbol in symbols_a + symbols_b:
            depth[symbol] += 1
        heapq.heappush(heap, (count_a + count_b, order, symbols_a + symbols_b))
        order += 1
    return depth


def canonical_codes(lengths: Mapping[int, int]) -> dict[int, tuple[int, int]]:
    """Canonical prefix codes from code lengths: `{symbol: (code as an int, bits)}`.

    Symbols are ordered by (length, symbol) and numbered consecutively, shifting left whenever the
    length grows, so the lengths alone determine every code (what a file stores).
    """
    code, previous = 0, 0
    codes = {}
    for symbol, bits in sorted(lengths.items(), key=lambda item: (item[1], item[0])):
        code <<= bits - previous
        codes[symbol] = (code, bits)
        code, previous = code + 1, bits
    return codes


def huffman_encode(symbols: np.ndarray, lengths: Mapping[int, int]) -> tuple[bytes, int]:
    """Packs `symbols` with the canonical code of `lengths`.

    Returns:
      `(data, bit_count)`: the bits, most significant first, zero-padded to whole bytes.

    Raises:
      ConfigError: a symbol has no code in `lengths`.
    """
    codes = canonical_codes(lengths)
    symbols = np.asarray(symbols, np.int64).reshape(-1)
    missing = set(np.unique(symbols).tolist()) - set(codes)
    if missing:
        raise ConfigError(f"symbols {sorted(missing)[:5]} have no Huffman code")
    if symbols.size == 0:
        return b"", 0
    if max(bits for _, bits in codes.values()) > 62:  # beyond int64 shifts: bit by bit
        bits = []
        for symbol in symbols.tolist():
            code, length = codes[symbol]
            bits.extend((code >> shift) & 1 for shift in range(length - 1, -1, -1))
        return np.packbits(np.asarray(bits, np.uint8)).tobytes(), len(bits)
    # Vectorized: bit j of symbol i's code is (code_i >> (length_i - 1 - j)) & 1.
    alphabet = max(codes) + 1
    code_of = np.zeros(alphabet, np.int64)
    length_of = np.zeros(alphabet, np.int64)
    for symbol, (code, length) in codes.items():
        code_of[symbol], length_of[symbol] = code, length
    lengths_i = length_of[symbols]
    owner = np.repeat(np.arange(symbols.size), lengths_i)
    within = np.arange(owner.size) - np.repeat(np.cumsum(lengths_i) - lengths_i, lengths_i)
    bits = (code_of[symbols][owner] >> (lengths_i[owner] - 1 - within)) & 1
    return np.packbits(bits.astype(np.uint8)).tobytes(), int(owner.size)


def huffman_decode(
    data: bytes, bit_count: int, lengths: Mapping[int, int], count: int
) -> np.ndarray:
    """Inverse of `huffman_encode`: the first `count` symbols of `data`.

    Raises:
      ConfigError: the bits do not decode to `count` symbols (a damaged or truncated stream).
    """
    codes = canonical_codes(lengths)
    stream = np.unpackbits(np.frombuffer(data, np.uint8))[:bit_count]
    longest = max((bits for _, bits in codes.values()), default=0)
    if longest > 20:  # a table of 2**longest entries would be too big: walk bit by bit
        return _decode_bitwise(stream.tolist(), codes, count, bit_count)
    # Table decoding: the next `longest` bits index (symbol, length) directly.
    table_symbol = np.full(2**longest, -1, np.int64)
    table_length = np.zeros(2**longest, np.int64)
    for symbol, (code, bits) in codes.items():
        start = code << (longest - bits)
        table_symbol[start : start + (1 << (longest - bits))] = symbol
        table_length[start : start + (1 << (longest - bits))] = bits
    padded = np.concatenate([stream, np.zeros(longest, np.uint8)]).astype(np.int64)
    # window[i] = the `longest` bits starting at bit i, as an integer.
    window = np.zeros(stream.size + 1, np.int64)
    for j in range(longest):
        window = (window << 1) | padded[j : j + stream.size + 1]
    out = np.empty(count, np.int64)
    position, found = 0, 0
    symbols, sizes = table_symbol.tolist(), table_length.tolist()
    windows = window.tolist()
    while found < count and position < bit_count:
        key = windows[position]
        if symbols[key] < 0 or position + sizes[key] > bit_count:
            break
        out[found] = symbols[key]
        position += sizes[key]
        found += 1
    if found != count or position != bit_count:
        raise ConfigError(
            f"Huffman stream of {bit_count} bits holds {found} symbols, not {count} (decoding "
            f"stopped at bit {position})"
        )
    return out


def _decode_bitwise(stream, codes, count: int, bit_count: int) -> np.ndarray:
    by_code = {(code, bits): symbol for symbol, (code, bits) in codes.items()}
    out = []
    code = length = 0
    for bit in stream:
        code, length = (code << 1) | bit, length + 1
        symbol = by_code.get((code, length))
        if symbol is not None:
            out.append(symbol)
            code = length = 0
    if len(out) != count or length:
        raise ConfigError(
            f"Huffman stream of {bit_count} bits holds {len(out)} symbols, not {count}"
        )
    return np.asarray(out, np.int64)


def encode_gaps(positions: np.ndarray, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted flat positions as gaps of `1 .. 2**index_bits`, with fillers for longer gaps.

    The first gap counts from position -1, so position 0 has gap 1. A gap longer than
    `2**index_bits` is split: each full step of `2**index_bits` becomes a filler entry (a stored
    zero weight, as in Han et al. 2016, Fig. 2).

    Args:
      positions: strictly increasing non-negative flat indices of the kept weights.
      index_bits: bits per stored gap (a gap `g` is stored as `g - 1`).

    Returns:
      `(gaps, is_filler)`, both of one length: the kept weights and the fillers in order.

    Raises:
      ConfigError: `index_bits < 1`, or positions that are not strictly increasing from 0 up.
    """
    if index_bits < 1:
        raise ConfigError(f"index_bits must be >= 1, got {index_bits}")
    positions = np.asarray(positions, np.int64).reshape(-1)
    gaps = np.diff(positions, prepend=-1)
    if positions.size and (positions[0] < 0 or np.any(gaps < 1)):
        raise ConfigError("positions must be strictly increasing non-negative indices")
    longest = 2**index_bits
    fillers = (gaps - 1) // longest  # full steps before each kept weight
    total = int(fillers.sum()) + len(gaps)
    out_gaps = np.empty(total, np.int64)
    is_filler = np.ones(total, bool)
    # Entry index of each kept weight: its own index plus all fillers up to and including its own.
    kept_at = np.arange(len(gaps)) + np.cumsum(fillers)
    is_filler[kept_at] = False
    out_gaps[:] = longest
    out_gaps[kept_at] = gaps - fillers * longest
    return out_gaps, is_filler


def decode_gaps(gaps: np.ndarray, is_filler: np.ndarray) -> np.ndarray:
    """Inverse of `encode_gaps`: the positions of the kept (non-filler) entries."""
    positions = np.cumsum(np.asarray(gaps, np.int64)) - 1
    return positions[~np.asarray(is_filler, bool)]
