"""Inception family (GoogLeNet, GoogLeNet 2014, BN-Inception, Inception v3): structure only.

Shapes, parameter trees and call counts come from `jax.eval_shape` traces, so nothing here
compiles a network; numerical agreement with torchvision is in `test_parity_inception.py`.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import models
from cnnjax.analysis import count_macs, count_params
from cnnjax.errors import ConfigError, ShapeError
from cnnjax.layers import make_conv, max_pool2d
from cnnjax.layers.norm import local_response_norm
from cnnjax.models.googlenet import (
    BN_INCEPTION_MODULES,
    BN_INCEPTION_STAGES,
    GOOGLENET_MODULES,
    imagenet_to_unit_range,
)

# torchvision 0.29: sum(p.numel() for p in googlenet(aux_logits=...).parameters()), likewise
# inception_v3. Published: GoogLeNet 6.6M (no aux), Inception v3 27.2M.
TORCHVISION_PARAMS = {
    ("googlenet", True): 13_004_888,
    ("googlenet", False): 6_624_904,
    ("inception_v3", True): 27_161_264,
    ("inception_v3", False): 23_834_568,
}


def conv_params(k, c_in, c_out, bn=True):
    """A k x k conv with BN (scale, shift) and no bias, or with a bias and no BN."""
    return k * k * c_in * c_out + 2 * c_out if bn else k * k * c_in * c_out + c_out


def dense_params(n_in, n_out):
    return n_in * n_out + n_out


def googlenet_params(bn, wide_kernel, aux, classes=1000):
    """Stem 7x7/64, 1x1/64, 3x3/192; nine modules of Table 1; aux: 1x1/128, FC 2048-1024-C."""
    conv = functools.partial(conv_params, bn=bn)
    total = conv(7, 3, 64) + conv(1, 64, 64) + conv(3, 64, 192)
    c = 192
    for name, (n1, r3, n3, r5, n5, proj) in GOOGLENET_MODULES.items():
        total += conv(1, c, n1) + conv(1, c, r3) + conv(3, r3, n3) + conv(1, c, r5)
        total += conv(wide_kernel, r5, n5) + conv(1, c, proj)
        c = n1 + n3 + n5 + proj
        if aux and name in ("4a", "4d"):
            total += conv(1, c, 128) + dense_params(128 * 16, 1024) + dense_params(1024, classes)
    return total + dense_params(c, classes)


def bn_inception_params(classes=1000):
    total = conv_params(7, 3, 64) + conv_params(1, 64, 64) + conv_params(3, 64, 192)
    c = 192
    for n1, r3, n3, rd, nd, _, proj, _ in BN_INCEPTION_MODULES.values():
        total += conv_params(1, c, n1) if n1 else 0
        total += conv_params(1, c, r3) + conv_params(3, r3, n3)
        total += conv_params(1, c, rd) + conv_params(3, rd, nd) + conv_params(3, nd, nd)
        total += conv_params(1, c, proj) if proj else 0
        c = n1 + n3 + nd + (proj or c)
    return total + dense_params(c, classes)


def abstract_init(model, size, train=False):
    x = jnp.zeros((1, size, size, 3))
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    return jax.eval_shape(lambda: model.init(rngs, x, train=train))


def abstract_apply(model, variables, size, train=False):
    """`(logits, features)` shapes of one forward pass of a batch of 2."""
    x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    kwargs = {"mutable": ["batch_stats"], "rngs": {"dropout": jax.random.key(1)}} if train else {}
    out = jax.eval_shape(lambda v, x: model.apply(v, x, train=train, **kwargs), variables, x)
    return out[0] if train else out


@pytest.mark.parametrize(("name", "aux"), list(TORCHVISION_PARAMS))
def test_parameter_counts_equal_torchvision_and_hand_counts(name, aux):
    variables = abstract_init(models.create_model(name, aux_logits=aux), 299)
    assert count_params(variables["params"]) == TORCHVISION_PARAMS[(name, aux)]
    if name == "googlenet":
        assert TORCHVISION_PARAMS[(name, aux)] == googlenet_params(True, 3, aux)
    if aux:
        assert models.model_info(name).params == TORCHVISION_PARAMS[(name, aux)]


def test_googlenet_2014_and_bn_inception_hand_counts():
    assert models.model_info("googlenet_2014").params == googlenet_params(False, 5, True)
    main = abstract_init(models.create_model("googlenet_2014", aux_logits=False), 224)
    # Table 1 of the paper lists about 6.8M (rounded per layer, biases left out): 7.0M here.
    assert count_params(main["params"]) == googlenet_params(False, 5, False) == 6_998_552
    assert models.model_info("bn_inception").params == bn_inception_params() == 11_285_224


def test_macs_match_published_costs():
    # torchvision's model cards: 1.50 and 5.71 GFLOPS (multiply-adds) at 224 and 299 input.
    assert models.model_info("googlenet").macs == pytest.approx(1.50e9, rel=0.01)
    assert models.model_info("inception_v3").macs == pytest.approx(5.71e9, rel=0.01)
    # Table 1 of the GoogLeNet paper sums to about 1.5G operations.
    assert models.model_info("googlenet_2014").macs == pytest.approx(1.5e9, rel=0.06)


EXPECTED_FEATURES = {
    "googlenet": (
        224,
        {"stem": (28, 192), "stage1": (28, 480), "stage2": (14, 832), "stage3": (7, 1024)},
    ),
    "googlenet_2014": (
        224,
        {"stem": (28, 192), "stage1": (28, 480), "stage2": (14, 832), "stage3": (7, 1024)},
    ),
    "bn_inception": (
        224,
        {"stem": (28, 192), "stage1": (28, 320), "stage2": (14, 608), "stage3": (7, 1024)},
    ),
    "inception_v3": (
        299,
        {"stem": (35, 192), "stage1": (35, 288), "stage2": (17, 768), "stage3": (8, 2048)},
    ),
}


@pytest.mark.parametrize("name", list(EXPECTED_FEATURES))
def test_intermediates_and_aux_logits_only_in_training(name):
    size, expected = EXPECTED_FEATURES[name]
    model = models.create_model(name, num_classes=10)
    eval_vars = abstract_init(model, size)
    # The parameter tree is the same whichever mode initializes it (aux heads included).
    train_vars = abstract_init(model, size, train=True)
    assert jax.tree.map(lambda a: a.shape, train_vars) == jax.tree.map(lambda a: a.shape, eval_vars)
    logits, features = abstract_apply(model, eval_vars, size)
    assert logits.shape == (2, 10)
    assert {k: (v.shape[1], v.shape[3]) for k, v in features.items() if k != "pre_logits"} == (
        expected
    )
    assert features["pre_logits"].shape == (2, expected["stage3"][1])
    _, train_features = abstract_apply(model, eval_vars, size, train=True)
    aux_names = {
        "googlenet": ["aux1", "aux2"],
        "googlenet_2014": ["aux1", "aux2"],
        "inception_v3": ["aux"],
    }.get(name, [])
    assert sorted(set(train_features) - set(features)) == aux_names
    for aux in aux_names:
        assert train_features[aux].shape == (2, 10)


def test_bn_inception_module_widths_follow_the_branch_counts():
    params = abstract_init(models.create_model("bn_inception"), 224)["params"]
    widths = []
    for names in BN_INCEPTION_STAGES:
        for name in names:
            widths.append(
                sum(
                    params[f"inception{name}"][b]["conv"]["kernel"].shape[-1]
                    for b in ("branch1x1", "branch3x3", "double3x3_2", "pool_proj")
                    if b in params[f"inception{name}"]
                )
            )
    # Pass-through pool branches (3c, 4e) add their input channels: 320 and 608.
    assert widths == [256, 320, 576 - 320, 576, 576, 608, 608, 1056 - 608, 1024, 1024]


def test_bn_inception_reductions_handle_odd_grids():
    # 112x112 input: 4e reduces a 7x7 grid; its padded pool keeps pace with the stride-2 convs.
    model = models.create_model("bn_inception")
    logits, features = abstract_apply(model, abstract_init(model, 112), 112)
    assert features["stage2"].shape[1:3] == (7, 7) and features["stage3"].shape[1:3] == (4, 4)


def test_injected_activation_follows_every_conv():
    calls = []

    def act(x):
        calls.append(x.shape)
        return nn.relu(x)

    for name, size, n_convs in (("googlenet", 96, 3 + 9 * 6), ("inception_v3", 75, 94)):
        model = models.create_model(name, act=act)
        variables = abstract_init(model, size)
        calls.clear()
        abstract_apply(model, variables, size)
        assert len(calls) == n_convs
        norms = jax.tree.leaves(variables["batch_stats"])
        assert len(norms) == 2 * (n_convs + 2)  # mean and variance; 2 BNs in the aux heads


def test_injected_pool_is_used_for_every_max_pool():
    calls = []

    def pool(x, **kwargs):
        calls.append(kwargs)
        return max_pool2d(x, **kwargs)

    model = models.create_model("googlenet", pool=pool)
    variables = abstract_init(model, 96)
    calls.clear()
    abstract_apply(model, variables, 96)
    big = [c for c in calls if c["strides"] == 2]
    assert [c["window"] for c in big] == [3, 3, 3, 2] and all(c["ceil_mode"] for c in big)
    assert len(calls) == 4 + 9  # one 3x3/1 pool per Inception module
    model = models.create_model("inception_v3", pool=pool)
    variables = abstract_init(model, 75)
    calls.clear()
    abstract_apply(model, variables, 75)
    assert calls == [{"window": 3, "strides": 2}] * 4  # stem (2), Mixed_6a, Mixed_7a


def test_injected_conv_and_no_norm():
    separable = models.create_model("googlenet", conv=make_conv("separable"), aux_logits=False)
    params = abstract_init(separable, 64)["params"]
    conv = params["inception3a"]["branch2"]["conv"]
    assert conv["depthwise"]["kernel"].shape == (3, 3, 1, 96)
    assert conv["pointwise"]["kernel"].shape == (1, 1, 96, 128)
    assert count_params(params) < TORCHVISION_PARAMS[("googlenet", False)]
    plain = abstract_init(models.create_model("inception_v3", norm=None), 75)
    assert "batch_stats" not in plain
    assert "bias" in plain["params"]["Mixed_7c"]["branch3x3_2a"]["conv"]


def test_googlenet_2014_has_lrn_and_5x5_branches():
    variables = abstract_init(models.create_model("googlenet_2014"), 224)
    assert "batch_stats" not in variables
    kernel = variables["params"]["inception5b"]["branch3"]["conv"]["kernel"]
    assert kernel.shape == (5, 5, 48, 128)
    # Caffe's LRN (alpha divided by the window, as here): size 5, alpha 1e-4, beta 0.75, k 1.
    stem_norm = models.model_info("googlenet_2014").constructor.keywords["stem_norm"]
    assert stem_norm.func is local_response_norm
    assert stem_norm.keywords == {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 1.0}
    calls = []
    model = models.create_model("googlenet_2014", stem_norm=lambda x: calls.append(x.shape) or x)
    abstract_apply(model, variables, 224)
    assert calls == [(2, 56, 56, 64), (2, 56, 56, 192)]  # after pool1 and after conv3


def test_transform_input_maps_imagenet_normalisation_to_unit_range():
    pixels = jax.random.uniform(jax.random.key(0), (2, 5, 5, 3))
    mean, std = jnp.array([0.485, 0.456, 0.406]), jnp.array([0.229, 0.224, 0.225])
    out = imagenet_to_unit_range((pixels - mean) / std)
    np.testing.assert_allclose(out, 2 * pixels - 1, atol=1e-5)


@pytest.mark.parametrize("name", ["googlenet", "inception_v3"])
def test_aux_heads_cost_nothing_in_evaluation(name):
    info = models.model_info(name)
    model = models.create_model(name, aux_logits=False)
    x = jax.ShapeDtypeStruct((1, *info.input_shape), jnp.float32)
    variables = abstract_init(model, info.input_shape[0])
    assert count_macs(lambda v, x: model.apply(v, x), variables, x) == info.macs


def test_config_and_shape_errors():
    with pytest.raises(ConfigError, match="wide_kernel must be a positive odd int.*got 4"):
        abstract_init(models.create_model("googlenet", wide_kernel=4), 64)
    rows = dict(BN_INCEPTION_MODULES, **{"3a": (64, 64, 64, 64, 96, "mean", 32, 1)})
    with pytest.raises(ConfigError, match="unknown BN-Inception pool 'mean'.*avg, max"):
        abstract_init(models.create_model("bn_inception", modules=rows), 64)
    with pytest.raises(ConfigError, match="lack \\['5b'\\]"):
        rows = {k: v for k, v in BN_INCEPTION_MODULES.items() if k != "5b"}
        abstract_init(models.create_model("bn_inception", modules=rows), 64)
    with pytest.raises(ShapeError, match="Mixed_7a"):  # below torchvision's 75x75 minimum
        abstract_init(models.create_model("inception_v3"), 70)
    # The auxiliary head needs the 17x17 grid of a 299x299 input when it runs (training).
    abstract_init(models.create_model("inception_v3"), 107)
    with pytest.raises(ShapeError, match="AuxLogits"):
        abstract_init(models.create_model("inception_v3"), 107, train=True)
