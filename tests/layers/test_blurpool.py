"""Anti-aliased pooling (Zhang 2019): filters, blur_pool2d against loops, and shift robustness."""

import itertools

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from jax import lax

from cnnjax.errors import ConfigError, ShapeError
from cnnjax.layers.blurpool import (
    BlurAvgPool,
    BlurPool,
    ConvBlurPool,
    MaxBlurPool,
    binomial_filter,
    blur_pool2d,
)
from cnnjax.layers.conv import Conv2d
from cnnjax.layers.padding import pad
from cnnjax.layers.pooling import avg_pool2d, max_pool2d
from tests.layers.helpers import NUMPY_MODES, rng_key

HIGHEST = lax.Precision.HIGHEST
PASCAL = {
    1: [1],
    2: [1, 1],
    3: [1, 2, 1],
    4: [1, 3, 3, 1],
    5: [1, 4, 6, 4, 1],
    6: [1, 5, 10, 10, 5, 1],
    7: [1, 6, 15, 20, 15, 6, 1],
}


def normal(seed, *shape):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def numpy_blur_pool(x, size, stride, mode):
    """Depthwise correlation with the outer product of a Pascal row, then subsampling."""
    row = np.array(PASCAL[size], np.float64)
    kernel = np.outer(row, row) / row.sum() ** 2
    before, after = (size - 1) // 2, size // 2
    padded = np.pad(x, ((0, 0), (before, after), (before, after), (0, 0)), NUMPY_MODES[mode])
    h, w = x.shape[1:3]
    dense = np.zeros(x.shape)
    for i, j, a, b in itertools.product(range(h), range(w), range(size), range(size)):
        dense[:, i, j] += kernel[a, b] * padded[:, i + a, j + b]
    return dense[:, ::stride, ::stride]


@pytest.mark.parametrize("size", range(1, 8))
def test_binomial_filters_are_normalized_symmetric_pascal_rows(size):
    f = binomial_filter(size)
    assert f.shape == (size, size) and f.dtype == np.float32
    assert f.sum() == 1.0  # dyadic entries: exact in float32
    np.testing.assert_array_equal(f, f.T)
    np.testing.assert_array_equal(f, f[::-1, ::-1])
    row = np.array(PASCAL[size], np.float64)
    np.testing.assert_allclose(f, np.outer(row, row) / row.sum() ** 2, rtol=1e-7)


def test_filter_size_one_is_the_identity_and_bad_sizes_are_config_errors():
    np.testing.assert_array_equal(binomial_filter(1), [[1.0]])
    x = normal(0, 2, 5, 6, 3)
    np.testing.assert_array_equal(blur_pool2d(x, 1, 1), x)
    np.testing.assert_array_equal(blur_pool2d(x, 1, 2), x[:, ::2, ::2])
    for bad in (0, 8, 2.0):
        with pytest.raises(ConfigError, match="filter_size"):
            binomial_filter(bad)


@settings(max_examples=25, deadline=None)
@given(
    size=st.integers(1, 7),
    stride=st.integers(1, 3),
    mode=st.sampled_from(sorted(NUMPY_MODES)),
    h=st.integers(4, 8),
    w=st.integers(4, 8),
)
def test_blur_pool_matches_numpy_loop(size, stride, mode, h, w):
    x = normal(1, 2, h, w, 3)
    got = jax.jit(lambda x: blur_pool2d(x, size, stride, mode))(x)
    expected = numpy_blur_pool(x, size, stride, mode)
    assert got.shape == (2, -(-h // stride), -(-w // stride), 3)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size, stride", [(3, 2), (4, 2), (5, 3)])
def test_blur_pool_matches_torch_depthwise_conv(size, stride):
    torch = pytest.importorskip("torch")
    functional = torch.nn.functional
    x = normal(2, 2, 9, 8, 3)
    before, after = (size - 1) // 2, size // 2
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).double()
    padded = functional.pad(xt, (before, after, before, after), mode="reflect")
    weight = torch.from_numpy(np.tile(binomial_filter(size), (3, 1, 1, 1))).double()
    expected = functional.conv2d(padded, weight, stride=stride, groups=3)
    np.testing.assert_allclose(
        blur_pool2d(x, size, stride), expected.numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-6
    )


def test_modules_follow_the_papers_recipes():
    x = normal(3, 2, 9, 10, 4)
    assert BlurPool().init(rng_key(0), x) == {}
    np.testing.assert_allclose(BlurPool(5, 3).apply({}, x), blur_pool2d(x, 5, 3), rtol=1e-6)
    # Dense max, then blurred subsampling; filter size 1 gives back the strided max pool.
    np.testing.assert_allclose(
        MaxBlurPool().apply({}, x), blur_pool2d(max_pool2d(x, 2, 1), 3, 2), rtol=1e-6
    )
    np.testing.assert_array_equal(MaxBlurPool(filter_size=1).apply({}, x), max_pool2d(x, 2, 2))
    assert MaxBlurPool(3, padding=1).apply({}, x).shape == max_pool2d(x, 3, 2, 1).shape
    assert BlurAvgPool().apply({}, x).shape == avg_pool2d(x, 2, 2).shape
    np.testing.assert_allclose(BlurAvgPool(window=1).apply({}, x), blur_pool2d(x), rtol=1e-6)
    # ConvBlurPool: conv at stride 1, ReLU, blur-subsample; exactly the conv's parameters.
    module = ConvBlurPool(features=5)
    variables = module.init(rng_key(1), x)
    conv_variables = Conv2d(5).init(rng_key(1), x)
    assert jax.tree.map(jnp.shape, variables["params"]["conv"]) == jax.tree.map(
        jnp.shape, conv_variables["params"]
    )
    expected = blur_pool2d(jax.nn.relu(Conv2d(5).apply({"params": variables["params"]["conv"]}, x)))
    np.testing.assert_allclose(jax.jit(module.apply)(variables, x), expected, rtol=1e-5, atol=1e-6)
    assert module.apply(variables, x).shape == (2, 5, 5, 5)


def test_reflect_padding_needs_a_long_enough_input():
    with pytest.raises(ShapeError, match="BlurPool.*reflect"):
        BlurPool(filter_size=5).apply({}, np.zeros((1, 2, 8, 1), np.float32))
    assert blur_pool2d(np.zeros((1, 2, 8, 1), np.float32), 5, pad_mode="zeros").shape == (
        1,
        1,
        4,
        1,
    )


def circular_conv(x, w):
    padded = pad(x, w.shape[0] // 2, "circular")
    numbers = ("NHWC", "HWIO", "NHWC")
    return lax.conv_general_dilated(
        padded, w, (1, 1), "VALID", dimension_numbers=numbers, precision=HIGHEST
    )


def test_circular_stride_one_convolution_is_shift_equivariant():
    x, w = normal(4, 2, 9, 8, 3), normal(5, 3, 3, 3, 4)
    conv = jax.jit(circular_conv)
    y = conv(x, w)
    for shift in [(1, 0), (0, 1), (2, 3), (-4, 5)]:
        np.testing.assert_allclose(
            conv(jnp.roll(x, shift, (1, 2)), w), jnp.roll(y, shift, (1, 2)), rtol=1e-5, atol=1e-5
        )


def shift_deviation(pool, x):
    """Mean over examples and axes of min_delta ||pool(shift x) - shift_delta pool(x)||^2,
    relative to the two outputs' variances (0: equivariant; about 1: unrelated outputs)."""
    a = pool(x)
    deviations = []
    for axis in (1, 2):
        b = pool(jnp.roll(x, 1, axis))
        spread = jnp.sum((a - a.mean((1, 2, 3), keepdims=True)) ** 2, (1, 2, 3)) + jnp.sum(
            (b - b.mean((1, 2, 3), keepdims=True)) ** 2, (1, 2, 3)
        )
        errors = [jnp.sum((b - jnp.roll(a, delta, axis)) ** 2, (1, 2, 3)) for delta in (-1, 0, 1)]
        deviations.append(jnp.min(jnp.stack(errors), 0) / spread)
    return float(jnp.mean(jnp.stack(deviations)))


def test_blur_pooling_reduces_the_shift_deviation_of_strided_max_pooling():
    x = normal(6, 8, 16, 16, 4)
    strided_max = jax.jit(lambda x: max_pool2d(x, 2, 2))
    # Circular padding on both steps keeps the output periodic, as the shifted input is.

    def max_blur(filter_size):
        module = MaxBlurPool(filter_size=filter_size, pad_mode="circular")
        return jax.jit(lambda x: module.apply({}, pad(x, ((0, 1), (0, 1)), "circular")))

    plain = shift_deviation(strided_max, x)
    assert plain > 0.2  # strided max pooling does not commute with a one-pixel shift
    assert shift_deviation(max_blur(1), x) == pytest.approx(plain)  # no blur, no gain
    blurred = [shift_deviation(max_blur(size), x) for size in (3, 5)]
    assert blurred[0] < 0.75 * plain and blurred[1] < blurred[0]
    # An even shift is a whole output pixel: strided pooling is equivariant to those.
    np.testing.assert_array_equal(strided_max(jnp.roll(x, 2, 1)), jnp.roll(strided_max(x), 1, 1))
