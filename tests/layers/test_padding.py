"""`pad` against numpy and PyTorch."""

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from cnnjax.errors import ConfigError, ShapeError
from cnnjax.layers.padding import PAD_MODES, pad
from tests.layers.helpers import NUMPY_MODES


@settings(max_examples=40, deadline=None)
@given(
    mode=st.sampled_from(PAD_MODES),
    height=st.integers(3, 6),
    width=st.integers(3, 6),
    pads=st.tuples(*[st.integers(0, 2)] * 4),
)
def test_pad_matches_numpy_semantics(mode, height, width, pads):
    x = np.random.default_rng(0).normal(size=(2, height, width, 3)).astype(np.float32)
    top, bottom, left, right = pads
    got = pad(x, ((top, bottom), (left, right)), mode, value=1.5)
    widths = ((0, 0), (top, bottom), (left, right), (0, 0))
    if NUMPY_MODES[mode] == "constant":
        expected = np.pad(x, widths, constant_values=1.5 if mode == "constant" else 0.0)
    else:
        expected = np.pad(x, widths, mode=NUMPY_MODES[mode])
    np.testing.assert_array_equal(got, expected)


def test_modes_on_a_row_read_like_the_course():
    row = np.array([1.0, 2.0, 3.0, 4.0], np.float32).reshape(1, 4, 1)
    expected = {
        "zeros": [0, 0, 1, 2, 3, 4, 0, 0],
        "reflect": [3, 2, 1, 2, 3, 4, 3, 2],
        "symmetric": [2, 1, 1, 2, 3, 4, 4, 3],
        "replicate": [1, 1, 1, 2, 3, 4, 4, 4],
        "circular": [3, 4, 1, 2, 3, 4, 1, 2],
    }
    for mode, values in expected.items():
        np.testing.assert_array_equal(pad(row, 2, mode)[0, :, 0], values)


def test_named_paddings_need_the_kernel():
    x = np.zeros((1, 5, 5, 1), np.float32)
    assert pad(x, "same", kernel_size=3).shape == (1, 7, 7, 1)
    assert pad(x, "full", kernel_size=3, dilation=2).shape == (1, 13, 13, 1)
    assert pad(x, "valid", kernel_size=3).shape == x.shape


def test_bad_modes_and_sizes_are_clear_errors():
    x = np.zeros((1, 3, 3, 1), np.float32)
    with pytest.raises(ConfigError, match="did you mean 'reflect'"):
        pad(x, 1, "reflection")
    with pytest.raises(ShapeError, match=r"reflect padding \(3, 3\)"):
        pad(x, 3, "reflect")
    assert pad(x, 3, "symmetric").shape == (1, 9, 9, 1)  # one full mirror image is allowed
    with pytest.raises(ShapeError, match=r"symmetric padding \(4, 4\) needs an axis at least"):
        pad(x, 4, "symmetric")
    with pytest.raises(ShapeError, match=r"value of shape \(2,\): give one number or one per"):
        pad(x, 1, "constant", value=(1.0, 2.0))


def padding_matrix(shape, pads, mode, value=0.0):
    """numpy's padding of each basis image: `(padded size, input size)` columns, and the
    padded image of zeros (the affine part: the constant's border)."""
    widths = ((0, 0), *pads, (0, 0))
    kwargs = {"constant_values": value} if NUMPY_MODES[mode] == "constant" else {}
    fill = lambda x: np.pad(x, widths, mode=NUMPY_MODES[mode], **kwargs).ravel()  # noqa: E731
    offset = fill(np.zeros(shape))
    columns = []
    for i in range(int(np.prod(shape))):
        basis = np.zeros(int(np.prod(shape)))
        basis[i] = 1.0
        columns.append(fill(basis.reshape(shape)) - offset)
    return np.stack(columns, 1), offset


@pytest.mark.parametrize("mode", PAD_MODES)
def test_pad_gradient_is_the_transpose_of_numpys_padding(mode):
    shape, pads = (1, 3, 4, 2), ((2, 1), (1, 3))
    x = np.random.default_rng(2).normal(size=shape).astype(np.float32)
    matrix, _ = padding_matrix(shape, pads, mode, value=0.7)
    cotangent = np.random.default_rng(3).normal(size=matrix.shape[0]).astype(np.float32)
    _, vjp = jax.vjp(lambda x: pad(x, pads, mode, value=0.7), x)
    (grad,) = vjp(cotangent.reshape((1, 6, 8, 2)))
    np.testing.assert_allclose(grad.ravel(), matrix.T @ cotangent, rtol=1e-5, atol=1e-5)


def test_per_channel_constant_fills_each_channel_and_has_a_gradient():
    x = np.random.default_rng(4).normal(size=(2, 3, 3, 3)).astype(np.float32)
    colour = np.array([0.485, 0.456, 0.406], np.float32)  # an RGB border colour
    got = np.asarray(pad(x, ((1, 2), (0, 1)), "constant", value=colour))
    expected = np.stack(
        [np.pad(x[..., c], ((0, 0), (1, 2), (0, 1)), constant_values=colour[c]) for c in range(3)],
        -1,
    )
    np.testing.assert_array_equal(got, expected)
    weights = np.random.default_rng(5).normal(size=got.shape).astype(np.float32)
    border = np.pad(np.zeros((2, 3, 3, 3)), ((0, 0), (1, 2), (0, 1), (0, 0)), constant_values=1)
    loss = lambda v: jnp.sum(weights * pad(x, ((1, 2), (0, 1)), "constant", value=v))  # noqa: E731
    np.testing.assert_allclose(
        jax.grad(loss)(colour), np.sum(weights * border, axis=(0, 1, 2)), rtol=1e-5
    )
    scalar = jax.grad(lambda v: jnp.sum(pad(x, 1, "constant", value=v)))(2.0)
    assert scalar == 2 * (5 * 5 - 3 * 3) * 3  # border pixels of every image and channel


def test_pad_matches_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(1).normal(size=(2, 5, 4, 3)).astype(np.float32)
    torch_x = torch.from_numpy(np.moveaxis(x, -1, 1).copy())
    for mode, torch_mode in [
        ("reflect", "reflect"),
        ("replicate", "replicate"),
        ("circular", "circular"),
        ("zeros", "constant"),
    ]:
        expected = torch.nn.functional.pad(torch_x, (1, 2, 2, 1), mode=torch_mode)
        got = pad(x, ((2, 1), (1, 2)), mode)
        np.testing.assert_array_equal(got, np.moveaxis(expected.numpy(), 1, -1))
