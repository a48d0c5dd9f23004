"""MobileNet v1 and v2: parameter and MAC counts against the papers, structure, injected layers."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.errors import InvalidRngError

from cnnjax import models
from cnnjax.analysis.costs import count_macs
from cnnjax.errors import ConfigError
from cnnjax.layers import BatchNorm, LayerNorm, make_conv
from cnnjax.models.mobilenet import (
    V1_PUBLISHED,
    V1_STAGES,
    V2_PUBLISHED,
    InvertedResidual,
    make_divisible,
)
from tests.models.helpers import host_variables, n_params


def v1_params(alpha, classes=1000):
    """Stem 3x3x3x32 + BN; per block a 3x3 depthwise conv + BN and a 1x1 conv + BN; dense head."""
    width = lambda c: max(int(c * alpha), 8)  # noqa: E731
    c_in = width(32)
    total = 27 * c_in + 2 * c_in
    for stage in V1_STAGES:
        for filters, _ in stage:
            c_out = width(filters)
            total += 9 * c_in + 2 * c_in + c_in * c_out + 2 * c_out
            c_in = c_out
    return total + c_in * classes + classes


def macs_at(name, size, **fields):
    model = models.create_model(name, **fields)
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x.shape)))
    return count_macs(lambda v, images: model.apply(v, images), variables, x)


def apply(model, variables, x, **kwargs):
    return jax.jit(lambda v, x: model.apply(v, x, **kwargs))(variables, x)


def tiny_input(size=64, batch=2, seed=0):
    return jax.random.normal(jax.random.PRNGKey(seed), (batch, size, size, 3))


@pytest.mark.parametrize("alpha", [1.0, 0.75, 0.5, 0.25])
def test_v1_params_and_macs_match_the_paper(alpha):
    model = models.create_model("mobilenet_v1", alpha=alpha)
    x = jnp.zeros((1, 224, 224, 3))
    params = n_params(jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))["params"])
    assert params == v1_params(alpha)
    paper_macs, paper_params = V1_PUBLISHED[(alpha, 224)]
    # Table 6 rounds to 0.1M params; mult-adds within 0.5% (we count the classifier's 1.0M too,
    # and the paper's figures are themselves rounded).
    assert round(params / 1e6, 1) == paper_params
    assert macs_at("mobilenet_v1", 224, alpha=alpha) == pytest.approx(paper_macs * 1e6, rel=5e-3)


def test_registered_v1_widths():
    assert models.model_info("mobilenet_v1_050").params == v1_params(0.5)
    assert models.create_model("mobilenet_v1_050").alpha == 0.5


def test_v1_is_4_2m_params_and_569m_macs():
    info = models.model_info("mobilenet_v1")
    assert info.params == 4_231_976
    assert abs(info.macs - 569e6) / 569e6 < 1e-3  # 568.74M


@pytest.mark.parametrize("size", [192, 160, 128])
def test_v1_resolution_multiplier_is_a_smaller_input(size):
    # Paper, Table 7: the same network on smaller inputs.
    assert macs_at("mobilenet_v1", size) == pytest.approx(V1_PUBLISHED[(1.0, size)][0] * 1e6, 5e-3)


def test_v2_params_and_macs():
    info = models.model_info("mobilenet_v2")
    assert info.params == 3_504_872  # torchvision's published count
    assert info.macs == pytest.approx(V2_PUBLISHED[1.0][0] * 1e6, rel=5e-3)  # 300.8M
    # Width 1.4: the paper's 585M mult-adds; its "6.9M" parameters disagree with every released
    # implementation (TF-slim and torchvision: 6.1M), so only the MACs are checked against it.
    wide = models.model_info("mobilenet_v2_140")
    assert wide.macs == pytest.approx(V2_PUBLISHED[1.4][0] * 1e6, rel=1e-2)
    assert wide.params == 6_108_776


def test_make_divisible_rounds_like_the_reference_code():
    assert make_divisible(32 * 0.5) == 16
    assert make_divisible(24 * 0.35) == 8  # 8.4 -> 8
    assert make_divisible(16 * 0.35) == 8  # never below the divisor
    assert make_divisible(1280 * 1.4) == 1792
    assert make_divisible(20, 16) == 32  # 16 would lose 20%: rounded up instead
    assert make_divisible(37, 1) == 37


def test_v1_intermediates_halve_the_resolution_per_stage():
    model = models.create_model("mobilenet_v1", alpha=0.25, num_classes=5)
    x = tiny_input()
    logits, inter = apply(model, host_variables(model, x, gain=2.0), x)
    assert logits.shape == (2, 5)
    assert inter["stem"].shape == (2, 32, 32, 8)
    sizes = [inter[f"stage{s}"].shape[1:] for s in range(1, 6)]
    assert sizes == [(32, 32, 16), (16, 16, 32), (8, 8, 64), (4, 4, 128), (2, 2, 256)]
    assert inter["pre_logits"].shape == (2, 256)


def test_v2_intermediates_follow_the_spec_rows():
    model = models.create_model("mobilenet_v2_050", num_classes=3)
    x = tiny_input()
    logits, inter = apply(model, host_variables(model, x, gain=2.0), x)
    assert logits.shape == (2, 3)
    assert inter["stem"].shape == (2, 32, 32, 16)
    got = [inter[f"stage{s}"].shape[1:] for s in range(1, 8)]
    channels = [8, 16, 16, 32, 48, 80, 160]  # make_divisible(c / 2)
    sizes = [32, 16, 8, 4, 4, 2, 2]
    assert got == [(h, h, c) for h, c in zip(sizes, channels, strict=True)]
    assert inter["last_conv"].shape == (2, 2, 2, 1280)  # not scaled down below 1280
    np.testing.assert_allclose(inter["pre_logits"], inter["last_conv"].mean((1, 2)), rtol=1e-6)


def test_inverted_residual_adds_its_input_only_when_shapes_allow():
    x = tiny_input(8, 1)
    block = functools.partial(
        InvertedResidual,
        expansion=6,
        conv=make_conv(use_bias=False),
        depthwise_conv=make_conv("depthwise", use_bias=False),
        norm=BatchNorm,
        act=jax.nn.relu6,
    )

    def silence_branch(module):
        # Zero scale and shift of the projection BN: the residual branch outputs exactly 0.
        variables = host_variables(module, x, gain=2.0, train=False)
        zero = lambda path, v: jnp.zeros_like(v) if "project_bn" in str(path) else v  # noqa: E731
        return apply(module, jax.tree_util.tree_map_with_path(zero, variables), x, train=False)

    np.testing.assert_array_equal(silence_branch(block(features=3, strides=1)), x)
    np.testing.assert_array_equal(silence_branch(block(features=3, strides=2)), 0.0)
    assert silence_branch(block(features=4, strides=1)).shape == (1, 8, 8, 4)
    np.testing.assert_array_equal(silence_branch(block(features=4, strides=1)), 0.0)


def test_injected_conv_norm_and_act_are_used():
    x = tiny_input(32, 1)
    calls = []

    def counting_relu(y):
        calls.append(y.shape)
        return nn.relu(y)

    base = models.create_model("mobilenet_v1", alpha=0.25, num_classes=4)
    n_base = n_params(jax.eval_shape(lambda: base.init(jax.random.PRNGKey(0), x))["params"])
    model = models.create_model(
        "mobilenet_v1",
        alpha=0.25,
        num_classes=4,
        act=counting_relu,
        conv=make_conv(use_bias=True),
        depthwise_conv=make_conv("depthwise", use_bias=True),
        norm=LayerNorm,
    )
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x))
    assert len(calls) == 1 + 2 * sum(len(s) for s in V1_STAGES)
    assert "batch_stats" not in variables  # LayerNorm replaced every BatchNorm
    # Biases: one per output channel of the stem, every depthwise and every pointwise conv.
    widths = [8] + [max(int(f * 0.25), 8) for stage in V1_STAGES for f, _ in stage]
    assert n_params(variables["params"]) - n_base == widths[0] + sum(widths[:-1]) + sum(widths[1:])

    calls.clear()
    v2 = models.create_model("mobilenet_v2_050", act=counting_relu)
    jax.eval_shape(lambda: v2.init(jax.random.PRNGKey(0), x))
    # stem + (expand, depthwise) in 16 blocks + depthwise in the t=1 block + last conv
    assert len(calls) == 1 + 2 * 16 + 1 + 1


def test_relu6_changes_large_activations_only():
    x = tiny_input(32, 1) * 50
    relu = models.create_model("mobilenet_v1", alpha=0.25)
    relu6 = models.create_model("mobilenet_v1", alpha=0.25, act=jax.nn.relu6)
    variables = host_variables(relu, x, gain=2.0)
    stem = apply(relu, variables, x)[1]["stem"]
    stem6 = apply(relu6, variables, x)[1]["stem"]
    assert float(stem.max()) > 6.0 and float(stem6.max()) == 6.0


def test_training_mode_uses_dropout_and_updates_batch_stats():
    # Two spec rows are enough here and compile in a fraction of the time.
    model = models.create_model(
        "mobilenet_v2", num_classes=10, dropout_rate=0.5, spec=((1, 16, 1, 1), (6, 24, 2, 2))
    )
    x = tiny_input(32, 4)
    variables = host_variables(model, x, gain=2.0)
    rngs = {"dropout": jax.random.PRNGKey(1)}
    (train_a, _), updates = jax.jit(
        lambda v: model.apply(v, x, train=True, mutable=["batch_stats"], rngs=rngs)
    )(variables)
    assert not np.allclose(updates["batch_stats"]["stem_bn"]["mean"], 0.0)
    eval_a, _ = apply(model, variables, x)
    eval_b, _ = apply(model, variables, x[:1])
    assert not np.allclose(train_a, eval_a)
    np.testing.assert_allclose(eval_a[:1], eval_b, rtol=1e-4, atol=1e-5)
    with pytest.raises(InvalidRngError):
        jax.eval_shape(lambda: model.apply(variables, x, train=True, mutable=["batch_stats"]))


@pytest.mark.parametrize(
    "name, fields, message",
    [
        ("mobilenet_v1", {"alpha": 0.0}, "alpha must be a positive number"),
        ("mobilenet_v2", {"width_mult": -1.0}, "width_mult must be a positive number"),
        ("mobilenet_v2", {"spec": ((1, 16, 1, 3),)}, "stride s in"),
        ("mobilenet_v2", {"spec": ()}, "at least one"),
        ("mobilenet_v2", {"round_nearest": 0}, "round_nearest"),
    ],
)
def test_bad_config_is_a_config_error(name, fields, message):
    model = models.create_model(name, **fields)
    with pytest.raises(ConfigError, match=message):
        jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))


def test_unknown_variant_names_the_choices():
    with pytest.raises(ConfigError, match="did you mean 'mobilenet_v2'"):
        models.create_model("mobilenet_v22")
    with pytest.raises(ConfigError, match="did you mean 'alpha'"):
        models.create_model("mobilenet_v1", alpah=0.5)
