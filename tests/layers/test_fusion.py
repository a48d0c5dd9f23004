"""Inference fusion: folded conv + BN (+ residual, + ReLU) against the unfused modules."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cnnjax import models
from cnnjax.errors import ShapeError
from cnnjax.ext import onednn
from cnnjax.layers import BatchNorm, Conv2d, ConvBlock, DepthwiseConv2d, LayerNorm, conv_impl
from cnnjax.layers.backend import inference_fusion
from cnnjax.layers.fusion import conv_bn_act, fold_batchnorm
from tests.layers.helpers import host_variables, normal

needs_onednn = pytest.mark.skipif(
    not onednn.available(), reason=f"oneDNN extension unavailable: {onednn.unavailable_reason()}"
)

# (input shape, kernel shape, strides, pads, groups)
CASES = {
    "3x3": ((2, 9, 9, 8), (3, 3, 8, 16), (1, 1), ((1, 1), (1, 1)), 1),
    "strided": ((2, 10, 9, 8), (3, 3, 8, 12), (2, 2), ((0, 1), (1, 0)), 1),
    "depthwise": ((2, 9, 9, 6), (3, 3, 1, 6), (2, 2), ((1, 1), (1, 1)), 6),
    "pointwise": ((2, 8, 8, 16), (1, 1, 16, 8), (1, 1), ((0, 0), (0, 0)), 1),
}
ACTS = {None: lambda y: y, "relu": jax.nn.relu, "relu6": jax.nn.relu6}


def _reference(x, w, b, r, act, strides, pads, groups):
    y = lax.conv_general_dilated(
        x,
        w,
        strides,
        pads,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
        precision=lax.Precision.HIGHEST,
    )
    y = y + b if r is None else y + b + r
    return ACTS[act](y)


def _relative(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


@needs_onednn
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("act", [None, "relu", "relu6"])
@pytest.mark.parametrize("with_residual", [False, True])
def test_fused_kernel_and_its_gradients_equal_the_unfused_graph(case, act, with_residual):
    x_shape, w_shape, strides, pads, groups = CASES[case]
    seed = 10 * len(case)
    x = normal(seed, *x_shape, scale=3.0)  # large enough that ReLU6 clips some outputs
    w = normal(seed + 1, *w_shape)
    b = normal(seed + 2, *w_shape[-1:])
    out_shape = jax.eval_shape(lambda: _reference(x, w, b, None, None, strides, pads, groups)).shape
    r = normal(seed + 3, *out_shape) if with_residual else None
    cotangent = normal(seed + 4, *out_shape)

    def ours(x, w, b, r):
        return onednn.conv2d_fused(x, w, b, r, act, strides, pads, (1, 1), groups)

    def ref(x, w, b, r):
        return _reference(x, w, b, r, act, strides, pads, groups)

    assert _relative(jax.jit(ours)(x, w, b, r), ref(x, w, b, r)) < 1e-5
    ours_grads = jax.vjp(ours, x, w, b, r)[1](cotangent)
    ref_grads = jax.vjp(ref, x, w, b, r)[1](cotangent)
    for got, want in zip(ours_grads, ref_grads):
        if want is None:
            assert got is None
        else:
            assert _relative(got, want) < 1e-5


@needs_onednn
def test_the_residual_buffer_is_not_overwritten_when_still_needed():
    x, w, r = normal(0, 2, 6, 6, 4), normal(1, 3, 3, 4, 4), normal(2, 2, 6, 6, 4)

    @jax.jit
    def both(x, w, r):
        y = onednn.conv2d_fused(x, w, jnp.zeros(4), r, "relu", (1, 1), ((1, 1), (1, 1)))
        return y, r * 2.0  # r is read after the kernel that writes its (aliased) buffer

    y, doubled = both(x, w, r)
    np.testing.assert_array_equal(doubled, r * 2.0)
    assert _relative(y, _reference(x, w, 0.0, r, "relu", (1, 1), ((1, 1),) * 2, 1)) < 1e-5


def test_fold_batchnorm_is_batchnorm_of_the_convolution():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(2, 5, 5, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 3, 4)), jnp.float32)
    conv_bias, mean, scale, beta = (jnp.asarray(rng.normal(size=4), jnp.float32) for _ in "1234")
    var = jnp.asarray(rng.uniform(0.5, 2.0, size=4), jnp.float32)
    folded_w, folded_b = fold_batchnorm(w, conv_bias, mean, var, scale, beta, 1e-5)

    def conv(x, w):
        return lax.conv_general_dilated(
            x,
            w,
            (1, 1),
            "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            precision=lax.Precision.HIGHEST,
        )

    expected = (conv(x, w) + conv_bias - mean) / jnp.sqrt(var + 1e-5) * scale + beta
    np.testing.assert_allclose(conv(x, folded_w) + folded_b, expected, rtol=1e-5, atol=1e-5)


def _fused_calls(fn, *args) -> int:
    jaxpr = jax.make_jaxpr(fn)(*args)
    text = str(jaxpr)
    return text.count("cnnjax_conv_fused")


# Every block kind that calls conv_bn_act: basic (option A and B shortcuts, the stem),
# bottleneck, VGG (conv bias), MobileNet v2 (depthwise, ReLU6, linear projection + residual),
# plus the ablation variants (anti-aliased blocks, dropout between conv1 and bn1).
MODEL_CASES = {
    "resnet20": ({}, (32, 32, 3)),
    "resnet18": ({"width": 8}, (32, 32, 3)),
    "resnet50": ({"width": 8}, (32, 32, 3)),
    "vgg11_bn": ({"width_multiplier": 0.125}, (32, 32, 3)),
    "mobilenet_v2": ({"width_mult": 0.25}, (32, 32, 3)),
    "resnet20/antialias": ({"antialias": 3, "width": 8}, (32, 32, 3)),
    "resnet20/dropout_before_bn": (
        {"dropout_rate": 0.3, "dropout_position": "before_bn", "width": 8},
        (32, 32, 3),
    ),
}


# Fast representatives: basic blocks (with input gradients), MobileNet's blocks and the dropout
# ablation; the other block kinds compile for seconds each and run with `-m slow`.
FAST_MODEL_CASES = ("mobilenet_v2", "resnet20", "resnet20/dropout_before_bn")


@needs_onednn
@pytest.mark.parametrize(
    "case",
    [
        c if c in FAST_MODEL_CASES else pytest.param(c, marks=pytest.mark.slow)
        for c in sorted(MODEL_CASES)
    ],
)
def test_models_evaluate_the_same_fused_and_unfused(case):
    kwargs, shape = MODEL_CASES[case]
    model = models.create_model(case.split("/")[0], **kwargs)
    x = normal(1, 2, *shape)
    # Non-trivial BN statistics and affine parameters (init would give mean 0, var 1).
    variables = host_variables(model, x)

    def make_logits():  # a new function per context: JAX caches traces by function
        return lambda v, x: model.apply(v, x, train=False)[0]

    assert _fused_calls(make_logits(), variables, x) > 0
    fused = jax.jit(make_logits())(variables, x)
    with inference_fusion(False):
        assert _fused_calls(make_logits(), variables, x) == 0
        unfused = jax.jit(make_logits())(variables, x)
    assert _relative(fused, unfused) < 1e-4
    if case == "resnet20":
        # Eval-mode input gradients (saliency, adversarial examples) through the fused kernels.
        fused_grad = jax.grad(lambda x: make_logits()(variables, x)[:, 0].sum())(x)
        with inference_fusion(False):
            unfused_grad = jax.grad(lambda x: make_logits()(variables, x)[:, 0].sum())(x)
        assert float(jnp.max(jnp.abs(unfused_grad))) > 0
        assert _relative(fused_grad, unfused_grad) < 1e-4


@needs_onednn
@pytest.mark.parametrize("order", ["conv-bn-act", "conv-bn", "conv-bn-act-drop"])
def test_conv_blocks_fold_their_leading_conv_and_bn(order):
    block = ConvBlock(8, order=order, dropout_rate=0.5 if "drop" in order else 0.0)
    x = normal(0, 2, 8, 8, 4)
    variables = host_variables(block, x, train=False)

    def make_apply():
        return lambda v, x: block.apply(v, x, train=False)

    assert _fused_calls(make_apply(), variables, x) == 1
    with inference_fusion(False):
        unfused = make_apply()(variables, x)
    assert _relative(make_apply()(variables, x), unfused) < 1e-5


@needs_onednn
def test_training_mode_and_the_portable_path_are_never_fused():
    model = models.create_model("resnet20")
    x = jnp.ones((2, 32, 32, 3))
    variables = host_variables(model, x, perturb=False)

    def train_logits(v, x):
        return model.apply(v, x, train=True, mutable=["batch_stats"])[0][0]

    def eval_logits(v, x):
        return model.apply(v, x)[0]

    assert _fused_calls(train_logits, variables, x) == 0
    with conv_impl("xla"):
        assert _fused_calls(eval_logits, variables, x) == 0


class _Block(nn.Module):
    norm: type = BatchNorm

    @nn.compact
    def __call__(self, x):
        conv = Conv2d(4, 3, use_bias=False, name="conv")
        return conv_bn_act(conv, self.norm(use_running_average=True, name="bn"), x, nn.relu)


@needs_onednn
def test_observed_modules_are_called_not_fused():
    x = normal(0, 2, 6, 6, 3)
    block = _Block()
    variables = host_variables(block, x)
    _, state = block.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
    assert set(state["intermediates"]) == {"__call__", "conv", "bn"}

    seen = []

    def record(next_fn, args, kwargs, context):
        seen.append(context.module.name)
        return next_fn(*args, **kwargs)

    with nn.intercept_methods(record):
        block.apply(variables, x)
    assert {"conv", "bn"} <= set(seen)
    assert _fused_calls(lambda v, x: block.apply(v, x), variables, x) == 1


def test_non_batchnorm_norms_and_depthwise_convs_follow_the_unfused_definition():
    x = normal(0, 2, 6, 6, 4)

    class LayerNormBlock(nn.Module):
        @nn.compact
        def __call__(self, x):
            conv = DepthwiseConv2d(4, 3, name="conv")
            return conv_bn_act(conv, LayerNorm(name="ln"), x, nn.gelu)

    block = LayerNormBlock()
    variables = host_variables(block, x)
    conv = variables["params"]["conv"]
    y = (
        lax.conv_general_dilated(
            x,
            conv["kernel"],
            (1, 1),
            "SAME",
            feature_group_count=4,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        + conv["bias"]
    )
    ln = variables["params"]["ln"]
    expected = nn.gelu(nn.LayerNorm(epsilon=1e-6).apply({"params": ln}, y))
    np.testing.assert_allclose(block.apply(variables, x), expected, rtol=1e-4, atol=1e-5)


@needs_onednn
def test_a_residual_of_the_wrong_shape_is_a_shape_error():
    class Bad(nn.Module):
        @nn.compact
        def __call__(self, x):
            conv = Conv2d(4, 3, strides=2, name="conv")
            bn = BatchNorm(use_running_average=True, name="bn")
            return conv_bn_act(conv, bn, x, nn.relu, residual=x[..., :4])

    # Variables written out: init would fail on the same addition.
    variables = {
        "params": {
            "conv": {"kernel": jnp.ones((3, 3, 4, 4)), "bias": jnp.zeros(4)},
            "bn": {"scale": jnp.ones(4), "bias": jnp.zeros(4)},
        },
        "batch_stats": {"bn": {"mean": jnp.zeros(4), "var": jnp.ones(4)}},
    }
    with pytest.raises(ShapeError, match="residual"):
        Bad().apply(variables, jnp.ones((2, 8, 8, 4)))
