"""ImageNet and CIFAR ResNets, CIFAR plain networks: counts, shapes, options, injected layers."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import models
from cnnjax.errors import ConfigError
from cnnjax.layers import BatchNorm, Conv2d
from cnnjax.models.resnet import RESNET_SPECS, BasicBlock, Bottleneck, ResNet
from cnnjax.models.resnet_cifar import BLOCKS_PER_STAGE, PUBLISHED_PARAMS_M
from tests.models.helpers import abstract_apply, compiled, n_params

# torchvision.models.resnetXX(weights=None), 1000 classes (also checked live in the parity test).
TORCHVISION_PARAMS = {
    18: 11_689_512,
    34: 21_797_672,
    50: 25_557_032,
    101: 44_549_160,
    152: 60_192_808,
}


def imagenet_resnet_params(depth, classes=1000, width=64):
    """Counted by hand from Table 1: 7x7 stem + BN, blocks (convs without bias, BN 2 per
    channel), a 1x1 conv + BN projection wherever the shape changes, dense head."""
    kind, sizes = RESNET_SPECS[depth]
    total = 7 * 7 * 3 * width + 2 * width
    c_in = width
    for stage, blocks in enumerate(sizes):
        planes = width * 2**stage
        c_out = planes if kind == "basic" else 4 * planes
        for _ in range(blocks):
            if kind == "basic":
                total += 9 * c_in * planes + 9 * planes * planes + 4 * planes
            else:
                total += c_in * planes + 9 * planes * planes + planes * c_out
                total += 4 * planes + 2 * c_out
            if c_in != c_out or (stage > 0 and _ == 0):
                total += c_in * c_out + 2 * c_out
            c_in = c_out
    return total + c_in * classes + classes


def init_apply(model, x, **kwargs):
    """Variables and outputs of `model` on `x`."""
    variables = compiled(model.init, jax.random.key(1), x)
    return variables, compiled(functools.partial(model.apply, **kwargs), variables, x)


@pytest.mark.parametrize("depth", sorted(RESNET_SPECS))
def test_imagenet_resnet_parameter_counts_equal_torchvision_and_hand_count(depth):
    assert models.model_info(f"resnet{depth}").params == TORCHVISION_PARAMS[depth]
    assert imagenet_resnet_params(depth) == TORCHVISION_PARAMS[depth]


def test_imagenet_resnet_macs_match_the_published_gflops():
    # torchvision's model table: ResNet-18 1.81, ResNet-50 4.09 GFLOPS (multiply-adds) at 224.
    assert round(models.model_info("resnet18").macs / 1e9, 2) == 1.81
    assert round(models.model_info("resnet50").macs / 1e9, 2) == 4.09


@pytest.mark.parametrize("depth", sorted(BLOCKS_PER_STAGE))
def test_cifar_resnet_and_plain_counts_round_to_the_papers(depth):
    params = models.model_info(f"resnet{depth}").params
    # Table 6 gives two significant figures: 0.27M, 0.46M, 0.66M, 0.85M, 1.7M.
    assert float(f"{params / 1e6:.2g}") == PUBLISHED_PARAMS_M[depth]
    assert models.model_info(f"plain{depth}").params == params  # option A is parameter-free


def test_resnet20_keeps_its_parameter_count_and_names():
    info = models.model_info("resnet20")
    assert info.params == 269_722
    params = info.abstract_variables()["params"]
    assert {"stem_conv", "stem_bn", "stage1_block1", "stage3_block3", "head"} <= set(params)
    assert set(params["stage1_block1"]) == {"conv1", "bn1", "conv2", "bn2"}


@pytest.mark.parametrize(
    "name, channels", [("resnet18", (64, 128, 256, 512)), ("resnet50", (256, 512, 1024, 2048))]
)
def test_imagenet_intermediates_have_the_stage_shapes(name, channels):
    (logits, inter), _ = abstract_apply(models.create_model(name, num_classes=5), (2, 64, 64, 3))
    assert logits.shape == (2, 5)
    assert inter["stem"].shape == (2, 16, 16, 64)
    for i, c in enumerate(channels):
        size = 16 // 2**i
        assert inter[f"stage{i + 1}"].shape == (2, size, size, c)
    assert inter["pre_logits"].shape == (2, channels[-1])


def test_bottleneck_stride_sits_on_the_3x3_unless_stride_in_1x1():
    def conv_outputs(**kwargs):
        model = ResNet(depth=50, width=8, **kwargs)
        x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
        variables = jax.eval_shape(model.init, jax.random.key(0), x)
        _, state = jax.eval_shape(
            lambda v, x: model.apply(v, x, capture_intermediates=True, mutable=["intermediates"]),
            variables,
            x,
        )
        block = state["intermediates"]["stage2_block1"]
        return block["conv1"]["__call__"][0].shape, block["conv2"]["__call__"][0].shape

    assert conv_outputs() == ((1, 16, 16, 16), (1, 8, 8, 16))  # v1.5, torchvision
    assert conv_outputs(stride_in_1x1=True) == ((1, 8, 8, 16), (1, 8, 8, 16))  # paper, v1


def test_zero_init_residual_makes_blocks_identities_and_train_mode_updates_stats():
    x = jax.random.normal(jax.random.key(0), (1, 32, 32, 3))
    model = ResNet(depth=18, width=8, num_classes=3, zero_init_residual=True)
    variables, (_, inter) = init_apply(model, x)
    for name in ("stage1_block1", "stage4_block2"):
        np.testing.assert_array_equal(variables["params"][name]["bn2"]["scale"], 0.0)
        np.testing.assert_array_equal(variables["params"][name]["bn1"]["scale"], 1.0)
    # the stem output is >= 0 (ReLU, max pool), so relu(x + 0) == x through stage 1
    np.testing.assert_array_equal(inter["stage1"], inter["stem"])
    train = functools.partial(model.apply, train=True, mutable=["batch_stats"])
    (logits, _), updates = compiled(train, variables, x * 2 + 1)
    assert logits.shape == (1, 3)
    before = variables["batch_stats"]["stage2_block1"]["proj_bn"]["mean"]
    assert not np.allclose(updates["batch_stats"]["stage2_block1"]["proj_bn"]["mean"], before)
    common = dict(strides=1, shortcut="B", conv=Conv2d, norm=BatchNorm, act=nn.relu)
    for zero in (False, True):
        for block, last, c_out in ((BasicBlock, "bn2", 2), (Bottleneck, "bn3", 8)):
            module = block(features=2, zero_init_residual=zero, **common)
            variables = compiled(functools.partial(module.init, train=False), jax.random.key(1), x)
            scales = {
                k: float(v["scale"].sum()) for k, v in variables["params"].items() if "bn" in k
            }
            assert scales.pop(last) == (0.0 if zero else c_out)
            assert set(scales.values()) == {2.0, c_out}  # the other BNs: ones


def test_plain_network_has_no_shortcuts():
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    resnet = models.create_model("resnet20", width=4, zero_init_residual=True)
    plain = models.create_model("plain20", width=4, zero_init_residual=True)
    variables, (_, res_inter) = init_apply(resnet, x)
    # same variables; with zero-initialized last BNs every plain block outputs relu(0) = 0
    _, plain_inter = jax.jit(plain.apply)(variables, x)
    np.testing.assert_array_equal(res_inter["stage1"], res_inter["stem"])
    assert float(jnp.abs(res_inter["stem"]).max()) > 0
    np.testing.assert_array_equal(plain_inter["stage1"], 0.0)


def test_injected_layers_are_used():
    calls = []

    def counting_relu(x):
        calls.append(x.shape)
        return nn.relu(x)

    (_, inter), variables = abstract_apply(
        models.create_model(
            "resnet18",
            act=counting_relu,
            pool=lambda x: x,  # no stem pooling: maps twice as large
            conv=functools.partial(Conv2d, use_bias=True),
        ),
        (1, 64, 64, 3),
    )
    # stem + 2 per basic block; init and apply each trace once
    assert len(calls) == 2 * (1 + 2 * 8)
    assert inter["stem"].shape == (1, 32, 32, 64)
    # a bias in every conv: stem 64 + blocks + 3 projections
    extra = 64 + sum(2 * 64 * 2**s * 2 for s in range(4)) + 128 + 256 + 512
    assert n_params(variables["params"]) == TORCHVISION_PARAMS[18] + extra

    class NoNorm(nn.Module):
        use_running_average: bool = False

        def __call__(self, x):
            return x

    (_, _), variables = abstract_apply(ResNet(depth=18, norm=NoNorm), (1, 32, 32, 3))
    assert "batch_stats" not in variables
    bn_params = 2 * (64 + 64 * 4 + 128 * 4 + 256 * 4 + 512 * 4 + 128 + 256 + 512)
    assert n_params(variables["params"]) == TORCHVISION_PARAMS[18] - bn_params


def test_shortcut_options_on_imagenet_resnet():
    counts = {"B": models.model_info("resnet18").params}
    for s in ("A", "none"):
        _, variables = abstract_apply(ResNet(depth=18, shortcut=s), (1, 32, 32, 3))
        counts[s] = n_params(variables["params"])
    projections = sum(c * 2 * c + 2 * 2 * c for c in (64, 128, 256))
    assert counts["A"] == counts["none"] == counts["B"] - projections


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"depth": 42}, "unknown ResNet depth 42.*valid choices: 101, 152, 18, 34, 50"),
        ({"shortcut": "C"}, "unknown shortcut 'C'.*valid choices: A, B, none"),
        ({"width": 0}, "width must be a positive integer, got 0"),
    ],
)
def test_bad_imagenet_config_is_a_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ResNet(**kwargs).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def test_bad_cifar_shortcut_names_the_choices():
    with pytest.raises(ConfigError, match="unknown shortcut 'C' \\(valid choices: A, B, none"):
        models.create_model("resnet20", shortcut="C").init(
            jax.random.key(0), jnp.zeros((1, 32, 32, 3))
        )


@pytest.mark.parametrize(
    "position",
    [
        "before_bn",
        pytest.param("after_bn", marks=pytest.mark.slow),
        pytest.param("head", marks=pytest.mark.slow),
    ],
)
def test_cifar_dropout_positions_act_only_in_training_and_keep_the_parameters(position):
    # 16x16 and compiled programs: the property does not depend on the size, and op-by-op
    # dispatch of seven ResNet-20s costs most of a minute. One position by default.
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 16, 16, 3)), jnp.float32)
    plain = models.create_model("resnet20", width=4)
    variables = compiled(lambda x: plain.init(jax.random.key(0), x), x)
    reference = compiled(lambda v, x: plain.apply(v, x)[0], variables, x)
    rngs = {"dropout": jax.random.key(3)}
    clean, _ = compiled(
        lambda v, x: plain.apply(v, x, train=True, mutable=["batch_stats"]), variables, x
    )
    for kind in ("bernoulli", "uniform"):
        model = models.create_model(
            "resnet20", width=4, dropout_rate=0.5, dropout_position=position, dropout_kind=kind
        )
        assert n_params(jax.eval_shape(model.init, jax.random.key(0), x)) == n_params(variables)
        np.testing.assert_array_equal(
            compiled(lambda v, x, m=model: m.apply(v, x)[0], variables, x), reference
        )
        noisy, _ = compiled(
            lambda v, x, m=model: m.apply(v, x, train=True, rngs=rngs, mutable=["batch_stats"]),
            variables,
            x,
        )
        assert not np.allclose(noisy[0], clean[0])
    with pytest.raises(ConfigError, match="unknown dropout position 'middle'"):
        jax.eval_shape(
            models.create_model("resnet20", dropout_position="middle").init, jax.random.key(0), x
        )


def test_cifar_antialias_blurs_the_strided_blocks_and_keeps_the_parameters():
    # Compiled programs: op-by-op dispatch of five ResNet-20s costs most of 20 s.
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
    base = models.create_model("resnet20", width=4)
    variables = compiled(lambda x: base.init(jax.random.key(0), x), x)
    plain = compiled(lambda v, x: base.apply(v, x)[0], variables, x)
    same = models.create_model("resnet20", width=4, antialias=1)
    np.testing.assert_array_equal(compiled(lambda v, x: same.apply(v, x)[0], variables, x), plain)
    for shortcut in ("A", "B"):
        blurred = models.create_model("resnet20", width=4, antialias=3, shortcut=shortcut)
        blur_vars = jax.eval_shape(blurred.init, jax.random.key(0), x)
        base_vars = jax.eval_shape(
            models.create_model("resnet20", width=4, shortcut=shortcut).init, jax.random.key(0), x
        )
        assert n_params(blur_vars) == n_params(base_vars)
        logits, inter = jax.eval_shape(blurred.apply, blur_vars, x)
        assert logits.shape == (2, 10) and inter["stage3"].shape == (2, 8, 8, 16)
    # A one-pixel circular shift changes the blurred network's features less than the plain one's.
    shifted = jnp.roll(x, 1, axis=(1, 2))
    blurred = models.create_model("resnet20", width=4, antialias=5)

    def change(model):
        f = jax.jit(lambda im: model.apply(variables, im)[1]["pre_logits"])
        return float(jnp.linalg.norm(f(x) - f(shifted)) / jnp.linalg.norm(f(x)))

    assert change(blurred) < change(base)


def test_registered_names():
    assert set(models.list_models("resnet*")) == {
        f"resnet{d}" for d in (*RESNET_SPECS, *BLOCKS_PER_STAGE)
    }
    assert models.list_models("plain*") == [f"plain{d}" for d in sorted(BLOCKS_PER_STAGE)]
    assert models.model_info("resnet50").input_shape == (224, 224, 3)
    assert models.model_info("plain56").input_shape == (32, 32, 3)
