"""Every convolution variant against numpy loops, PyTorch (when installed) and known identities."""

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from jax import lax

from cnnjax.errors import ConfigError, ShapeError
from cnnjax.layers import conv_impl, conv_ops
from cnnjax.layers.conv import (
    CONV_KINDS,
    Conv2d,
    ConvTranspose2d,
    SeparableConv2d,
    SpatiallySeparableConv2d,
    make_conv,
)
from cnnjax.layers.shapes import resolve_padding
from tests.layers.helpers import rng_key
from tests.layers.test_conv import numpy_conv

HIGHEST = lax.Precision.HIGHEST
NUMPY_PAD = {
    "zeros": "constant",
    "reflect": "reflect",
    "symmetric": "symmetric",
    "replicate": "edge",
    "circular": "wrap",
}


def normal(seed, *shape):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 2, 3]))
    kernel = draw(st.integers(1, 4))
    dilation = draw(st.integers(1, 2))
    stride = draw(st.integers(1, 3))
    mode = draw(st.sampled_from(sorted(NUMPY_PAD)))
    size = draw(st.integers(dilation * (kernel - 1) + 1, 8))
    max_pad = {"reflect": size - 1, "symmetric": size}.get(mode, 2)
    before, after = draw(st.integers(0, max_pad)), draw(st.integers(0, max_pad))
    return dict(
        groups=groups,
        kernel=kernel,
        dilation=dilation,
        stride=stride,
        mode=mode,
        size=size,
        pads=(before, after),
        flip=draw(st.booleans()),
    )


@settings(max_examples=30, deadline=None)
@given(case=conv_cases())
def test_conv2d_with_padding_modes_matches_numpy_loop(case):
    g, k = case["groups"], case["kernel"]
    x = normal(0, 2, case["size"], case["size"] + 1, 2 * g)
    w = normal(1, k, k, 2, 2 * g)
    b = normal(2, 2 * g)
    pads = (case["pads"], case["pads"][::-1])
    got = conv_ops.conv2d(
        x,
        w,
        b,
        case["stride"],
        pads,
        case["dilation"],
        g,
        padding_mode=case["mode"],
        flip_kernel=case["flip"],
        precision=HIGHEST,
    )
    padded = np.pad(x, ((0, 0), *pads, (0, 0)), mode=NUMPY_PAD[case["mode"]])
    kernel = w[::-1, ::-1] if case["flip"] else w
    expected = numpy_conv(padded, kernel, b, case["stride"], ((0, 0), (0, 0)), case["dilation"], g)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def numpy_conv1d(x, w, stride, pads, dilation):
    x = np.pad(x, ((0, 0), pads, (0, 0)))
    k = w.shape[0]
    out = (x.shape[1] - dilation * (k - 1) - 1) // stride + 1
    return np.stack(
        [sum(x[:, i * stride + a * dilation] @ w[a] for a in range(k)) for i in range(out)], 1
    )


@pytest.mark.parametrize("stride, pads, dilation", [(1, (0, 0), 1), (2, (1, 2), 1), (1, (2, 2), 2)])
def test_conv1d_matches_numpy_loop(stride, pads, dilation):
    x, w = normal(0, 2, 11, 3), normal(1, 3, 3, 4)
    got = conv_ops.conv1d(x, w, None, stride, [pads], dilation, precision=HIGHEST)
    np.testing.assert_allclose(
        got, numpy_conv1d(x, w, stride, pads, dilation), rtol=1e-5, atol=1e-5
    )


def numpy_conv_transpose(x, w, stride, pads, output_padding, dilation, groups):
    """Scatter form: every input pixel adds `x[i] * w` to the output window starting at s*i."""
    n, h, wd, cin = x.shape
    kh, kw, cin_g, cout = w.shape
    cout_g = cout // groups
    full_h = (h - 1) * stride + dilation * (kh - 1) + 1 + output_padding
    full_w = (wd - 1) * stride + dilation * (kw - 1) + 1 + output_padding
    out = np.zeros((n, full_h, full_w, cout))
    for i in range(h):
        for j in range(wd):
            for a in range(kh):
                for b in range(kw):
                    for g in range(groups):
                        xs = x[:, i, j, g * cin_g : (g + 1) * cin_g]
                        ws = w[a, b, :, g * cout_g : (g + 1) * cout_g]
                        out[
                            :,
                            i * stride + a * dilation,
                            j * stride + b * dilation,
                            g * cout_g : (g + 1) * cout_g,
                        ] += xs @ ws
    (top, bottom), (left, right) = pads
    return out[:, top : full_h - bottom, left : full_w - right]


@settings(max_examples=25, deadline=None)
@given(
    stride=st.integers(1, 3),
    kernel=st.integers(1, 4),
    dilation=st.integers(1, 2),
    groups=st.sampled_from([1, 2]),
    pad=st.integers(0, 2),
    data=st.data(),
)
def test_conv_transpose2d_matches_numpy_scatter(stride, kernel, dilation, groups, pad, data):
    output_padding = data.draw(st.integers(0, max(stride, dilation) - 1))
    pad = min(pad, dilation * (kernel - 1))  # keep the output non-empty for 1-pixel inputs
    x, w = normal(0, 2, 3, 4, 2 * groups), normal(1, kernel, kernel, 2, 3 * groups)
    got = conv_ops.conv_transpose2d(
        x,
        w,
        None,
        stride,
        pad,
        output_padding,
        dilation=dilation,
        groups=groups,
        precision=HIGHEST,
    )
    pads = ((pad, pad - output_padding), (pad, pad - output_padding))
    expected = numpy_conv_transpose(x, w, stride, pads, 0, dilation, groups)
    if output_padding:  # output_padding appends rows the scatter form leaves at zero
        expected = numpy_conv_transpose(
            x, w, stride, ((pad, pad),) * 2, output_padding, dilation, groups
        )
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "stride, pad, dilation, groups", [(1, 0, 1, 1), (2, 1, 1, 2), (3, 2, 2, 1)]
)
def test_transposed_conv_is_the_vjp_of_the_conv(stride, pad, dilation, groups):
    x, w = normal(0, 2, 9, 8, 2 * groups), normal(1, 3, 3, 2, 4 * groups)

    def forward(inputs):
        return conv_ops.conv2d(inputs, w, None, stride, pad, dilation, groups, precision=HIGHEST)

    y, vjp = jax.vjp(forward, x)
    cotangent = normal(2, *y.shape)
    extra = (9 + 2 * pad - dilation * 2 - 1) % stride, (8 + 2 * pad - dilation * 2 - 1) % stride
    # The adjoint maps C_out -> C_in: swap the kernel's channel roles within each group.
    w_t = w.reshape(3, 3, 2, groups, 4).transpose(0, 1, 4, 3, 2).reshape(3, 3, 4, 2 * groups)
    got = conv_ops.conv_transpose2d(
        cotangent,
        w_t,
        None,
        stride,
        pad,
        extra,
        dilation=dilation,
        groups=groups,
        precision=HIGHEST,
    )
    np.testing.assert_allclose(got, vjp(cotangent)[0], rtol=1e-4, atol=1e-4)


def test_true_convolution_is_correlation_with_rot180_kernel():
    x, w = normal(0, 1, 6, 6, 2), normal(1, 3, 2, 2, 3)
    convolved = conv_ops.conv2d(x, w, flip_kernel=True, precision=HIGHEST)
    correlated = conv_ops.conv2d(x, w[::-1, ::-1], precision=HIGHEST)
    np.testing.assert_allclose(convolved, correlated, rtol=1e-6)
    # and a true convolution with an impulse reproduces the kernel unflipped
    impulse = np.zeros((1, 5, 5, 1), np.float32)
    impulse[0, 2, 2, 0] = 1
    kernel = np.arange(9, dtype=np.float32).reshape(3, 3, 1, 1)
    out = conv_ops.conv2d(impulse, kernel, padding="same", flip_kernel=True)
    np.testing.assert_array_equal(out[0, 1:4, 1:4, 0], kernel[:, :, 0, 0])


def test_convs_pad_with_a_per_channel_constant_and_its_gradient_flows():
    x, w = normal(0, 2, 5, 5, 3), normal(1, 3, 3, 3, 4)
    colour = np.array([0.2, -0.5, 1.0], np.float32)
    got = conv_ops.conv2d(
        x, w, padding=1, padding_mode="constant", padding_value=colour, precision=HIGHEST
    )
    padded = np.stack(
        [np.pad(x[..., c], ((0, 0), (1, 1), (1, 1)), constant_values=colour[c]) for c in range(3)],
        -1,
    )
    np.testing.assert_allclose(got, numpy_conv(padded, w, 0.0, 1, ((0, 0),) * 2, 1, 1), 1e-5, 1e-5)
    module = Conv2d(4, 3, padding_mode="constant", padding_value=tuple(colour.tolist()))
    params = {"kernel": w, "bias": np.zeros(4, np.float32)}
    np.testing.assert_allclose(module.apply({"params": params}, x), got, rtol=1e-5, atol=1e-5)
    # d(sum conv)/d(colour_c) = sum over border pixels of channel c of the taps that reach them.
    grad = jax.grad(
        lambda v: jnp.sum(
            conv_ops.conv2d(x, w, padding=1, padding_mode="constant", padding_value=v)
        )
    )(colour)
    step = 1e-2
    for c in range(3):
        bump = colour.copy()
        bump[c] += step
        shifted = conv_ops.conv2d(
            x, w, padding=1, padding_mode="constant", padding_value=bump, precision=HIGHEST
        )
        np.testing.assert_allclose(grad[c], (np.sum(shifted) - np.sum(got)) / step, rtol=1e-3)


def test_sobel_is_separable_and_the_separable_path_agrees():
    column, row = np.array([1.0, 2.0, 1.0]), np.array([-1.0, 0.0, 1.0])
    sobel = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float32)
    np.testing.assert_array_equal(np.outer(column, row), sobel)
    x = normal(3, 2, 9, 7, 1)
    module = SpatiallySeparableConv2d(
        features=1, kernel_size=3, padding="same", use_bias=False, precision=HIGHEST
    )
    params = {
        "vertical": {"kernel": column.reshape(3, 1, 1, 1).astype(np.float32)},
        "horizontal": {"kernel": row.reshape(1, 3, 1, 1).astype(np.float32)},
    }
    separable = module.apply({"params": params}, x)
    full = conv_ops.conv2d(x, sobel[:, :, None, None], padding="same", precision=HIGHEST)
    np.testing.assert_allclose(separable, full, rtol=1e-5, atol=1e-5)


def count_params(module, x):
    variables = module.init(rng_key(0), x)
    return sum(v.size for v in jax.tree.leaves(variables["params"]))


def xla_flops(module, x):
    variables = module.init(rng_key(0), x)
    with conv_impl("xla", force=True):  # XLA cannot cost the oneDNN path's FFI calls
        compiled = jax.jit(module.apply).lower(variables, x).compile()
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    return analysis["flops"]


@pytest.mark.parametrize("kernel, cin, cout", [(3, 16, 32), (5, 8, 64)])
def test_depthwise_separable_cost_ratio_is_one_over_n_plus_one_over_k2(kernel, cin, cout):
    x = np.zeros((1, 12, 12, cin), np.float32)
    # "valid": XLA counts only the taps that land on real pixels, so zero padding would change
    # the depthwise and standard counts but not the pointwise one.
    standard = make_conv("standard", use_bias=False, padding="valid")(cout, kernel)
    separable = SeparableConv2d(cout, kernel, padding="valid", use_bias=False)
    ratio = 1 / cout + 1 / kernel**2
    assert count_params(separable, x) / count_params(standard, x) == pytest.approx(ratio)
    # multiply-adds as XLA counts them in the compiled program, an independent count
    flop_ratio = xla_flops(separable, x) / xla_flops(standard, x)
    assert flop_ratio == pytest.approx(ratio, rel=0.02)


@pytest.mark.parametrize("kernel, cin, cout, groups", [(3, 6, 9, 3), (1, 4, 8, 1), (5, 8, 8, 8)])
def test_conv_parameter_count_is_k_k_cin_over_groups_plus_one_times_cout(kernel, cin, cout, groups):
    conv = make_conv("standard")(features=cout, kernel_size=kernel, groups=groups)
    count = count_params(conv, np.zeros((1, 8, 8, cin), np.float32))
    assert count == (kernel * kernel * cin // groups + 1) * cout


def test_depthwise_uses_one_filter_bank_per_channel():
    conv = make_conv("depthwise", use_bias=False)(features=8, kernel_size=3)
    x = normal(0, 1, 6, 6, 4)
    variables = conv.init(rng_key(0), x)
    assert variables["params"]["kernel"].shape == (3, 3, 1, 8)
    # channel c only sees input channel c // 2
    x_other = x.copy()
    x_other[..., 0] += 1.0
    delta = conv.apply(variables, x_other) - conv.apply(variables, x)
    assert np.abs(delta[..., 2:]).max() == 0 and np.abs(delta[..., :2]).max() > 0


def test_circular_conv_commutes_with_circular_shifts():
    x, w = normal(0, 1, 8, 8, 2), normal(1, 3, 3, 2, 3)

    def conv(images):
        return conv_ops.conv2d(
            images, w, padding="same", padding_mode="circular", precision=HIGHEST
        )

    shifted = np.roll(x, (2, -3), axis=(1, 2))
    np.testing.assert_allclose(conv(shifted), np.roll(conv(x), (2, -3), axis=(1, 2)), atol=1e-5)
    zero_padded = conv_ops.conv2d(shifted, w, padding="same", precision=HIGHEST)
    assert not np.allclose(zero_padded, np.roll(conv(x), (2, -3), axis=(1, 2)), atol=1e-3)


@pytest.mark.parametrize("kind", sorted(CONV_KINDS))
def test_every_conv_kind_runs_under_jit_and_keeps_its_shape_rule(kind):
    ndim = 1 if kind == "conv1d" else 2
    x = normal(0, 2, *(9,) * ndim, 4)
    conv = make_conv(kind)(features=8, kernel_size=3, strides=2, padding=1)
    variables = conv.init(rng_key(0), x)
    y = jax.jit(conv.apply)(variables, x)
    expected = 17 if kind == "transposed" else 5  # (9-1)*2 - 2 + 3 vs floor((9+2-3)/2)+1
    assert y.shape == (2, *(expected,) * ndim, 8) and bool(jnp.all(jnp.isfinite(y)))


def test_shape_errors_name_the_layer_and_the_sizes():
    with pytest.raises(ShapeError, match="conv2d: kernel .*larger than the padded input"):
        conv_ops.conv2d(np.zeros((1, 3, 3, 1)), np.zeros((5, 5, 1, 1)), layer="conv2d")
    with pytest.raises(ShapeError, match="reflect padding"):
        conv_ops.conv2d(
            np.zeros((1, 3, 3, 1)), np.zeros((3, 3, 1, 1)), padding=3, padding_mode="reflect"
        )
    with pytest.raises(ShapeError, match="expects 4 input channels"):
        conv_ops.conv2d(np.zeros((1, 3, 3, 2)), np.zeros((1, 1, 4, 1)))
    with pytest.raises(ShapeError, match="output_padding"):
        conv_ops.conv_transpose2d(
            np.zeros((1, 3, 3, 1)), np.zeros((3, 3, 1, 1)), strides=2, output_padding=2
        )
    with pytest.raises(ConfigError, match="did you mean 'circular'"):
        conv_ops.conv2d(np.zeros((1, 3, 3, 1)), np.zeros((1, 1, 1, 1)), padding_mode="circ")
    with pytest.raises(ShapeError, match="multiple of the input channels"):
        make_conv("depthwise")(features=6).init(rng_key(0), np.zeros((1, 5, 5, 4)))


def test_conv_transpose_module_upsamples_like_pytorch_rule():
    module = ConvTranspose2d(features=3, kernel_size=4, strides=2, padding=1)
    x = normal(0, 1, 7, 5, 2)
    y = module.apply(module.init(rng_key(0), x), x)
    assert y.shape == (1, 14, 10, 3)  # the DCGAN doubling: (n-1)*2 - 2 + 4


def test_same_padding_resolution_for_even_kernels_puts_the_extra_pixel_after():
    assert resolve_padding("same", (4, 2)) == ((1, 2), (0, 1))
