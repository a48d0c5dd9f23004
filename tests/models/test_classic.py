"""Classic networks: LeNet, AlexNet/ZFNet, VGG, NiN, Highway. Structure, counts, injected layers.

Shapes and parameter counts of the large models come from `jax.eval_shape` (nothing allocated);
forward passes use small inputs or `hidden` widths.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import models
from cnnjax.analysis.costs import count_params
from cnnjax.errors import ConfigError
from cnnjax.layers import BatchNorm, Conv2d, avg_pool2d, make_conv, max_pool2d
from cnnjax.layers.norm import local_response_norm
from cnnjax.models.highway import HighwayLayer
from cnnjax.models.lenet import C3_TABLE, c3_connection_mask, scaled_tanh

# XLA compiles the "rbg" generator several times faster than threefry: init dominates test time.
KEY = jax.random.key(0, impl="rbg")


def abstract(model, shape, **kwargs):
    """(variables, (logits, intermediates)) shapes of one init and apply on zeros of `shape`."""
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(KEY, x, **kwargs), x)
    outputs = jax.eval_shape(lambda v, x: model.apply(v, x, **kwargs), variables, x)
    return variables, outputs


def init(model, x, **kwargs):
    """Jitted `model.init` (eager dispatch compiles every op separately: far slower)."""
    return jax.jit(lambda x: model.init(KEY, x, **kwargs))(x)


def apply(model, variables, x, **kwargs):
    """Jitted `model.apply`."""
    return jax.jit(lambda v, x: model.apply(v, x, **kwargs))(variables, x)


def n_params(model, shape):
    return count_params(abstract(model, shape)[0]["params"])


def normal(shape, seed=0, scale=1.0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * scale, jnp.float32)


# ----------------------------------------------------------------------------------------------
# LeNet

# Table I of LeCun et al. 1998 as printed: rows are S2 maps, columns C3 maps.
PAPER_TABLE_I = (
    "X...XXX..XXXX.XX",
    "XX...XXX..XXXX.X",
    "XXX...XXX..X.XXX",
    ".XXX..XXXX..X.XX",
    "..XXX..XXXX.XX.X",
    "...XXX..XXXX.XXX",
)


def test_c3_connection_map_is_table_one_of_the_paper():
    expected = np.array([[c == "X" for c in row] for row in PAPER_TABLE_I])
    np.testing.assert_array_equal(c3_connection_mask(), expected)
    assert c3_connection_mask().sum() == 60 and len(C3_TABLE) == 16


def test_lenet5_1998_has_the_papers_1516_c3_parameters():
    variables, _ = abstract(models.create_model("lenet5_1998"), (1, 32, 32, 1))
    c3 = variables["params"]["c3"]
    assert c3["kernel"].shape == (5, 5, 60) and c3["bias"].shape == (16,)
    assert count_params(c3) == 1516
    assert models.model_info("lenet5_1998").params == 61_706 - 2416 + 1516
    assert models.model_info("lenet5").params == models.model_info("lenet5_classic").params


def test_partial_c3_is_a_full_conv_with_zeros_outside_the_map():
    """The scattered kernel equals a dense LeNet-5 whose C3 kernel is zero off Table I."""
    x = normal((2, 32, 32, 1), 1)
    partial = models.create_model("lenet5_1998")
    variables = init(partial, x)
    rows, cols = np.nonzero(c3_connection_mask())
    compact = variables["params"]["c3"]["kernel"]
    full = jnp.zeros((5, 5, 6, 16)).at[:, :, rows, cols].set(compact)
    dense_params = {**variables["params"], "c3": {**variables["params"]["c3"], "kernel": full}}
    dense = models.create_model("lenet5_classic", act=scaled_tanh)
    ours, feats = apply(partial, variables, x)
    ref, ref_feats = apply(dense, {"params": dense_params}, x)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)

    def loss(kernel):
        params = {**variables["params"], "c3": {**variables["params"]["c3"], "kernel": kernel}}
        return partial.apply({"params": params}, x)[0].sum()

    grads = jax.jit(jax.grad(loss))(compact)  # every one of the 60 connections is trained
    # Training-style apply with a mutable collection uses the same scattered kernel.
    (train_logits, _), _ = apply(partial, variables, x, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(train_logits, ours, rtol=1e-6)
    assert grads.shape == (5, 5, 60) and bool(jnp.all(jnp.isfinite(grads)))
    assert bool(jnp.all(jnp.abs(grads).sum(axis=(0, 1)) > 0))
    assert feats["stage2"].shape == ref_feats["stage2"].shape == (2, 5, 5, 16)


def test_c3_map_applies_to_an_injected_separable_conv():
    model = models.create_model("lenet5_1998", conv=make_conv("separable"))
    variables, (logits, _) = abstract(model, (1, 32, 32, 1))
    assert variables["params"]["c3"]["pointwise"]["kernel"].shape == (1, 1, 60)
    assert variables["params"]["c3"]["depthwise"]["kernel"].shape == (5, 5, 1, 6)
    assert logits.shape == (1, 10)


def test_unknown_c3_connections_is_a_config_error():
    model = models.create_model("lenet5", c3_connections="lecun98")
    with pytest.raises(ConfigError, match="'lecun98'.*full, lecun1998"):
        init(model, jnp.zeros((1, 32, 32, 1)))


def test_scaled_tanh_maps_plus_minus_one_to_itself_and_is_lenet5_1998s_activation():
    np.testing.assert_allclose(scaled_tanh(jnp.array([-1.0, 0.0, 1.0])), [-1, 0, 1], atol=2e-4)
    keywords = models.model_info("lenet5_1998").constructor.keywords
    assert keywords["act"] is scaled_tanh and keywords["pool"] is avg_pool2d


def test_lenet300_100():
    model = models.create_model("lenet300_100")
    assert n_params(model, (1, 28, 28, 1)) == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
    x = normal((3, 28, 28, 1))
    logits, feats = apply(model, init(model, x), x)
    assert logits.shape == (3, 10)
    assert feats["stem"].shape == (3, 300) and feats["stage1"].shape == (3, 100)
    np.testing.assert_array_equal(feats["pre_logits"], feats["stage1"])
    assert bool(jnp.all(feats["stem"] >= 0))
    with pytest.raises(ConfigError, match="hidden widths"):
        init(models.create_model("lenet300_100", hidden=()), jnp.zeros((1, 28, 28, 1)))


def test_lenet5_caffe_is_han_et_als_431k_network():
    model = models.create_model("lenet5_caffe")
    x = normal((2, 28, 28, 1))
    variables = init(model, x)
    weights = {k: v["kernel"].size for k, v in variables["params"].items()}
    # Han et al. 2015 Table 2 / 2016 Table 3: conv1 0.5K, conv2 25K, ip1 400K, ip2 5K weights.
    assert weights == {"conv1": 500, "conv2": 25_000, "ip1": 400_000, "ip2": 5_000}
    assert n_params(model, (1, 28, 28, 1)) == 431_080
    logits, feats = apply(model, variables, x)
    assert logits.shape == (2, 10) and feats["stage1"].shape == (2, 4, 4, 50)
    # Caffe's example has no activation after the convolutions: pooled maps can be negative.
    assert float(feats["stem"].min()) < 0 and float(feats["pre_logits"].min()) >= 0
    narrow = models.create_model("lenet5_caffe", features=(8, 16), hidden=100)
    assert n_params(narrow, (1, 28, 28, 1)) == 208 + 3216 + 25_700 + 1010
    with pytest.raises(ConfigError, match="two positive ints"):
        init(models.create_model("lenet5_caffe", features=(8,)), x)


# ----------------------------------------------------------------------------------------------
# AlexNet and ZFNet


def alexnet_params(widths, kernels, groups, fc_in=6 * 6 * 256, classes=1000):
    total, c_in = 0, 3
    for width, k, g in zip(widths, kernels, groups):
        total += k * k * (c_in // g) * width + width
        c_in = width
    return total + fc_in * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * classes + classes


@pytest.mark.parametrize(
    "name, kwargs, expected",
    [
        ("alexnet", {}, 61_100_840),  # torchvision's published count
        ("alexnet_lrn", {}, 62_378_344),
        ("alexnet_lrn", {"groups": 2}, 60_965_224),  # the Caffe reference model's count
        ("zfnet", {}, 62_357_608),
    ],
)
def test_alexnet_parameter_counts(name, kwargs, expected):
    g = kwargs.get("groups", 1)
    by_hand = {
        "alexnet": alexnet_params((64, 192, 384, 256, 256), (11, 5, 3, 3, 3), (1,) * 5),
        "alexnet_lrn": alexnet_params((96, 256, 384, 384, 256), (11, 5, 3, 3, 3), (1, g, 1, g, g)),
        "zfnet": alexnet_params((96, 256, 384, 384, 256), (7, 5, 3, 3, 3), (1,) * 5),
    }[name]
    info = models.model_info(name)
    assert n_params(models.create_model(name, **kwargs), (1, *info.input_shape)) == expected
    assert by_hand == expected


@pytest.mark.parametrize(
    "name, maps",
    [
        ("alexnet", ((27, 64), (13, 192), (6, 256))),
        ("alexnet_lrn", ((27, 96), (13, 256), (6, 256))),
        ("zfnet", ((55, 96), (13, 256), (6, 256))),  # Zeiler & Fergus Fig. 3
    ],
)
def test_alexnet_stage_shapes_at_the_default_input(name, maps):
    info = models.model_info(name)
    _, (logits, feats) = abstract(models.create_model(name), (2, *info.input_shape))
    for key, (size, channels) in zip(("stem", "stage1", "stage2"), maps):
        assert feats[key].shape == (2, size, size, channels), key
    assert feats["pre_logits"].shape == (2, 4096) and logits.shape == (2, 1000)


def test_alexnet_grouped_convs_are_conv2_conv4_conv5():
    variables, _ = abstract(models.create_model("alexnet_lrn", groups=2), (1, 227, 227, 3))
    shapes = {k: v["kernel"].shape for k, v in variables["params"].items() if "conv" in k}
    assert shapes == {
        "conv1": (11, 11, 3, 96),
        "conv2": (5, 5, 48, 256),
        "conv3": (3, 3, 256, 384),
        "conv4": (3, 3, 192, 384),
        "conv5": (3, 3, 192, 256),
    }


@pytest.mark.parametrize("name, lrn_first", [("alexnet_lrn", True), ("zfnet", False)])
def test_first_block_is_conv_relu_lrn_pool_in_the_papers_order(name, lrn_first):
    model = models.create_model(name, hidden=16)
    x = normal((2, 67, 67, 3), 2, 30.0)  # large inputs so that the LRN divides noticeably
    variables = init(model, x)
    _, feats = apply(model, variables, x)
    conv1 = variables["params"]["conv1"]
    padding = ((0, 0), (0, 0)) if name == "alexnet_lrn" else ((1, 1), (1, 1))
    stride = 4 if name == "alexnet_lrn" else 2
    y = jax.lax.conv_general_dilated(
        x, conv1["kernel"], (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    y = nn.relu(y + conv1["bias"])
    lrn = functools.partial(local_response_norm, size=5, alpha=5e-4, beta=0.75, k=2.0)
    pool = functools.partial(max_pool2d, window=3, strides=2, ceil_mode=name == "zfnet")
    expected = pool(lrn(y)) if lrn_first else lrn(pool(y))
    np.testing.assert_allclose(feats["stem"], expected, rtol=1e-5, atol=1e-5)
    without = apply(models.create_model(name, hidden=16, norm=None), variables, x)[1]["stem"]
    assert not np.allclose(without, feats["stem"], rtol=1e-3)


def test_alexnet_injected_pool_norm_and_dropout_are_used():
    calls = []

    def counting_pool(x):
        calls.append(x.shape)
        return max_pool2d(x, 3, 2)

    model = models.create_model("alexnet_lrn", hidden=16, pool=counting_pool, norm=BatchNorm)
    x = normal((2, 67, 67, 3), 3)
    variables = init(model, x)
    assert len(calls) == 3 and set(variables["batch_stats"]) == {"norm1", "norm2"}
    evaluate = jax.jit(lambda v, x: model.apply(v, x)[0])
    eval_a, eval_b = evaluate(variables, x), evaluate(variables, x)
    np.testing.assert_array_equal(eval_a, eval_b)
    (train, _), _ = apply(
        model, variables, x, train=True, rngs={"dropout": KEY}, mutable=["batch_stats"]
    )
    assert not np.allclose(train, eval_a)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"variant": "alexnet2012"}, "'alexnet2012'.*krizhevsky2012"), ({"groups": 0}, "groups")],
)
def test_alexnet_bad_config(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        abstract(models.create_model("alexnet", **kwargs), (1, 224, 224, 3))


# ----------------------------------------------------------------------------------------------
# VGG

VGG_PUBLISHED = {  # torchvision's model documentation
    "vgg11": 132_863_336,
    "vgg13": 133_047_848,
    "vgg16": 138_357_544,
    "vgg19": 143_667_240,
    "vgg11_bn": 132_868_840,
    "vgg13_bn": 133_053_736,
    "vgg16_bn": 138_365_992,
    "vgg19_bn": 143_678_248,
}
VGG_WIDTHS = {  # Table 1 of the paper, "M" the max pools
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", *[256] * 3, "M", *[512] * 3, "M", *[512] * 3, "M"],
    19: [64, 64, "M", 128, 128, "M", *[256] * 4, "M", *[512] * 4, "M", *[512] * 4, "M"],
}


def vgg_params(depth, bn, hidden=(4096, 4096), fc_in=512 * 7 * 7, classes=1000):
    total, c_in = 0, 3
    for width in (w for w in VGG_WIDTHS[depth] if w != "M"):
        total += 9 * c_in * width + width + (2 * width if bn else 0)
        c_in = width
    for width in hidden:
        total += fc_in * width + width
        fc_in = width
    return total + fc_in * classes + classes


@pytest.mark.parametrize("name", sorted(VGG_PUBLISHED))
def test_vgg_parameter_counts(name):
    depth, bn = int(name[3:5]), name.endswith("_bn")
    assert n_params(models.create_model(name), (1, 224, 224, 3)) == VGG_PUBLISHED[name]
    assert vgg_params(depth, bn) == VGG_PUBLISHED[name]


def test_vgg_adaptive_pool_accepts_other_input_sizes():
    for size in (64, 100):
        _, (logits, feats) = abstract(models.create_model("vgg11"), (1, size, size, 3))
        assert logits.shape == (1, 1000) and feats["stage5"].shape == (
            1,
            size // 32,
            size // 32,
            512,
        )


def test_vgg16_cifar():
    model = models.create_model("vgg16_cifar")
    assert n_params(model, (1, 32, 32, 3)) == vgg_params(16, True, (), 512, 10) == 14_728_266
    _, (logits, feats) = abstract(model, (2, 32, 32, 3))
    assert logits.shape == (2, 10) and feats["stem"].shape == (2, 32, 32, 64)
    for stage in range(1, 6):
        size = 32 // 2**stage
        assert feats[f"stage{stage}"].shape[1:3] == (size, size)
    assert feats["pre_logits"].shape == (2, 512)
    # Batch statistics move in training only (an eighth of the width keeps the test fast).
    thin = model.clone(width_multiplier=0.125)
    x = normal((2, 32, 32, 3), 4, 2.0) + 1.0
    variables = init(thin, x)
    _, updates = apply(thin, variables, x, train=True, mutable=["batch_stats"])
    assert not np.allclose(updates["batch_stats"]["bn1_1"]["mean"], 0.0)
    assert set(variables["batch_stats"]) == {
        f"bn{b}_{i}" for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)) for i in range(1, n + 1)
    }


def test_vgg_injected_conv_norm_act_and_width():
    model = models.create_model(
        "vgg11_bn", conv=make_conv("separable"), act=nn.gelu, width_multiplier=0.25, hidden=(32,)
    )
    variables, (logits, feats) = abstract(model, (1, 64, 64, 3))
    assert variables["params"]["conv1_1"]["pointwise"]["kernel"].shape == (1, 1, 3, 16)
    assert variables["batch_stats"]["bn5_2"]["mean"].shape == (128,)
    assert feats["pre_logits"].shape == (1, 32)
    calls = {"act": 0, "pool": 0}

    def counting(kind, fn):
        def wrapped(x):
            calls[kind] += 1
            return fn(x)

        return wrapped

    counted = models.create_model(
        "vgg11", act=counting("act", nn.relu), pool=counting("pool", max_pool2d), hidden=(8, 8)
    )
    variables, _ = abstract(counted, (1, 32, 32, 3))
    calls.update(act=0, pool=0)
    jax.eval_shape(lambda v: counted.apply(v, jnp.zeros((1, 32, 32, 3))), variables)
    assert calls == {"act": 8 + 2, "pool": 5}  # 8 convs and 2 hidden dense layers; 5 blocks


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"config": "C"}, "unknown VGG configuration 'C'.*A, B, D, E"),
        ({"width_multiplier": 0}, "> 0"),
    ],
)
def test_vgg_bad_config(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        abstract(models.create_model("vgg11", **kwargs), (1, 64, 64, 3))


# ----------------------------------------------------------------------------------------------
# Network in Network


def test_nin_cifar_parameters_maps_and_global_average_logits():
    model = models.create_model("nin_cifar")
    widths = [
        (3, 192, 5),
        (192, 160, 1),
        (160, 96, 1),
        (96, 192, 5),
        (192, 192, 1),
        (192, 192, 1),
        (192, 192, 3),
        (192, 192, 1),
        (192, 10, 1),
    ]
    assert n_params(model, (1, 32, 32, 3)) == sum(k * k * i * o + o for i, o, k in widths)
    assert models.model_info("nin_cifar").params == 966_986
    _, (_, feats) = abstract(model, (2, 32, 32, 3))
    expected = {"stem": (32, 96), "stage1": (16, 96), "stage2": (8, 192), "stage3": (8, 10)}
    for key, (size, channels) in expected.items():
        assert feats[key].shape == (2, size, size, channels), key
    x = normal((2, 16, 16, 3), 6)  # any size works; 16x16 keeps the test fast
    variables = init(model, x)
    logits, feats = apply(model, variables, x)
    np.testing.assert_array_equal(feats["pre_logits"], feats["stage3"])
    assert bool(jnp.all(feats["stage3"] >= 0))
    np.testing.assert_allclose(logits, feats["stage3"].mean(axis=(1, 2)), rtol=1e-6)
    # The second pool averages (the released definition); ("max", "max") follows the text.
    max_max = apply(model.clone(block_pools=("max", "max")), variables, x)[1]["stage2"]
    assert bool(jnp.all(max_max >= feats["stage2"] - 1e-6)) and not np.allclose(
        max_max, feats["stage2"]
    )
    train, _ = apply(model, variables, x, train=True, rngs={"dropout": KEY})
    assert not np.allclose(train, logits)


def test_nin_imagenet_is_the_released_caffe_network():
    model = models.create_model("nin_imagenet")
    widths = [
        (3, 96, 11),
        (96, 96, 1),
        (96, 96, 1),
        (96, 256, 5),
        (256, 256, 1),
        (256, 256, 1),
        (256, 384, 3),
        (384, 384, 1),
        (384, 384, 1),
        (384, 1024, 3),
        (1024, 1024, 1),
        (1024, 1000, 1),
    ]
    assert n_params(model, (1, 224, 224, 3)) == sum(k * k * i * o + o for i, o, k in widths)
    assert models.model_info("nin_imagenet").params == 7_595_176
    _, (logits, feats) = abstract(model, (2, 224, 224, 3))
    # 224 -> 54 (11x11/4, no padding) -> 27 -> 13 -> 6 (3x3/2 max pools, ceil mode).
    expected = {
        "stem": (54, 96),
        "stage1": (27, 96),
        "stage2": (13, 256),
        "stage3": (6, 384),
        "stage4": (6, 1000),
    }
    for key, (size, channels) in expected.items():
        assert feats[key].shape == (2, size, size, channels), key
    assert logits.shape == (2, 1000)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"block_pools": ("max",)}, "needs 2 entries"),
        ({"block_pools": ("max", "mean")}, "unknown NiN pool kind 'mean'"),
        ({"variant": "imagenet_21k"}, "unknown NiN variant"),
    ],
)
def test_nin_bad_config(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        abstract(models.create_model("nin_cifar", **kwargs), (1, 32, 32, 3))


# ----------------------------------------------------------------------------------------------
# Highway networks


@pytest.mark.parametrize(
    "layer, shape",
    [(functools.partial(Conv2d, kernel_size=3), (2, 8, 8, 5)), (nn.Dense, (4, 7))],
)
def test_highway_layer_formula_carry_and_transform_limits(layer, shape):
    x = normal(shape, 7)
    carry = HighwayLayer(layer, gate_bias=-30.0)
    variables = init(carry, x)
    np.testing.assert_array_equal(variables["params"]["gate_bias"], np.full(shape[-1], -30.0))
    assert "bias" not in variables["params"]["gate"]
    np.testing.assert_allclose(apply(carry, variables, x), x, atol=1e-6)  # T ~ 1e-13: identity
    # A positive bias saturates the gate the other way: y = H(x).
    transform = HighwayLayer(layer, gate_bias=30.0)
    v = {"params": {**variables["params"], "gate_bias": jnp.full(shape[-1], 30.0)}}
    h = nn.relu(layer(features=shape[-1]).apply({"params": v["params"]["transform"]}, x))
    np.testing.assert_allclose(apply(transform, v, x), h, atol=1e-5)
    # In between: y = H T + x (1 - T).
    middle = HighwayLayer(layer, gate_bias=-1.0)
    v = init(middle, x)
    y, state = apply(middle, v, x, mutable=["intermediates"])
    t = jax.nn.sigmoid(
        layer(features=shape[-1], use_bias=False).apply({"params": v["params"]["gate"]}, x) - 1.0
    )
    h = nn.relu(layer(features=shape[-1]).apply({"params": v["params"]["transform"]}, x))
    np.testing.assert_allclose(y, h * t + x * (1 - t), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state["intermediates"]["transform_gate"][0], t, rtol=1e-6)


def test_highway_cifar_gate_bias_init_counts_and_shapes():
    small = models.create_model("highway_cifar", gate_bias=-3.0, stages=((4, 2), (8, 3)))
    params = init(small, normal((1, 8, 8, 3), 8))["params"]
    biases = [v["gate_bias"] for k, v in params.items() if "highway" in k]
    assert len(biases) == 5 and all(bool(jnp.all(b == -3.0)) for b in biases)
    assert models.create_model("highway_cifar").gate_bias == -2.0
    model = models.create_model("highway_cifar")
    variables, (logits, feats) = abstract(model, (2, 32, 32, 3))

    def highway_params(c):
        return 2 * 9 * c * c + 2 * c  # transform conv + bias, gate conv + gate bias

    expected = (9 * 3 * 32 + 32) + (9 * 32 * 64 + 64) + (9 * 64 * 128 + 128)
    expected += 5 * sum(highway_params(c) for c in (32, 64, 128)) + 128 * 10 + 10
    assert count_params(variables["params"]) == expected == 2_032_138
    assert logits.shape == (2, 10) and feats["stem"].shape == (2, 32, 32, 32)
    assert [feats[f"stage{s}"].shape[1:] for s in (1, 2, 3)] == [
        (32, 32, 32),
        (16, 16, 64),
        (8, 8, 128),
    ]
    assert feats["pre_logits"].shape == (2, 128)


def test_highway_deep_stack_with_negative_gate_bias_starts_near_identity():
    """10 highway layers with b_T = -10 barely change the input (the paper's motivation)."""
    model = models.create_model("highway_mlp", highway_layers=10, gate_bias=-10.0)
    x = normal((4, 28, 28, 1), 9)
    variables = init(model, x)
    _, feats = apply(model, variables, x)
    rel = jnp.linalg.norm(feats["stage1"] - feats["stem"]) / jnp.linalg.norm(feats["stem"])
    assert float(rel) < 0.05


def test_highway_mlp_counts_and_injected_conv():
    assert models.model_info("highway_mlp").params == (784 * 50 + 50) + 8 * (2 * 2500 + 100) + 510
    model = models.create_model("highway_cifar", stages=((8, 1),), conv=make_conv("separable"))
    variables, _ = abstract(model, (1, 16, 16, 3))
    assert set(variables["params"]["stage1_highway1"]["gate"]) == {"depthwise", "pointwise"}
    with pytest.raises(ConfigError, match="highway stages"):
        abstract(models.create_model("highway_cifar", stages=((0, 2),)), (1, 32, 32, 3))
