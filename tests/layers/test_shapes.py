"""Output-size arithmetic and padding specs, checked against brute-force window counting."""

import hypothesis.strategies as st
import pytest
from hypothesis import given

from cnnjax.errors import ConfigError, ShapeError
from cnnjax.layers.shapes import (
    check_window,
    conv_output_size,
    conv_transpose_output_size,
    resolve_padding,
)


def count_windows(size, kernel, stride, padding, dilation):
    """Counts start positions whose dilated window lies inside the padded input."""
    padded = size + padding[0] + padding[1]
    extent = dilation * (kernel - 1) + 1
    return len([s for s in range(0, padded, stride) if s + extent <= padded])


@given(
    size=st.integers(1, 40),
    kernel=st.integers(1, 7),
    stride=st.integers(1, 4),
    before=st.integers(0, 3),
    after=st.integers(0, 3),
    dilation=st.integers(1, 3),
)
def test_conv_output_size_counts_the_windows(size, kernel, stride, before, after, dilation):
    expected = count_windows(size, kernel, stride, (before, after), dilation)
    got = conv_output_size(size, kernel, stride, (before, after), dilation)
    assert max(got, 0) == expected


@given(size=st.integers(1, 40), kernel=st.integers(1, 7), dilation=st.integers(1, 3))
def test_same_padding_keeps_size_at_stride_one(size, kernel, dilation):
    pads = resolve_padding("same", (kernel, kernel), (dilation, dilation))
    assert conv_output_size(size, kernel, 1, pads[0], dilation) == size


@given(size=st.integers(1, 40), kernel=st.integers(1, 7))
def test_full_padding_gives_every_partial_overlap(size, kernel):
    pads = resolve_padding("full", (kernel, kernel))
    assert conv_output_size(size, kernel, 1, pads[0]) == size + kernel - 1


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("valid", ((0, 0), (0, 0))),
        (2, ((2, 2), (2, 2))),
        ((1, 2), ((1, 1), (2, 2))),
        (((0, 1), (2, 3)), ((0, 1), (2, 3))),
    ],
)
def test_padding_specs(spec, expected):
    assert resolve_padding(spec, (3, 3)) == expected


@pytest.mark.parametrize("spec", ["sam", -1, ((1, 2, 3), (0, 0))])
def test_bad_padding_is_a_config_error(spec):
    with pytest.raises(ConfigError, match="padding"):
        resolve_padding(spec, (3, 3))


def test_kernel_larger_than_padded_input_names_layer_and_sizes():
    with pytest.raises(ShapeError, match=r"c5: kernel \(5, 5\).*padded input \(4, 4\)"):
        check_window("c5", (4, 4), (5, 5), (1, 1), ((0, 0), (0, 0)))


@given(
    size=st.integers(1, 30),
    kernel=st.integers(1, 6),
    stride=st.integers(1, 4),
    before=st.integers(0, 3),
    after=st.integers(0, 3),
    dilation=st.integers(1, 3),
)
def test_transposed_output_size_inverts_the_conv(size, kernel, stride, before, after, dilation):
    out = conv_output_size(size, kernel, stride, (before, after), dilation)
    if out < 1:
        return
    # The stride maps `stride` input sizes to one output size; output_padding picks this one.
    extra = (size + before + after - dilation * (kernel - 1) - 1) % stride
    back = conv_transpose_output_size(out, kernel, stride, (before, after), dilation, extra)
    assert back == size


@pytest.mark.parametrize(
    "spec, expected",
    [("same", ((1, 1),)), (2, ((2, 2),)), ((1, 3), ((1, 3),)), ([(0, 2)], ((0, 2),))],
)
def test_one_dimensional_padding_specs(spec, expected):
    assert resolve_padding(spec, 3, ndim=1) == expected
