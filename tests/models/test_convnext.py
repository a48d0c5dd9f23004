"""ConvNeXt: parameter and MAC counts, stage shapes, drop path, layer scale, injected layers."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.errors import InvalidRngError
from jax.scipy.special import erf

from cnnjax import models
from cnnjax.errors import ConfigError
from cnnjax.layers import BatchNorm, LayerNorm, make_conv
from cnnjax.models.convnext import CONVNEXT_SPECS, PUBLISHED, ConvNeXtBlock, drop_path_rates
from tests.models.helpers import host_variables

# Two blocks in stage 1, one elsewhere, narrow: compiles in seconds on CPU.
SMALL = dict(depths=(2, 1, 1, 1), dims=(8, 16, 24, 32))


def convnext_params(depths, dims, classes=1000):
    """Stem 4x4 conv + LN; per block 7x7 depthwise conv, LN, C->4C->C MLP, layer scale;
    LN + 2x2 conv before stages 2-4; LN + dense head. Every conv and dense layer has a bias."""
    total = 16 * 3 * dims[0] + dims[0] + 2 * dims[0]
    for stage, (depth, c) in enumerate(zip(depths, dims, strict=True)):
        if stage:
            total += 2 * dims[stage - 1] + 4 * dims[stage - 1] * c + c
        total += depth * ((49 + 1) * c + 2 * c + (c + 1) * 4 * c + (4 * c + 1) * c + c)
    return total + 2 * dims[-1] + (dims[-1] + 1) * classes


def images(size=64, batch=2, seed=0):
    return jax.random.normal(jax.random.PRNGKey(seed), (batch, size, size, 3))


@pytest.mark.parametrize("variant", sorted(CONVNEXT_SPECS))
def test_params_match_hand_count_torchvision_and_paper(variant):
    info = models.model_info(f"convnext_{variant}")
    spec = CONVNEXT_SPECS[variant]
    assert info.params == convnext_params(spec["depths"], spec["dims"])
    paper_params, paper_gflops = PUBLISHED[variant]
    assert abs(info.params / 1e6 - paper_params) < 1  # the paper truncates T and S, rounds B
    # The paper's "FLOPs" are multiply-adds; torchvision lists 4.456 / 8.684 / 15.355 G.
    assert info.macs == pytest.approx(paper_gflops * 1e9, rel=1e-2)


def test_torchvision_parameter_counts():
    expected = {"tiny": 28_589_128, "small": 50_223_688, "base": 88_591_464}
    assert {v: models.model_info(f"convnext_{v}").params for v in expected} == expected


def test_stage_shapes_and_pre_logits():
    model = models.create_model("convnext_tiny", num_classes=5, **SMALL)
    x = images()
    variables = host_variables(model, x, layer_scale=0.5)
    logits, inter = jax.jit(lambda v: model.apply(v, x))(variables)
    assert logits.shape == (2, 5)
    assert inter["stem"].shape == (2, 16, 16, 8)
    got = [inter[f"stage{s}"].shape[1:] for s in range(1, 5)]
    assert got == [(16, 16, 8), (8, 8, 16), (4, 4, 24), (2, 2, 32)]
    # pre_logits is the pooled final map after the head LayerNorm: zero mean, unit variance.
    pooled = inter["stage4"].mean((1, 2))
    expected = (pooled - pooled.mean(-1, keepdims=True)) / jnp.sqrt(
        pooled.var(-1, keepdims=True) + 1e-6
    )
    np.testing.assert_allclose(inter["pre_logits"], expected, rtol=1e-4, atol=1e-5)


def test_drop_path_schedule_is_linear_over_all_blocks():
    rates = drop_path_rates((3, 3, 9, 3), 0.1)
    assert len(rates) == 18 and rates[0] == 0.0 and rates[-1] == pytest.approx(0.1)
    np.testing.assert_allclose(np.diff(rates), 0.1 / 17)
    assert drop_path_rates((1,), 0.3) == [0.0]
    for variant, spec in CONVNEXT_SPECS.items():
        model = models.create_model(f"convnext_{variant}")
        assert model.resolved()[2] == spec["drop_path_rate"]
    assert models.create_model("convnext_base", drop_path_rate=0.0).resolved()[2] == 0.0


def make_block(drop_path, layer_scale_init=1.0):
    return ConvNeXtBlock(
        drop_path=drop_path,
        layer_scale_init=layer_scale_init,
        depthwise_conv=make_conv("depthwise"),
        norm=LayerNorm,
        act=functools.partial(nn.gelu, approximate=False),
    )


def test_drop_path_drops_whole_samples_in_training_only():
    block = make_block(drop_path=0.5)
    x = jax.random.normal(jax.random.PRNGKey(0), (32, 4, 4, 8))
    variables = host_variables(block, x, layer_scale=0.5, train=False)
    out = jax.jit(lambda v, k: block.apply(v, x, train=True, rngs={"dropout": k}))(
        variables, jax.random.PRNGKey(3)
    )
    full = jax.jit(lambda v: block.apply(v, x, train=False))(variables)
    branch = full - x
    dropped = np.all(np.asarray(out) == np.asarray(x), axis=(1, 2, 3))
    kept = np.all(np.isclose(out, x + 2 * branch, rtol=1e-5, atol=1e-5), axis=(1, 2, 3))
    assert np.all(dropped ^ kept)  # each sample entirely dropped or entirely kept, scaled 1/(1-p)
    assert 4 <= dropped.sum() <= 28
    with pytest.raises(InvalidRngError):
        jax.eval_shape(lambda: block.apply(variables, x, train=True))


def test_layer_scale_starts_at_1e_6_and_can_be_disabled():
    x = jnp.ones((1, 4, 4, 8))
    block = make_block(drop_path=0.0, layer_scale_init=1e-6)
    variables = block.init(jax.random.PRNGKey(0), x, train=False)
    np.testing.assert_array_equal(variables["params"]["gamma"], np.full(8, 1e-6, np.float32))
    model = models.create_model("convnext_tiny", layer_scale_init=None, **SMALL)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), images(32, 1)))
    assert "gamma" not in shapes["params"]["stage1_block1"]
    assert models.create_model("convnext_tiny").layer_scale_init == 1e-6


def test_default_activation_is_exact_gelu():
    act = models.create_model("convnext_tiny").act
    x = jnp.linspace(-4, 4, 101)
    exact = 0.5 * x * (1 + erf(x / np.sqrt(2)))
    np.testing.assert_allclose(act(x), exact, rtol=1e-5, atol=1e-6)
    # The tanh approximation is off by up to ~5e-4: far outside that tolerance.
    assert not np.allclose(nn.gelu(x, approximate=True), exact, rtol=1e-5, atol=1e-6)


def test_injected_act_conv_and_norm_are_used():
    calls = []

    def counting_gelu(y):
        calls.append(y.shape)
        return nn.gelu(y, approximate=False)

    x = images(32, 1)
    shapes = lambda m: jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), x))  # noqa: E731
    base = shapes(models.create_model("convnext_tiny", **SMALL))
    shapes(models.create_model("convnext_tiny", act=counting_gelu, **SMALL))
    assert len(calls) == sum(SMALL["depths"]) and calls[0][-1] == 4 * SMALL["dims"][0]
    no_bias = shapes(
        models.create_model(
            "convnext_tiny",
            conv=make_conv(use_bias=False),
            depthwise_conv=make_conv("depthwise", use_bias=False),
            **SMALL,
        )
    )
    n = lambda tree: sum(leaf.size for leaf in jax.tree.leaves(tree["params"]))  # noqa: E731
    depths, dims = SMALL["depths"], SMALL["dims"]
    assert n(base) - n(no_bias) == sum(dims) + sum(d * c for d, c in zip(depths, dims, strict=True))
    # The ConvNeXt paper's BN ablation: a BatchNorm norm gets batch statistics and a train flag.
    model = models.create_model("convnext_tiny", norm=BatchNorm, drop_path_rate=0.0, **SMALL)
    variables = host_variables(model, x, layer_scale=0.5)
    assert "stage1_block1" in variables["batch_stats"] and "stem_norm" in variables["batch_stats"]
    _, updates = jax.jit(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables
    )
    assert not np.allclose(updates["batch_stats"]["stem_norm"]["mean"], 0.0)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"variant": "tinny"}, "unknown ConvNeXt variant 'tinny'; did you mean 'tiny'"),
        ({"depths": (3, 3, 9)}, "one positive entry per stage"),
        ({"dims": (96, 0, 384, 768)}, "one positive entry per stage"),
        ({"drop_path_rate": 1.0}, "drop_path_rate must be in"),
    ],
)
def test_bad_config_is_a_config_error(fields, message):
    model = models.create_model("convnext_tiny", **fields)
    with pytest.raises(ConfigError, match=message):
        jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), images(32, 1)))


def test_unknown_model_name_suggests_a_variant():
    with pytest.raises(ConfigError, match="did you mean 'convnext_tiny'"):
        models.create_model("convnext_tiyn")
