"""ConvBlock: every order string, its variables, and that the pieces really run in that order."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cnnjax.errors import ConfigError
from cnnjax.layers import make_conv
from cnnjax.layers.blocks import ORDER_TOKENS, ConvBlock, parse_order
from cnnjax.layers.norm import LayerNorm, TorchBatchNorm
from tests.layers.helpers import rng_key

# Every non-empty arrangement of distinct tokens that contains "conv": 1 + 3*2 + 3*6 + 24 = 49.
ALL_ORDERS = [
    "-".join(order)
    for r in range(4)
    for extra in itertools.combinations(("bn", "act", "drop"), r)
    for order in itertools.permutations(("conv", *extra))
]
NAMED_ORDERS = ["conv-bn-act", "conv-bn-act-drop", "conv-drop-bn-act", "conv-act-bn", "bn-act-conv"]
C_IN, FEATURES = 3, 4


def normal(seed, *shape):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def randomize(variables, seed=1):
    """Random params (BN gains and shifts too, so a misplaced BN cannot hide); stats kept."""
    rng = np.random.default_rng(seed)
    params = jax.tree.map(
        lambda v: rng.normal(size=v.shape).astype(np.float32), variables["params"]
    )
    return {**variables, "params": params}


def expected_shapes(order):
    tokens = order.split("-")
    conv = tokens.index("conv")
    params = {"conv": {"kernel": (3, 3, C_IN, FEATURES)}}
    if tokens[conv + 1 : conv + 2] != ["bn"]:
        params["conv"]["bias"] = (FEATURES,)
    if "bn" not in tokens:
        return {"params": params}
    channels = C_IN if tokens.index("bn") < conv else FEATURES
    params["bn"] = {"scale": (channels,), "bias": (channels,)}
    return {"params": params, "batch_stats": {"bn": {"mean": (channels,), "var": (channels,)}}}


def test_all_orders_parse():
    assert len(set(ALL_ORDERS)) == 49
    for order in ALL_ORDERS:
        assert parse_order(order) == tuple(order.split("-"))
    assert set(ORDER_TOKENS) == {"conv", "bn", "act", "drop"}


@pytest.mark.parametrize("order", ALL_ORDERS)
def test_every_order_has_the_right_params_and_batch_stats(order):
    block = ConvBlock(FEATURES, order=order, dropout_rate=0.5 if "drop" in order else 0.0)
    x = jnp.zeros((2, 5, 5, C_IN))
    shapes = jax.eval_shape(lambda: block.init(rng_key(0), x, False))
    assert jax.tree.map(lambda s: s.shape, shapes) == expected_shapes(order)


def test_every_order_runs_under_jit_in_train_and_eval():
    """All 49 orders in one jitted function (one compilation instead of 49)."""
    x = normal(0, 2, 5, 5, C_IN)
    blocks = {
        o: ConvBlock(FEATURES, order=o, dropout_rate=0.5 if "drop" in o else 0.0)
        for o in ALL_ORDERS
    }
    variables = {o: b.init(rng_key(0), x, False) for o, b in blocks.items()}

    @jax.jit
    def run(variables, x, key):
        out = {}
        for order, block in blocks.items():
            v = variables[order]
            train, updates = block.apply(v, x, True, rngs={"dropout": key}, mutable=["batch_stats"])
            evaluation = block.apply(v, x, False, rngs={"dropout": key})
            out[order] = train, updates, evaluation
        return out

    first = run(variables, x, rng_key(1))
    second = run(variables, x, rng_key(2))
    for order in ALL_ORDERS:
        (train, updates, evaluation), (train2, _, evaluation2) = first[order], second[order]
        assert train.shape == evaluation.shape == (2, 5, 5, FEATURES), order
        assert np.all(np.isfinite(train)) and np.all(np.isfinite(evaluation)), order
        np.testing.assert_array_equal(evaluation, evaluation2, err_msg=order)  # deterministic
        assert np.array_equal(train, train2) == ("drop" not in order), order
        if "bn" in order:
            stats = variables[order]["batch_stats"]["bn"]
            assert not np.allclose(updates["batch_stats"]["bn"]["mean"], stats["mean"]), order
        else:
            assert updates == {}, order


def numpy_reference(order, variables, x, train):
    """The block composed by hand from lax's conv and numpy, dropout being the identity."""
    p, stats = variables["params"], variables.get("batch_stats", {})
    x = np.asarray(x, np.float64)
    for token in order.split("-"):
        if token == "conv":
            x = lax.conv_general_dilated(
                x.astype(np.float32),
                p["conv"]["kernel"],
                (1, 1),
                "SAME",
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                precision=lax.Precision.HIGHEST,
            )
            x = np.asarray(x, np.float64) + np.asarray(p["conv"].get("bias", 0.0))
        elif token == "bn":
            if train:
                mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
            else:
                mean, var = stats["bn"]["mean"], stats["bn"]["var"]
            x = (x - mean) / np.sqrt(var + 1e-5) * p["bn"]["scale"] + p["bn"]["bias"]
        elif token == "act":
            x = np.maximum(x, 0.0)
    return x


@pytest.mark.parametrize("order", NAMED_ORDERS)
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_block_applies_the_pieces_in_order(order, train):
    x = normal(0, 4, 5, 5, C_IN)
    block = ConvBlock(FEATURES, order=order)
    variables = randomize(block.init(rng_key(0), x, False))
    if "bn" in order:  # non-trivial running statistics for eval
        channels = variables["batch_stats"]["bn"]["mean"].shape
        variables["batch_stats"] = {
            "bn": {"mean": normal(3, *channels), "var": np.abs(normal(4, *channels)) + 0.5}
        }
    got = block.apply(variables, x, train, mutable=["batch_stats"])[0]
    np.testing.assert_allclose(
        got, numpy_reference(order, variables, x, train), rtol=1e-4, atol=1e-4
    )


def test_order_is_visible_in_the_output_statistics():
    x = normal(0, 8, 6, 6, C_IN)

    def train_output(order, **kwargs):
        block = ConvBlock(FEATURES, order=order, **kwargs)
        variables = block.init(rng_key(0), x, False)
        rngs = {"dropout": rng_key(1)}
        return np.asarray(block.apply(variables, x, True, rngs=rngs, mutable=["batch_stats"])[0])

    # BN last: every channel has zero mean and unit variance over the batch.
    y = train_output("conv-act-bn")
    np.testing.assert_allclose(y.mean((0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.var((0, 1, 2)), 1.0, rtol=1e-3)
    # ReLU last after BN: non-negative, and about half of the zero-mean BN outputs are cut.
    y = train_output("conv-bn-act")
    assert y.min() == 0.0 and 0.3 < (y == 0).mean() < 0.7
    # Dropout after ReLU zeroes a further half of the survivors.
    y_drop = train_output("conv-bn-act-drop", dropout_rate=0.5)
    assert 0.6 < (y_drop == 0).mean() < 0.85 and y_drop.max() > y.max()


def test_channel_dropout_drops_whole_feature_maps():
    x = normal(0, 16, 5, 5, C_IN)
    block = ConvBlock(FEATURES, order="conv-drop", dropout_rate=0.5, channel_dropout=True)
    variables = block.init(rng_key(0), x, False)
    clean = np.asarray(block.apply(variables, x, False))
    y = np.asarray(block.apply(variables, x, True, rngs={"dropout": rng_key(1)}))
    kept = np.abs(y).sum((1, 2)) > 0  # (N, C)
    assert 0.2 < kept.mean() < 0.8
    np.testing.assert_allclose(
        y, np.where(kept[:, None, None, :], 2 * clean, 0.0), rtol=1e-5, atol=1e-6
    )


def test_drop_token_with_rate_zero_is_identity():
    x = normal(0, 2, 5, 5, C_IN)
    with_drop = ConvBlock(FEATURES, order="conv-bn-act-drop")
    variables = with_drop.init(rng_key(0), x, False)
    got = with_drop.apply(variables, x, True, mutable=["batch_stats"])[0]  # no dropout rng needed
    plain = ConvBlock(FEATURES).apply(variables, x, True, mutable=["batch_stats"])[0]
    np.testing.assert_array_equal(got, plain)


@pytest.mark.parametrize(
    "order, message",
    [
        ("bn-act", r"order 'bn-act' has no 'conv' \(tokens: conv, bn, act, drop\)"),
        ("conv-bn-conv", "repeats 'conv'; each of conv, bn, act, drop may appear once"),
        ("conv-bn-relu", r"unknown token 'relu' \(valid choices: act, bn, conv, drop\)"),
        ("conv-bn-actt", "did you mean 'act'"),
        ("conv_bn_act", "in ConvBlock order 'conv_bn_act': unknown token 'conv_bn_act'"),
        ("", "unknown token ''"),
        (["conv", "bn"], "must be a string"),
    ],
)
def test_invalid_orders_raise_config_error(order, message):
    with pytest.raises(ConfigError, match=message):
        parse_order(order)
    with pytest.raises(ConfigError, match=message):
        ConvBlock(FEATURES, order=order).init(rng_key(0), jnp.zeros((1, 4, 4, 2)), False)


def test_bad_dropout_rates_raise_config_error():
    x = jnp.zeros((1, 4, 4, 2))
    with pytest.raises(ConfigError, match=r"dropout_rate must be in \[0, 1\], got 1.5"):
        ConvBlock(FEATURES, order="conv-drop", dropout_rate=1.5).init(rng_key(0), x, False)
    with pytest.raises(ConfigError, match="dropout_rate=0.3 has no effect.*no 'drop' token"):
        ConvBlock(FEATURES, dropout_rate=0.3).init(rng_key(0), x, False)


def test_conv_bias_norm_and_conv_kind_are_configurable():
    x = jnp.zeros((2, 6, 6, C_IN))
    key = rng_key(0)

    def param_shapes(**kwargs):
        variables = jax.eval_shape(lambda: ConvBlock(FEATURES, **kwargs).init(key, x, False))
        return jax.tree.map(lambda s: s.shape, variables)

    assert "bias" in param_shapes(conv_bias=True)["params"]["conv"]
    assert "bias" not in param_shapes(order="conv-act", conv_bias=False)["params"]["conv"]
    # LayerNorm takes no use_running_average and keeps no batch statistics.
    assert param_shapes(norm=LayerNorm).keys() == {"params"}
    assert param_shapes(norm=TorchBatchNorm)["batch_stats"]["bn"]["var"] == (FEATURES,)
    separable = param_shapes(conv=make_conv("separable"))["params"]["conv"]
    assert separable["depthwise"].keys() == {"kernel"} and "bias" not in separable["pointwise"]
    strided = jax.eval_shape(
        lambda: ConvBlock(FEATURES, kernel_size=5, strides=2).init_with_output(key, x, False)[0]
    )
    assert strided.shape == (2, 3, 3, FEATURES)
