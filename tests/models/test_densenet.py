"""DenseNets: parameter counts (torchvision, paper, hand count), shapes, options, errors."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import models
from cnnjax.errors import ConfigError
from cnnjax.layers import Conv2d
from cnnjax.models.densenet import DENSENET_SPECS, DenseNet
from tests.models.helpers import abstract_apply, compiled, n_params

# torchvision.models.densenetXXX(weights=None), 1000 classes (also checked live in the parity test).
TORCHVISION_PARAMS = {121: 7_978_856, 161: 28_681_000, 169: 14_149_480, 201: 20_013_928}

CIFAR = dict(stem="cifar", num_classes=10)
BC_100 = dict(growth_rate=12, block_config=(16, 16, 16), num_init_features=24, **CIFAR)


def densenet_params(
    growth_rate,
    block_config,
    num_init_features,
    bn_size=4,
    compression=0.5,
    stem="imagenet",
    num_classes=1000,
):
    """Counted by hand from Sec. 3: stem conv (+ BN for ImageNet); per layer BN (2 per channel)
    + 1x1 conv to `bn_size k` + BN + 3x3 conv to `k`; transitions BN + 1x1 conv; final BN; dense
    head. Convs have no bias."""
    k, c = growth_rate, num_init_features
    total = 7 * 7 * 3 * c + 2 * c if stem == "imagenet" else 3 * 3 * 3 * c
    for block, layers in enumerate(block_config):
        for _ in range(layers):
            if bn_size:
                total += 2 * c + c * bn_size * k + 2 * bn_size * k + 9 * bn_size * k * k
            else:
                total += 2 * c + 9 * c * k
            c += k
        if block < len(block_config) - 1:
            out = math.floor(compression * c)
            total += 2 * c + c * out
            c = out
    return total + 2 * c + c * num_classes + num_classes


@pytest.mark.parametrize(
    "depth",
    [d if d == 121 else pytest.param(d, marks=pytest.mark.slow) for d in sorted(DENSENET_SPECS)],
)
def test_imagenet_densenet_parameter_counts_equal_torchvision_and_hand_count(depth):
    k, blocks, init = DENSENET_SPECS[depth]
    assert models.model_info(f"densenet{depth}").params == TORCHVISION_PARAMS[depth]
    assert densenet_params(k, blocks, init) == TORCHVISION_PARAMS[depth]
    # L counts the convs and the classifier: stem + 2 per layer + transitions + head
    assert 1 + 2 * sum(blocks) + len(blocks) - 1 + 1 == depth


def test_densenet121_macs_match_torchvision():
    # torchvision's model table: 2.83 GFLOPS (multiply-adds) at 224x224.
    assert round(models.model_info("densenet121").macs / 1e9, 2) == 2.83


def test_densenet_bc_100_has_the_papers_0_8m_parameters():
    params = models.model_info("densenet_bc_100").params
    assert params == densenet_params(**BC_100) == 769_162
    assert 0.765e6 <= params <= 0.80e6 and round(params / 1e6, 1) == 0.8
    assert 2 * 3 * 16 + 4 == 100  # L: stem, 2 convs per layer, 2 transitions, classifier


@pytest.mark.parametrize(
    "kwargs, published_m",
    [
        (dict(growth_rate=12, block_config=(12,) * 3, num_init_features=16), 1.0),  # L=40
        (dict(growth_rate=12, block_config=(32,) * 3, num_init_features=16), 7.0),  # L=100
    ],
)
def test_basic_cifar_densenets_match_table_2(kwargs, published_m):
    # Basic DenseNet (no bottleneck, no compression), 16 stem filters.
    kwargs = dict(bn_size=0, compression=1.0, **kwargs, **CIFAR)
    expected = densenet_params(**kwargs)
    assert round(expected / 1e6, 1) == published_m
    if published_m == 1.0:  # tracing the deeper one is too slow for what it adds
        (_, _), variables = abstract_apply(DenseNet(**kwargs), (1, 32, 32, 3))
        assert n_params(variables["params"]) == expected


def test_hand_count_reproduces_the_large_bc_models_of_table_2():
    bc = dict(compression=0.5, **CIFAR)
    assert round(densenet_params(24, (41,) * 3, 48, **bc) / 1e6, 1) == 15.3  # L=250, k=24
    assert round(densenet_params(40, (31,) * 3, 80, **bc) / 1e6, 1) == 25.6  # L=190, k=40


def test_imagenet_intermediates_have_the_block_shapes():
    (logits, inter), _ = abstract_apply(
        models.create_model("densenet121", num_classes=5), (2, 64, 64, 3)
    )
    assert logits.shape == (2, 5)
    assert inter["stem"].shape == (2, 16, 16, 64)
    # block i: its input channels + layers * 32; transitions halve channels and maps
    expected = [(16, 64 + 6 * 32), (8, 128 + 12 * 32), (4, 256 + 24 * 32), (2, 512 + 16 * 32)]
    for i, (size, channels) in enumerate(expected):
        assert inter[f"stage{i + 1}"].shape == (2, size, size, channels)
    assert inter["pre_logits"].shape == (2, 1024)


def test_cifar_intermediates_and_linear_concatenation():
    model = models.create_model("densenet_bc_100")
    (_, inter), _ = abstract_apply(model, (2, 32, 32, 3))
    assert inter["stem"].shape == (2, 32, 32, 24)
    assert inter["stage1"].shape == (2, 32, 32, 24 + 16 * 12)  # 216
    assert inter["stage2"].shape == (2, 16, 16, 108 + 16 * 12)  # 300
    assert inter["stage3"].shape == (2, 8, 8, 150 + 16 * 12)  # 342
    assert inter["pre_logits"].shape == (2, 342)
    # one in-place write per layer into one buffer per block, no concatenation: the program
    # grows linearly with depth
    variables = models.model_info("densenet_bc_100").abstract_variables()
    jaxpr = jax.make_jaxpr(model.apply)(variables, jax.ShapeDtypeStruct((1, 32, 32, 3), "float32"))
    ops = [e.primitive.name for e in jaxpr.jaxpr.eqns]
    assert ops.count("dynamic_update_slice") == 48 and "concatenate" not in ops


def test_injected_layers_are_used():
    calls = []

    def counting_relu(x):
        calls.append(x.shape)
        return nn.relu(x)

    model = models.create_model(
        "densenet121",
        act=counting_relu,
        pool=lambda x: x,  # no stem pooling: maps twice as large
        transition_pool=lambda x: x,  # no downsampling between blocks
        conv=functools.partial(Conv2d, use_bias=True),
    )
    (_, inter), variables = abstract_apply(model, (1, 64, 64, 3))
    # stem + 2 per dense layer + 1 per transition + final; init and apply each trace once
    assert len(calls) == 2 * (1 + 2 * 58 + 3 + 1)
    assert inter["stem"].shape == (1, 32, 32, 64)
    assert inter["stage4"].shape == (1, 32, 32, 1024)
    # a bias per conv output channel: stem, 58 x (128 + 32), transitions 128, 256, 512
    extra = 64 + 58 * (128 + 32) + 128 + 256 + 512
    assert n_params(variables["params"]) == TORCHVISION_PARAMS[121] + extra


def test_dropout_only_in_training():
    model = DenseNet(
        growth_rate=4, block_config=(2, 2), num_init_features=8, dropout_rate=0.5, **CIFAR
    )
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    variables = compiled(model.init, jax.random.key(1), x)
    evals = [compiled(model.apply, variables, x)[0] for _ in range(2)]
    np.testing.assert_array_equal(evals[0], evals[1])

    def train(v, key):
        return model.apply(v, x, train=True, rngs={"dropout": key}, mutable=["batch_stats"])[0]

    (a, _), (b, _) = (compiled(train, variables, jax.random.key(s)) for s in (2, 3))
    assert not np.allclose(a, b)
    stage = compiled(lambda v: model.apply(v, x, train=False)[1]["stage1"], variables)
    assert stage.shape == (2, 16, 16, 16)


def test_memory_efficient_densenet_is_the_same_function_and_saves_only_the_feature_maps():
    from cnnjax.analysis.memory import saved_residuals

    # With dropout: the recomputation must draw the same masks.
    kwargs = dict(
        growth_rate=8, block_config=(4, 4), num_init_features=16, **CIFAR, dropout_rate=0.2
    )
    plain, efficient = DenseNet(**kwargs), DenseNet(memory_efficient=True, **kwargs)
    x = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
    labels = jnp.arange(4)
    variables = compiled(plain.init, jax.random.key(1), x)
    assert jax.tree.structure(variables) == jax.tree.structure(
        jax.eval_shape(efficient.init, jax.random.key(1), x)
    )

    def loss(model):
        def fn(params, x):
            (logits, _), updates = model.apply(
                {"params": params, "batch_stats": variables["batch_stats"]},
                x,
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": jax.random.key(2)},
            )
            return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), labels]), updates

        return fn

    (want, want_stats), want_grads = compiled(
        jax.value_and_grad(loss(plain), has_aux=True), variables["params"], x
    )
    (got, got_stats), got_grads = compiled(
        jax.value_and_grad(loss(efficient), has_aux=True), variables["params"], x
    )
    np.testing.assert_allclose(got, want, rtol=1e-6)
    for a, b in zip(
        jax.tree.leaves((got_grads, got_stats)), jax.tree.leaves((want_grads, want_stats))
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

    def saved_bytes(model):
        residuals = saved_residuals(lambda p, x: loss(model)(p, x)[0], variables["params"], x)
        return sum(r.nbytes for r in residuals if r.kind == "activation")

    saved = [saved_bytes(plain), saved_bytes(efficient)]
    # Each layer's saved input (16..40 channels) and BN/ReLU outputs against one 8-channel map
    # per layer: well under half.
    assert saved[1] < 0.4 * saved[0], saved


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"stem": "tiny"}, "unknown DenseNet stem 'tiny'.*valid choices: cifar, imagenet"),
        ({"growth_rate": 0}, "growth_rate must be a positive integer, got 0"),
        ({"block_config": (6, -1)}, r"block_config\[1\] must be a positive integer, got -1"),
        ({"block_config": ()}, "at least one dense block"),
        ({"compression": 0.0}, r"compression must be in \(0, 1\], got 0.0"),
        ({"compression": 1.5}, r"compression must be in \(0, 1\], got 1.5"),
        ({"bn_size": -1}, "bn_size must be an integer >= 0, got -1"),
        ({"dropout_rate": 1.0}, r"dropout_rate must be in \[0, 1\), got 1.0"),
    ],
)
def test_bad_config_is_a_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DenseNet(**kwargs).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def test_registered_names():
    assert models.list_models("densenet*") == [
        "densenet121",
        "densenet161",
        "densenet169",
        "densenet201",
        "densenet_bc_100",
    ]
    assert models.model_info("densenet_bc_100").input_shape == (32, 32, 3)
    assert models.model_info("densenet_bc_100").num_classes == 10
    assert models.model_info("densenet161").input_shape == (224, 224, 3)
