"""Conv2d and pooling against independent numpy loops."""

import itertools

import jax
import numpy as np
import pytest

from cnnjax.errors import ConfigError, ShapeError
from cnnjax.layers import Conv2d, make_conv
from cnnjax.layers.shapes import resolve_padding
from tests.layers.helpers import rng_key


def numpy_conv(x, w, b, stride, padding, dilation, groups):
    """Direct cross-correlation: out[n,i,j,o] = sum x[n, i*s + p*d, j*s + q*d, c] w[p,q,c,o]."""
    (pt, pb), (pl, pr) = padding
    x = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    kh, kw, cin_g, cout = w.shape
    n, h, wd, _ = x.shape
    oh = (h - dilation * (kh - 1) - 1) // stride + 1
    ow = (wd - dilation * (kw - 1) - 1) // stride + 1
    out = np.zeros((n, oh, ow, cout))
    cout_g = cout // groups
    for i, j, o in itertools.product(range(oh), range(ow), range(cout)):
        g = o // cout_g
        for p, q in itertools.product(range(kh), range(kw)):
            patch = x[
                :, i * stride + p * dilation, j * stride + q * dilation, g * cin_g : (g + 1) * cin_g
            ]
            out[:, i, j, o] += patch @ w[p, q, :, o]
    return out + b


@pytest.mark.parametrize(
    "kernel, stride, padding, dilation, groups",
    [
        (3, 1, "same", 1, 1),
        (3, 2, 1, 1, 1),
        (2, 1, "valid", 1, 2),
        (3, 1, "full", 2, 1),
        (1, 1, "valid", 1, 4),
        (3, 2, ((0, 1), (2, 0)), 1, 2),
    ],
)
def test_conv2d_matches_numpy_loop(kernel, stride, padding, dilation, groups):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 7, 6, 4)).astype(np.float32)
    conv = Conv2d(
        features=4,
        kernel_size=kernel,
        strides=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        precision=jax.lax.Precision.HIGHEST,
    )
    variables = conv.init(rng_key(0), x)
    variables = jax.tree.map(lambda v: rng.normal(size=v.shape).astype(np.float32), variables)
    got = np.asarray(conv.apply(variables, x))
    pads = resolve_padding(padding, (kernel, kernel), (dilation, dilation))
    p = variables["params"]
    expected = numpy_conv(
        x, np.asarray(p["kernel"]), np.asarray(p["bias"]), stride, pads, dilation, groups
    )
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_conv_parameter_count_formula():
    x = np.zeros((1, 8, 8, 6), np.float32)
    variables = Conv2d(features=9, kernel_size=3, groups=3).init(rng_key(0), x)
    count = sum(v.size for v in jax.tree.leaves(variables))
    assert count == (3 * 3 * 6 // 3 + 1) * 9


def test_kernel_larger_than_input_is_a_shape_error():
    x = np.zeros((1, 4, 4, 1), np.float32)
    with pytest.raises(ShapeError, match="larger than the padded input"):
        Conv2d(features=2, kernel_size=5, padding="valid").init(rng_key(0), x)


def test_groups_must_divide_channels():
    x = np.zeros((1, 4, 4, 3), np.float32)
    with pytest.raises(ShapeError, match="groups=2"):
        Conv2d(features=4, groups=2).init(rng_key(0), x)


def test_make_conv_unknown_kind_suggests():
    with pytest.raises(ConfigError, match="did you mean 'standard'"):
        make_conv("standrd")


def test_make_conv_binds_arguments():
    conv = make_conv("pointwise", use_bias=False)(features=5)
    variables = conv.init(rng_key(0), np.zeros((1, 3, 3, 2), np.float32))
    assert variables["params"]["kernel"].shape == (1, 1, 2, 5) and "bias" not in variables["params"]
