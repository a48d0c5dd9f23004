"""Dropout layers: Bernoulli, channel and noise dropout (and the component names)."""

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from cnnjax.analysis.variance_shift import noise_variance
from cnnjax.errors import ConfigError, ShapeError
from cnnjax.layers.components import resolve_component, resolve_components
from cnnjax.layers.dropout import (
    DROPOUT_KINDS,
    ChannelDropout,
    Dropout,
    Dropout2d,
    channel_dropout,
    dropout,
    gaussian_dropout,
    make_dropout,
    uniform_dropout,
)
from cnnjax.layers.pooling import max_pool2d
from tests.layers.helpers import rng_key


def normal(seed, *shape, loc=0.0, scale=1.0):
    return np.random.default_rng(seed).normal(loc, scale, size=shape).astype(np.float32)


# --- Dropout ---------------------------------------------------------------------------------


def test_dropout_is_flax_dropout_with_the_dropout_rng():
    x = np.ones((4, 8, 8, 3), np.float32)
    y = Dropout(0.5).apply({}, x, deterministic=False, rngs={"dropout": rng_key(0)})
    assert set(np.unique(y)) == {0.0, 2.0}
    np.testing.assert_array_equal(Dropout(0.5).apply({}, x, deterministic=True), x)
    with pytest.raises(Exception, match="dropout"):
        Dropout(0.5).apply({}, x, deterministic=False)  # no rng given


@settings(max_examples=12, deadline=None)  # a compilation per shape
@given(
    shape=st.tuples(st.integers(1, 4), st.integers(1, 5), st.integers(1, 5), st.integers(1, 6)),
    rate=st.sampled_from([0.1, 0.5, 0.75]),
    seed=st.integers(0, 2**16),
)
def test_channel_dropout_drops_whole_channels_per_example(shape, rate, seed):
    x = normal(seed, *shape) + 10.0  # nonzero everywhere
    # A traced rate: one compilation per shape, not per (shape, rate).
    y = np.asarray(jax.jit(channel_dropout)(rng_key(seed), x, rate))
    ratio = y / x
    assert y.shape == x.shape and y.dtype == x.dtype
    # One value per (example, channel): the mask is (N, 1, 1, C).
    np.testing.assert_allclose(ratio, np.broadcast_to(ratio[:, :1, :1, :], shape), rtol=1e-6)
    assert np.all(np.isclose(ratio, 0.0) | np.isclose(ratio, 1 / (1 - rate), rtol=1e-6))


@pytest.mark.parametrize("drop", [dropout, channel_dropout], ids=["dropout", "channel"])
def test_dropout_preserves_expectation(drop):
    rate = 0.3
    x = np.ones((4096, 2, 2, 8), np.float32)
    y = np.asarray(jax.jit(drop, static_argnums=2)(rng_key(0), x, rate))
    # The mean over 4096*8 independent masks has standard error sqrt(p/(1-p)/32768) = 0.004.
    np.testing.assert_allclose(y.mean(), 1.0, atol=0.02)
    np.testing.assert_allclose((y == 0).mean(), rate, atol=0.02)


def test_channel_dropout_module():
    x = normal(0, 3, 4, 4, 5)
    module = ChannelDropout(0.5)
    key = {"dropout": rng_key(1)}
    np.testing.assert_array_equal(module.apply({}, x, deterministic=True), x)
    np.testing.assert_array_equal(ChannelDropout(0.0).apply({}, x, deterministic=False), x)
    np.testing.assert_array_equal(
        ChannelDropout(1.0).apply({}, x, deterministic=False, rngs=key), 0
    )
    y = np.asarray(jax.jit(lambda x: module.apply({}, x, deterministic=False, rngs=key))(x))
    kept = (y != 0).all(axis=(1, 2))
    assert kept.any() and not kept.all()
    np.testing.assert_allclose(y, np.where(kept[:, None, None, :], 2 * x, 0.0), rtol=1e-6)
    assert module.init({}, x, deterministic=True) == {}  # no parameters
    assert Dropout2d is ChannelDropout
    # Sequence inputs (N, L, C) drop whole channels too, as PyTorch's Dropout1d.
    seq = np.ones((64, 7, 4), np.float32)
    y = np.asarray(channel_dropout(rng_key(0), seq, 0.5))
    assert np.all((y == y[:, :1, :]).all(1))


def test_dropout_bad_arguments():
    x = np.ones((2, 3, 3, 4), np.float32)
    with pytest.raises(ConfigError, match=r"dropout rate must be in \[0, 1\].*got 1.5"):
        channel_dropout(rng_key(0), x, 1.5)
    with pytest.raises(ConfigError, match="got -0.1"):
        ChannelDropout(-0.1).apply({}, x, deterministic=True)
    with pytest.raises(ShapeError, match=r"\(N, \*spatial, C\).*\(2, 4\)"):
        channel_dropout(rng_key(0), x[:, 0, 0], 0.5)


# --- Noise dropout and make_dropout ----------------------------------------------------------


@pytest.mark.parametrize("kind", DROPOUT_KINDS)
@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_every_dropout_kind_has_mean_one_and_the_documented_noise_variance(kind, rate):
    x = jnp.ones((64, 16, 16, 32))
    module = make_dropout(kind, rate)
    y = module.apply({}, x, False, rngs={"dropout": jax.random.PRNGKey(0)})
    if kind == "channel":  # one draw per (example, channel): fewer samples
        y = y[:, 0, 0, :]
    assert abs(float(y.mean()) - 1.0) < 0.02
    np.testing.assert_allclose(float(y.var()), noise_variance(kind, rate), rtol=0.06)
    assert module.apply({}, x, True) is x or np.array_equal(module.apply({}, x, True), x)


def test_noise_dropouts_keep_dtype_and_reject_bad_rates():
    x = jnp.ones((4, 3), jnp.bfloat16)
    key = rng_key(1)
    assert gaussian_dropout(key, x, 0.3).dtype == jnp.bfloat16
    assert uniform_dropout(key, x, 0.3).dtype == jnp.bfloat16
    with pytest.raises(ConfigError, match="rate < 1"):
        gaussian_dropout(key, x, 1.0)
    with pytest.raises(ConfigError, match="dropout kind"):
        make_dropout("bernouli", 0.1)
    with pytest.raises(ConfigError, match="0, 1"):
        make_dropout("uniform", 1.5)


def test_components_resolve_names_and_reject_unknown_ones():
    assert resolve_component("pool", "max") is max_pool2d
    blur = resolve_component("pool", "max_blur:3:replicate")
    assert blur.keywords == {"filter_size": 3, "pad_mode": "replicate"}
    x = jnp.arange(2 * 8 * 8 * 3, dtype=jnp.float32).reshape(2, 8, 8, 3)
    # Filter size 1 is plain subsampling of the dense max: the same as a 2x2/2 max pool.
    np.testing.assert_array_equal(resolve_component("pool", "max_blur:1")(x), max_pool2d(x))
    assert resolve_components({"pool": "avg", "width": 4, "act": "gelu"})["width"] == 4
    assert resolve_component("norm", "none") is None
    for field, name, match in [
        ("pool", "mx", "did you mean 'max'"),
        ("act", "rellu", "relu"),
        ("pool", "max_blur", "filter size"),
        ("norm", "group", "batch"),
        ("conv", "x", "component field"),
    ]:
        with pytest.raises(ConfigError, match=match):
            resolve_component(field, name)
