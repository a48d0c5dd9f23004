"""Huffman codes and relative sparse indices: exact round trips and optimal lengths."""

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings

from cnnjax.compress.coding import (
    canonical_codes,
    code_lengths,
    decode_gaps,
    encode_gaps,
    huffman_decode,
    huffman_encode,
)
from cnnjax.errors import ConfigError


def test_lengths_of_the_textbook_example_give_its_optimal_224_bits():
    # Cormen et al., "Introduction to Algorithms", Sec. 16.3: a:45 b:13 c:12 d:16 e:9 f:5 (in
    # thousands) code in 224 thousand bits, with lengths 1, 3, 3, 3, 4, 4.
    counts = {0: 45, 1: 13, 2: 12, 3: 16, 4: 9, 5: 5}
    lengths = code_lengths(counts)
    assert sum(counts[s] * lengths[s] for s in counts) == 224
    assert lengths == {0: 1, 1: 3, 2: 3, 3: 3, 4: 4, 5: 4}


def test_canonical_codes_are_prefix_free_and_follow_their_lengths():
    lengths = code_lengths({s: c for s, c in enumerate([40, 1, 1, 2, 3, 5, 8, 13, 21])})
    codes = canonical_codes(lengths)
    words = [format(code, f"0{bits}b") for code, bits in codes.values()]
    assert all(len(w) == lengths[s] for s, w in zip(codes, words))
    for a in words:
        assert not any(b != a and b.startswith(a) for b in words)
    assert sum(2.0 ** -len(w) for w in words) == 1.0  # a complete code (Kraft equality)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=300))
def test_huffman_round_trip_is_exact(values):
    symbols = np.asarray(values)
    lengths = code_lengths(dict(zip(*np.unique(symbols, return_counts=True))))
    data, bits = huffman_encode(symbols, lengths)
    assert bits == sum(lengths[s] for s in values) and len(data) == -(-bits // 8)
    np.testing.assert_array_equal(huffman_decode(data, bits, lengths, len(values)), symbols)


def test_one_symbol_takes_one_bit_and_damage_is_reported():
    data, bits = huffman_encode(np.zeros(5, int), code_lengths({0: 5}))
    assert bits == 5
    np.testing.assert_array_equal(huffman_decode(data, bits, {0: 1}, 5), np.zeros(5))
    lengths = code_lengths({0: 1, 1: 1, 2: 2})
    data, bits = huffman_encode(np.array([2, 0, 1]), lengths)
    with pytest.raises(ConfigError, match="holds .* symbols, not 4"):
        huffman_decode(data, bits, lengths, 4)
    with pytest.raises(ConfigError, match=r"symbols \[7\] have no Huffman code"):
        huffman_encode(np.array([7]), lengths)


def test_gaps_bridge_long_runs_with_fillers_as_in_the_paper():
    # 3-bit indices store gaps 1..8: position 20 after 4 needs a filler at 12 (gap 8), then 8.
    gaps, filler = encode_gaps(np.array([1, 4, 20]), index_bits=3)
    np.testing.assert_array_equal(gaps, [2, 3, 8, 8])
    np.testing.assert_array_equal(filler, [False, False, True, False])
    assert gaps.max() <= 8 and gaps.min() >= 1
    np.testing.assert_array_equal(decode_gaps(gaps, filler), [1, 4, 20])


@settings(max_examples=30, deadline=None)
@given(st.sets(st.integers(0, 5000), max_size=200), st.integers(1, 8))
def test_gap_round_trip_is_exact_for_any_index_width(positions, index_bits):
    positions = np.asarray(sorted(positions), np.int64)
    gaps, filler = encode_gaps(positions, index_bits)
    assert np.all((gaps >= 1) & (gaps <= 2**index_bits))
    np.testing.assert_array_equal(decode_gaps(gaps, filler), positions)
    assert (~filler).sum() == len(positions)


def test_bad_positions_and_widths_are_refused():
    with pytest.raises(ConfigError, match="index_bits must be >= 1"):
        encode_gaps(np.array([1]), 0)
    with pytest.raises(ConfigError, match="strictly increasing"):
        encode_gaps(np.array([3, 3]), 4)
