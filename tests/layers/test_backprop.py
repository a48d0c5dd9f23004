"""The course's backpropagation formulas (custom VJP) against `jax.grad` of the native conv."""

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from jax import lax

from cnnjax.errors import ConfigError
from cnnjax.layers import backprop, conv_ops
from cnnjax.layers.conv import make_conv
from tests.layers.helpers import rng_key

HIGHEST = lax.Precision.HIGHEST


def normal(seed, *shape):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def loss_fn(impl, strides, pads, dilation, groups):
    def loss(x, w, probe):
        y = conv_ops.conv(x, w, None, strides, pads, dilation, groups, precision=HIGHEST, impl=impl)
        return jnp.sum(y * probe)  # a random linear functional exercises every output gradient

    return loss


@st.composite
def cases(draw):
    ndim = draw(st.sampled_from([1, 2]))
    groups = draw(st.sampled_from([1, 2, 3]))
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(ndim))
    dilation = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
    strides = tuple(draw(st.integers(1, 3)) for _ in range(ndim))
    pads = tuple((draw(st.integers(0, 3)), draw(st.integers(0, 3))) for _ in range(ndim))
    smallest = [max(1, d * (k - 1) + 1 - p0 - p1) for k, d, (p0, p1) in zip(kernel, dilation, pads)]
    spatial = tuple(draw(st.integers(low, low + 6)) for low in smallest)
    return ndim, groups, kernel, dilation, strides, pads, spatial


def check_explicit_gradients(case):
    ndim, groups, kernel, dilation, strides, pads, spatial = case
    x = normal(0, 2, *spatial, 2 * groups)
    w = normal(1, *kernel, 2, 3 * groups)
    native = loss_fn("xla", strides, pads, dilation, groups)
    explicit = loss_fn("explicit", strides, pads, dilation, groups)
    y_shape = jax.eval_shape(lambda: conv_ops.conv(x, w, None, strides, pads, dilation, groups))
    probe = normal(2, *y_shape.shape)

    @jax.jit  # one compilation per example (eager dispatch compiles every op separately)
    def both(x, w, probe):
        expected = jax.value_and_grad(native, argnums=(0, 1))(x, w, probe)
        return jax.value_and_grad(explicit, argnums=(0, 1))(x, w, probe), expected

    (got_value, got), (expected_value, expected) = both(x, w, probe)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got_value, expected_value, rtol=1e-5, atol=1e-4)


# A compilation per example: 12 in the default suite, 40 with `-m slow`.
@settings(max_examples=12, deadline=None)
@given(case=cases())
def test_explicit_gradients_match_jax_grad(case):
    check_explicit_gradients(case)


@pytest.mark.slow
@settings(max_examples=40, deadline=None)
@given(case=cases())
def test_explicit_gradients_match_jax_grad_on_40_cases(case):
    check_explicit_gradients(case)


def test_explicit_gradients_under_vmap():
    xs, w = normal(0, 3, 2, 7, 7, 4), normal(1, 3, 3, 2, 4)
    probe = normal(2, 3, 2, 4, 4, 4)

    def per_example(impl):
        loss = loss_fn(impl, (2, 2), ((1, 1), (1, 1)), (1, 1), 2)
        return jax.vmap(jax.grad(loss, argnums=(0, 1)), in_axes=(0, None, 0))(xs, w, probe)

    for g, e in zip(jax.jit(lambda: per_example("explicit"))(), per_example("xla")):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-4)


def test_formula_pieces_are_what_the_course_says():
    delta = np.arange(1, 5, dtype=np.float32).reshape(1, 2, 2, 1)
    dilated = backprop.dilate_stride(delta, (2, 3))
    expected = np.zeros((1, 3, 4, 1), np.float32)
    expected[0, ::2, ::3, 0] = delta[0, :, :, 0]
    np.testing.assert_array_equal(dilated, expected)
    w = normal(0, 2, 3, 4, 6)  # groups=2: 4 input channels per group (8 in all), 3 outputs each
    rotated = backprop.rot180_transposed(w, groups=2)
    assert rotated.shape == (2, 3, 3, 8)
    # in group 1, forward input 3 -> output 2 becomes backward input 2 -> output 3
    np.testing.assert_array_equal(rotated[:, :, 2, 4 + 3], w[::-1, ::-1, 3, 3 + 2])


def test_explicit_backprop_module_trains_like_the_native_one():
    x = normal(0, 4, 8, 8, 3)
    native = make_conv("standard", precision=HIGHEST)(features=5, strides=2)
    explicit = make_conv("explicit_backprop", precision=HIGHEST)(features=5, strides=2)
    variables = native.init(rng_key(0), x)

    def grads(module):
        return jax.grad(lambda v: jnp.sum(jnp.tanh(module.apply(v, x))))(variables)

    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
        grads(explicit),
        grads(native),
    )


def test_unknown_backward_kernel_is_a_config_error():
    with pytest.raises(ConfigError, match="backward kernel"):
        backprop.explicit_conv(
            np.zeros((1, 3, 3, 1)),
            np.zeros((1, 1, 1, 1)),
            (1, 1),
            ((0, 0), (0, 0)),
            (1, 1),
            backward="pallas",
        )
