"""Convolutions against `torch.nn.functional` (skipped when the `ref` extra is not installed)."""

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import given, settings
from jax import lax

from cnnjax.layers import conv_ops

torch = pytest.importorskip("torch")
F = torch.nn.functional
HIGHEST = lax.Precision.HIGHEST
TORCH_MODES = {
    "zeros": "constant",
    "reflect": "reflect",
    "replicate": "replicate",
    "circular": "circular",
}


def to_torch_images(x):
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1))).double()


def from_torch_images(t):
    return np.moveaxis(t.numpy(), 1, -1)


def to_torch_kernel(w):
    """HWIO -> PyTorch's (out, in / groups, kh, kw)."""
    return torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1))).double()


def normal(seed, *shape):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@settings(max_examples=30, deadline=None)
@given(
    mode=st.sampled_from(sorted(TORCH_MODES)),
    kernel=st.integers(1, 4),
    stride=st.integers(1, 3),
    dilation=st.integers(1, 2),
    groups=st.sampled_from([1, 2]),
    pad=st.integers(0, 2),
)
def test_conv2d_matches_torch_for_every_padding_mode(mode, kernel, stride, dilation, groups, pad):
    x, w, b = (
        normal(0, 2, 9, 8, 2 * groups),
        normal(1, kernel, kernel, 2, 3 * groups),
        normal(2, 3 * groups),
    )
    got = conv_ops.conv2d(
        x, w, b, stride, pad, dilation, groups, padding_mode=mode, precision=HIGHEST
    )
    padded = F.pad(to_torch_images(x), (pad,) * 4, mode=TORCH_MODES[mode])
    expected = F.conv2d(
        padded, to_torch_kernel(w), torch.from_numpy(b).double(), stride, 0, dilation, groups
    )
    np.testing.assert_allclose(got, from_torch_images(expected), rtol=1e-4, atol=1e-4)


@settings(max_examples=30, deadline=None)
@given(
    kernel=st.integers(1, 4),
    stride=st.integers(1, 3),
    dilation=st.integers(1, 2),
    groups=st.sampled_from([1, 2]),
    pad=st.integers(0, 3),
    data=st.data(),
)
def test_conv_transpose2d_matches_torch(kernel, stride, dilation, groups, pad, data):
    output_padding = data.draw(st.integers(0, max(stride, dilation) - 1))
    # keep the output of the narrowest (3-pixel) axis non-empty
    pad = min(pad, (2 * stride + dilation * (kernel - 1) + output_padding) // 2)
    cin_g, cout_g = 2, 3
    x = normal(0, 2, 4, 3, cin_g * groups)
    w = normal(1, kernel, kernel, cin_g, cout_g * groups)
    got = conv_ops.conv_transpose2d(
        x, w, None, stride, pad, output_padding, dilation=dilation, groups=groups, precision=HIGHEST
    )
    torch_w = (
        w.reshape(kernel, kernel, cin_g, groups, cout_g)
        .transpose(3, 2, 4, 0, 1)
        .reshape(groups * cin_g, cout_g, kernel, kernel)
    )
    expected = F.conv_transpose2d(
        to_torch_images(x),
        torch.from_numpy(np.ascontiguousarray(torch_w)).double(),
        stride=stride,
        padding=pad,
        output_padding=output_padding,
        groups=groups,
        dilation=dilation,
    )
    np.testing.assert_allclose(got, from_torch_images(expected), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "stride, pad, dilation, groups", [(1, 0, 1, 1), (2, 2, 1, 3), (1, 3, 3, 1)]
)
def test_conv1d_matches_torch(stride, pad, dilation, groups):
    x, w = normal(0, 2, 20, 3 * groups), normal(1, 3, 3, 2 * groups)
    got = conv_ops.conv1d(x, w, None, stride, pad, dilation, groups, precision=HIGHEST)
    expected = F.conv1d(
        torch.from_numpy(np.moveaxis(x, -1, 1)).double(),
        torch.from_numpy(np.ascontiguousarray(w.transpose(2, 1, 0))).double(),
        None,
        stride,
        pad,
        dilation,
        groups,
    )
    np.testing.assert_allclose(got, np.moveaxis(expected.numpy(), 1, -1), rtol=1e-4, atol=1e-4)
