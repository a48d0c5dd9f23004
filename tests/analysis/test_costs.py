"""MAC and parameter counting from traced programs, against hand counts."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import models
from cnnjax.analysis import count_macs, count_params
from cnnjax.layers import conv_ops
from tests.models.helpers import compiled


def test_lenet5_macs_by_hand():
    # C1 28x28x6 outputs x 25 taps, C3 10x10x16 x 150, C5 120 x 400, F6 84 x 120, output 10 x 84
    expected = 28 * 28 * 6 * 25 + 10 * 10 * 16 * 150 + 120 * 400 + 84 * 120 + 10 * 84
    assert models.model_info("lenet5").macs == expected == 416_520


@pytest.mark.parametrize(
    "groups, strides, impl", [(1, 1, "xla"), (4, 2, "xla"), (2, 1, "explicit")]
)
def test_conv_macs_are_outputs_times_kernel_per_output_channel(groups, strides, impl):
    x = jax.ShapeDtypeStruct((2, 9, 9, 8), jnp.float32)
    w = jax.ShapeDtypeStruct((3, 3, 8 // groups, 12), jnp.float32)
    macs = count_macs(
        lambda a, b: conv_ops.conv2d(a, b, None, strides, 1, groups=groups, impl=impl), x, w
    )
    out = (9 + 2 - 3) // strides + 1
    assert macs == 2 * out * out * 12 * (3 * 3 * 8 // groups)


def test_nested_jit_and_scan_are_counted_with_their_multiplicity():
    w = jnp.ones((5, 7))

    @jax.jit
    def layer(h):
        return h @ w.T @ w

    def body(h, _):
        return layer(h), None

    macs = count_macs(lambda h: jax.lax.scan(body, h, None, length=3)[0], jnp.ones((2, 7)))
    assert macs == 3 * (2 * 5 * 7 + 2 * 7 * 5)


def test_count_params_of_a_dense_layer():
    variables = jax.eval_shape(lambda: nn.Dense(4).init(jax.random.key(0), jnp.ones((1, 3))))
    assert count_params(variables["params"]) == 3 * 4 + 4


def small_models():
    return [
        n for n in models.list_models() if np.prod(models.model_info(n).input_shape[:2]) <= 64 * 64
    ]


# One small model per family kind compiles its init by default (plain conv net, residual net,
# capsule net, MLP, 1-D net). The rest run with `-m slow`: the deeper CIFAR ResNets and plain nets
# are resnet20's code with more blocks (seconds each), and DenseNet-BC-100's init alone compiles
# for longer than the rest of this file; test_trace covers the dense, branched and depthwise
# families' abstract variables by default.
FAST_INIT = {"lenet5", "resnet20", "capsnet", "lenet300_100", "tcn1d"}
assert FAST_INIT <= set(small_models()), FAST_INIT - set(small_models())  # a rename would hide them


@pytest.mark.parametrize(
    "name",
    [n if n in FAST_INIT else pytest.param(n, marks=pytest.mark.slow) for n in small_models()],
)
def test_model_info_params_equal_an_actual_init(name):
    """Compiled init is affordable for the small models; the registry tests trace the rest."""
    info = models.model_info(name)
    init = functools.partial(models.create_model(name).init, train=False)
    variables = compiled(init, jax.random.key(0, impl="rbg"), jnp.zeros((1, *info.input_shape)))
    assert info.params == count_params(variables["params"]) > 0
    assert info.macs > 0
