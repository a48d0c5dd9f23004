import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax.analysis.variance_shift import noise_variance
from cnnjax.errors import ConfigError
from cnnjax.layers.components import resolve_component, resolve_components
from cnnjax.layers.noise import DROPOUT_KINDS, gaussian_dropout, make_dropout, uniform_dropout
from cnnjax.layers.pooling import max_pool2d


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
    key = jax.random.PRNGKey(1)
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
    for field, name, match in [("pool", "mx", "did you mean 'max'"), ("act", "rellu", "relu"),
                               ("pool", "max_blur", "filter size"), ("norm", "group", "batch"),
                               ("conv", "x", "component field")]:  # fmt: skip
        with pytest.raises(ConfigError, match=match):
            resolve_component(field, name)
