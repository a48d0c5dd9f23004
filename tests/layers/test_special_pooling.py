"""Stochastic, attention and bilinear pooling against numpy references."""

import itertools

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from cnnjax.errors import ConfigError, ShapeError
from cnnjax.layers.pooling import avg_pool2d, global_avg_pool
from cnnjax.layers.special_pooling import (
    AttentionPool2d,
    BilinearPool,
    GlobalAttentionPool,
    StochasticPool2d,
    bilinear_pool,
    stochastic_pool2d,
)
from tests.layers.helpers import rng_key


def normal(seed, *shape):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def relu_input(seed, *shape):
    """Post-ReLU activations: about half zeros, so some small windows are all zero."""
    return np.maximum(normal(seed, *shape), 0)


def numpy_windows(x, window, strides, pads, fill=0.0):
    """`{(i, j): (N, k_h k_w, C) values}` of every window, padding filled with `fill`."""
    (kh, kw), (sh, sw) = window, strides
    padded = np.pad(x, ((0, 0), *pads, (0, 0)), constant_values=fill)
    oh = (padded.shape[1] - kh) // sh + 1
    ow = (padded.shape[2] - kw) // sw + 1
    return {
        (i, j): padded[:, i * sh : i * sh + kh, j * sw : j * sw + kw].reshape(
            x.shape[0], -1, x.shape[3]
        )
        for i, j in itertools.product(range(oh), range(ow))
    }, (oh, ow)


def numpy_stochastic_eval(x, window, strides, pads):
    windows, (oh, ow) = numpy_windows(x.astype(np.float64), window, strides, pads)
    out = np.zeros((x.shape[0], oh, ow, x.shape[3]))
    for (i, j), a in windows.items():
        total = a.sum(axis=1)
        out[:, i, j] = np.where(total > 0, (a * a).sum(axis=1) / np.where(total > 0, total, 1), 0)
    return out


@settings(max_examples=20, deadline=None)
@given(
    kh=st.integers(1, 3),
    kw=st.integers(1, 3),
    sh=st.integers(1, 3),
    sw=st.integers(1, 3),
    pad=st.integers(0, 1),
    h=st.integers(3, 7),
    w=st.integers(3, 7),
)
def test_stochastic_pool_eval_is_probability_weighted_average(kh, kw, sh, sw, pad, h, w):
    x = relu_input(0, 2, h, w, 3)
    pads = ((pad if kh > 1 else 0,) * 2, (pad if kw > 1 else 0,) * 2)
    got = jax.jit(lambda x: stochastic_pool2d(x, (kh, kw), (sh, sw), padding=pads))(x)
    np.testing.assert_allclose(
        got, numpy_stochastic_eval(x, (kh, kw), (sh, sw), pads), rtol=1e-5, atol=1e-6
    )


def test_stochastic_pool_train_samples_window_values_with_their_probabilities():
    x = relu_input(1, 2, 6, 6, 4)
    x[0, :2, :2, 0] = 0  # an all-zero window gives 0
    sample = jax.jit(lambda x, key: stochastic_pool2d(x, 2, key=key, train=True))
    key = rng_key(0)
    y = np.asarray(sample(x, key))
    np.testing.assert_array_equal(y, sample(x, key))  # deterministic for a fixed key
    assert not np.array_equal(y, sample(x, rng_key(1)))
    windows, _ = numpy_windows(x, (2, 2), (2, 2), ((0, 0), (0, 0)))
    for (i, j), values in windows.items():
        assert np.all(np.any(values == y[:, i, j][:, None, :], axis=1))
    assert y[0, 0, 0, 0] == 0
    # Empirical frequencies over 4000 independent windows approach a_i / sum a.
    window = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    tiled = np.tile(window[None, :, :, None], (4000, 1, 1, 1))
    draws = np.asarray(sample(tiled, rng_key(2))).ravel()
    frequencies = [np.mean(draws == v) for v in (1.0, 2.0, 3.0, 4.0)]
    np.testing.assert_allclose(frequencies, [0.1, 0.2, 0.3, 0.4], atol=0.03)


def test_stochastic_pool_gradients_are_finite_on_zero_windows():
    x = relu_input(2, 1, 4, 4, 2)
    x[0, :2, :2] = 0
    for train in (False, True):

        def total(x, train=train):
            return jnp.sum(stochastic_pool2d(x, 2, key=rng_key(3), train=train))

        assert np.all(np.isfinite(jax.grad(total)(x)))


def test_stochastic_pool_module_uses_the_dropout_rng():
    x = relu_input(3, 2, 6, 6, 3)
    module = StochasticPool2d(window=3)
    assert module.init(rng_key(0), x, deterministic=True) == {}
    expected = stochastic_pool2d(x, 3)
    np.testing.assert_allclose(module.apply({}, x, deterministic=True), expected, rtol=1e-6)
    evaluated = StochasticPool2d(window=3, deterministic=True).apply({}, x)
    np.testing.assert_allclose(evaluated, expected, rtol=1e-6)
    y = module.apply({}, x, deterministic=False, rngs={"dropout": rng_key(4)})
    windows, _ = numpy_windows(x, (3, 3), (3, 3), ((0, 0), (0, 0)))
    for (i, j), values in windows.items():
        assert np.all(np.any(values == np.asarray(y)[:, i, j][:, None, :], axis=1))
    with pytest.raises(ConfigError, match="needs a PRNG key"):
        stochastic_pool2d(x, 2, train=True)


def softmax(z, axis):
    e = np.exp(z - np.max(z, axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@pytest.mark.parametrize("window, strides, padding", [(2, None, 0), (3, 2, 1), ((2, 3), 1, 0)])
def test_attention_pool_is_softmax_weighted_window_average(window, strides, padding):
    x = normal(4, 2, 7, 6, 5)
    module = AttentionPool2d(window, strides, padding)
    variables = module.init(rng_key(0), x)
    assert jax.tree.map(np.shape, variables) == {"params": {"score": (5,)}}
    # The zero init is average pooling over the real pixels.
    expected = avg_pool2d(x, window, strides, padding, count_include_pad=False)
    np.testing.assert_allclose(module.apply(variables, x), expected, rtol=1e-5, atol=1e-6)
    score = normal(5, 5)
    got = jax.jit(module.apply)({"params": {"score": score}}, x)
    window = (window, window) if isinstance(window, int) else window
    strides = window if strides is None else (strides, strides)
    pads = ((padding, padding),) * 2
    values, (oh, ow) = numpy_windows(x.astype(np.float64), window, strides, pads)
    scores, _ = numpy_windows((x @ score)[..., None], window, strides, pads, -np.inf)
    assert got.shape == (2, oh, ow, 5)
    for (i, j), a in values.items():
        weights = softmax(scores[i, j], axis=1)
        np.testing.assert_allclose(got[:, i, j], (weights * a).sum(axis=1), rtol=1e-5, atol=1e-6)


def test_global_attention_pool():
    x = normal(6, 2, 4, 5, 3)
    module = GlobalAttentionPool()
    variables = module.init(rng_key(0), x)
    np.testing.assert_allclose(module.apply(variables, x), global_avg_pool(x), rtol=1e-5)
    score = normal(7, 3)
    weights = softmax((x @ score).reshape(2, -1), axis=1)
    expected = np.einsum("nl,nlc->nc", weights, x.reshape(2, -1, 3))
    got = jax.jit(module.apply)({"params": {"score": score}}, x)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def numpy_bilinear(x, y, eps=1e-10):
    n, h, w = x.shape[:3]
    b = np.einsum("nhwc,nhwd->ncd", x.astype(np.float64), y.astype(np.float64)) / (h * w)
    z = (np.sign(b) * np.sqrt(np.abs(b) + eps)).reshape(n, -1)
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), eps)


def test_bilinear_pool_matches_numpy_and_has_unit_norm():
    x, y = normal(8, 2, 4, 5, 3), normal(9, 2, 4, 5, 6)
    for a, b in [(x, x), (x, y)]:
        got = np.asarray(jax.jit(bilinear_pool)(a, b))
        assert got.shape == (2, a.shape[-1] * b.shape[-1])
        np.testing.assert_allclose(got, numpy_bilinear(a, b), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(BilinearPool().apply({}, x), bilinear_pool(x, x), rtol=1e-6)
    # Row-major flattening: feature c1 * C2 + c2 comes from channels (c1, c2).
    single = np.zeros((1, 1, 1, 2), np.float32)
    single[..., 1] = 1.0
    third = 1 / 3**0.5
    np.testing.assert_allclose(
        bilinear_pool(single, np.ones((1, 1, 1, 3), np.float32)),
        [[0, 0, 0, third, third, third]],
        rtol=1e-5,
    )
    zeros = np.zeros((1, 2, 2, 3), np.float32)
    np.testing.assert_array_equal(bilinear_pool(zeros), 0)
    assert np.all(np.isfinite(jax.grad(lambda x: jnp.sum(bilinear_pool(x) ** 2))(zeros)))
    with pytest.raises(ShapeError, match="bilinear_pool"):
        bilinear_pool(x, y[:, :3])
