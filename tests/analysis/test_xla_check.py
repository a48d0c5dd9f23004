"""Analytic FLOPs against XLA's cost analysis: single ops by hand, then small models."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from cnnjax.analysis import xla_check


def _conv(padding, strides=(1, 1), groups=1):
    def conv(x, w):
        return jax.lax.conv_general_dilated(
            x,
            w,
            strides,
            padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=groups,
        )

    return conv


def _shapes(*shapes):
    return [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]


def test_valid_conv_is_exactly_two_flops_per_mac():
    check = xla_check.check_fn(_conv("VALID"), *_shapes((2, 8, 8, 3), (3, 3, 3, 4)))
    assert check.analytic_flops == 2 * (2 * 6 * 6 * 4 * 27)
    assert check.xla_flops == check.analytic_flops == check.unpadded_flops
    assert check.rel_diff == 0


def test_same_conv_skips_the_padded_taps():
    check = xla_check.check_fn(_conv("SAME"), *_shapes((1, 8, 8, 3), (3, 3, 3, 4)))
    # Along each axis 8 outputs x 3 taps = 24, of which 2 hit the padding: 22 x 22 pairs.
    assert check.analytic_flops == 2 * 8 * 8 * 4 * 27
    assert check.unpadded_flops == 2 * 22 * 22 * 3 * 4 == check.xla_flops == 11_616
    assert check.padding_flops == 13_824 - 11_616


@pytest.mark.parametrize(
    "padding, strides, groups", [(((1, 1), (1, 1)), (2, 2), 1), (((0, 1), (2, 0)), (1, 2), 4)]
)
def test_unpadded_macs_reproduce_xla_for_strided_and_grouped_convs(padding, strides, groups):
    check = xla_check.check_fn(
        _conv(padding, strides, groups), *_shapes((2, 9, 10, 8), (3, 3, 8 // groups, 12))
    )
    assert check.xla_flops == check.unpadded_flops < check.analytic_flops


def test_dense_is_two_flops_per_mac_and_the_bias_one_per_output():
    x, w, b = _shapes((5, 7), (7, 3), (3,))
    assert xla_check.check_fn(lambda x, w: x @ w, x, w).xla_flops == 2 * 5 * 7 * 3
    check = xla_check.check_fn(lambda x, w, b: x @ w + b, x, w, b)
    assert check.xla_flops == 2 * 5 * 7 * 3 + 5 * 3 and check.other_flops == 15


def test_pooling_and_eval_batchnorm_are_counted_by_xla_only():
    x = jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32)
    pool = xla_check.check_fn(lambda x: nn.max_pool(x, (2, 2), (2, 2)), x)
    assert pool.analytic_flops == 0 and pool.xla_flops == 4 * 4 * 3 * 3  # 3 compares per output
    bn = nn.BatchNorm(use_running_average=True)
    variables = jax.eval_shape(lambda: bn.init(jax.random.key(0), jnp.zeros(x.shape)))
    check = xla_check.check_fn(bn.apply, variables, x)
    # subtract, multiply, add per element; var + eps and scale x rsqrt per channel.
    assert check.xla_flops == 3 * 8 * 8 * 3 + 2 * 3 and check.transcendentals == 3


def test_lenet5_agrees_within_a_few_percent():
    check = xla_check.analytic_vs_xla("lenet5", batch=2)
    assert check.analytic_flops == 2 * 2 * 416_520  # VALID convs: no padding deficit
    assert 0 < check.rel_diff < 0.03  # ReLUs, pooling, biases


def test_resnet20_differs_by_its_padding_and_elementwise_work_only():
    check = xla_check.analytic_vs_xla("resnet20")
    # 3x3 SAME convs on 32x32, 16x16 and 8x8 maps lose 4%, 8% and 16% of their taps.
    assert 0.08 < check.padding_flops / check.analytic_flops < 0.10
    # What is left is BN, ReLU, additions and pooling: about 1% of the convs' FLOPs.
    assert 0 < check.other_flops / check.analytic_flops < 0.02
    assert -0.10 < check.rel_diff < -0.06


def test_lowered_and_compiled_counts():
    conv = _conv("SAME"), *_shapes((1, 8, 8, 3), (3, 3, 3, 4))
    lowered_conv = xla_check.xla_cost(*conv)
    assert lowered_conv["flops"] == xla_check.xla_cost(*conv, compiled=True)["flops"] == 11_616
    lowered = xla_check.analytic_vs_xla("lenet5")
    compiled = xla_check.analytic_vs_xla("lenet5", compiled=True)
    # Fusion may duplicate elementwise producers into several consumers: never fewer FLOPs.
    assert lowered.xla_flops <= compiled.xla_flops < 1.005 * lowered.xla_flops


def test_the_whole_output_keeps_capsnet_decoder_in_xla_count():
    # Returning only the logits would let XLA drop the 2.8 MFLOP decoder (rel_diff -0.6%).
    assert abs(xla_check.analytic_vs_xla("capsnet").rel_diff) < 0.002
