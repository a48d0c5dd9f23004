"""Every Linen module of the layer library initializes, runs under `jit` and differentiates."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cnnjax.layers as L
from tests.layers.helpers import rng_key
from tests.layers.test_conv import numpy_conv

# (module, input shape, keyword arguments of apply); train-mode modules get rngs and mutability.
MODULES = {
    "Conv1d": (L.Conv1d(6, 3), (2, 10, 4), {}),
    "Conv2d": (L.Conv2d(6, 3, padding_mode="reflect"), (2, 8, 8, 4), {}),
    "ConvTranspose2d": (L.ConvTranspose2d(6, 3, strides=2), (2, 5, 5, 4), {}),
    "DepthwiseConv2d": (L.DepthwiseConv2d(8, 3), (2, 8, 8, 4), {}),
    "SeparableConv2d": (L.SeparableConv2d(6, 3), (2, 8, 8, 4), {}),
    "SpatiallySeparableConv2d": (L.SpatiallySeparableConv2d(6, 5), (2, 8, 8, 4), {}),
    "MaxPool2d": (L.MaxPool2d(), (2, 8, 8, 4), {}),
    "MinPool2d": (L.MinPool2d(), (2, 8, 8, 4), {}),
    "AvgPool2d": (L.AvgPool2d(), (2, 8, 8, 4), {}),
    "LPPool2d": (L.LPPool2d(2.0), (2, 8, 8, 4), {}),
    "GlobalAvgPool": (L.GlobalAvgPool(), (2, 8, 8, 4), {}),
    "GlobalMaxPool": (L.GlobalMaxPool(), (2, 8, 8, 4), {}),
    "AdaptiveAvgPool2d": (L.AdaptiveAvgPool2d((3, 3)), (2, 8, 8, 4), {}),
    "AdaptiveMaxPool2d": (L.AdaptiveMaxPool2d((3, 3)), (2, 8, 8, 4), {}),
    "SpatialPyramidPool": (L.SpatialPyramidPool(), (2, 8, 8, 4), {}),
    "BlurPool": (L.BlurPool(), (2, 8, 8, 4), {}),
    "MaxBlurPool": (L.MaxBlurPool(), (2, 8, 8, 4), {}),
    "BlurAvgPool": (L.BlurAvgPool(), (2, 8, 8, 4), {}),
    "ConvBlurPool": (L.ConvBlurPool(6), (2, 8, 8, 4), {}),
    "StochasticPool2d": (L.StochasticPool2d(), (2, 8, 8, 4), {"deterministic": False}),
    "AttentionPool2d": (L.AttentionPool2d(), (2, 8, 8, 4), {}),
    "GlobalAttentionPool": (L.GlobalAttentionPool(), (2, 8, 8, 4), {}),
    "BilinearPool": (L.BilinearPool(), (2, 8, 8, 4), {}),
    "BatchNorm": (L.BatchNorm(), (2, 8, 8, 4), {"use_running_average": False}),
    "TorchBatchNorm": (L.TorchBatchNorm(), (2, 8, 8, 4), {"use_running_average": False}),
    "LayerNorm": (L.LayerNorm(), (2, 8, 8, 4), {}),
    "Dropout": (L.Dropout(0.5), (2, 8, 8, 4), {"deterministic": False}),
    "ChannelDropout": (L.ChannelDropout(0.5), (2, 8, 8, 4), {"deterministic": False}),
    "NoiseDropout": (L.NoiseDropout(0.3, "uniform"), (2, 8, 8, 4), {"deterministic": False}),
    "LocalResponseNorm": (L.LocalResponseNorm(), (2, 8, 8, 4), {}),
    "ConvBlock": (
        L.ConvBlock(6, order="conv-bn-act-drop", dropout_rate=0.1),
        (2, 8, 8, 4),
        {"train": True},
    ),
}


def test_the_table_covers_every_exported_module():
    exported = {
        name
        for name in L.__all__
        if isinstance(getattr(L, name), type | functools.partial)
        and name[0].isupper()
        and name not in ("CONV_KINDS", "PAD_MODES", "ORDER_TOKENS", "DROPOUT_KINDS")
    }
    assert exported - {"Dropout2d"} <= set(MODULES), exported - set(MODULES)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_runs_under_jit_and_has_finite_gradients(name):
    module, shape, kwargs = MODULES[name]
    x = jnp.asarray(np.abs(np.random.default_rng(0).normal(size=shape)), jnp.float32)
    rngs = {"params": rng_key(0), "dropout": rng_key(1)}
    variables = module.init(rngs, x, **kwargs)

    @jax.jit
    def loss(params, inputs):
        out, _ = module.apply(
            {**variables, "params": params},
            inputs,
            **kwargs,
            rngs={"dropout": rng_key(2)},
            mutable=["batch_stats"],
        )
        return jnp.sum(out**2)

    params = variables.get("params", {})
    value, grads = jax.value_and_grad(loss, argnums=(0, 1))(params, x)
    assert np.isfinite(value)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


def test_depthwise_conv_matches_numpy_grouped_loop():
    x = np.random.default_rng(0).normal(size=(2, 7, 6, 3)).astype(np.float32)
    module = L.DepthwiseConv2d(6, 3, strides=2, padding=1, precision=jax.lax.Precision.HIGHEST)
    variables = module.init(rng_key(0), x)
    p = variables["params"]
    expected = numpy_conv(
        x, np.asarray(p["kernel"]), np.asarray(p["bias"]), 2, ((1, 1), (1, 1)), 1, groups=3
    )
    np.testing.assert_allclose(module.apply(variables, x), expected, rtol=1e-5, atol=1e-5)


def test_separable_conv_is_depthwise_then_pointwise():
    x = np.random.default_rng(1).normal(size=(2, 6, 6, 3)).astype(np.float32)
    module = L.SeparableConv2d(5, 3, padding="valid", precision=jax.lax.Precision.HIGHEST)
    variables = module.init(rng_key(0), x)
    p = variables["params"]
    depthwise = numpy_conv(
        x, np.asarray(p["depthwise"]["kernel"]), 0.0, 1, ((0, 0), (0, 0)), 1, groups=3
    )
    expected = depthwise @ np.asarray(p["pointwise"]["kernel"])[0, 0] + p["pointwise"]["bias"]
    np.testing.assert_allclose(module.apply(variables, x), expected, rtol=1e-5, atol=1e-5)
