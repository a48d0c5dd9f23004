"""Window, global, adaptive and pyramid pooling against numpy loops, Flax and PyTorch."""

import functools

import flax.linen as nn
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from cnnjax.errors import ConfigError, ShapeError
from cnnjax.layers.pooling import (
    AdaptiveAvgPool2d,
    AdaptiveMaxPool2d,
    AvgPool2d,
    GlobalAvgPool,
    GlobalMaxPool,
    LPPool2d,
    MaxPool2d,
    MinPool2d,
    SpatialPyramidPool,
    adaptive_avg_pool2d,
    adaptive_max_pool2d,
    avg_pool2d,
    global_avg_pool,
    global_max_pool,
    lp_pool2d,
    max_pool2d,
    min_pool2d,
    pool_output_size,
    spatial_pyramid_pool,
)
from cnnjax.layers.shapes import as_pair, resolve_padding
from tests.layers.helpers import rng_key


def normal(seed, *shape):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def jitted(fn, *args, **kwargs):
    """`fn(x, *args, **kwargs)` compiled with the configuration static."""
    return jax.jit(lambda x: fn(x, *args, **kwargs))


def window_starts(n, k, s, d, before, after, ceil_mode):
    """Window starts in padded coordinates, from the definition rather than the size formula.

    Full windows fit in the padded input. Ceil mode adds a partial window while the previous one
    stops short of the end, provided it starts inside the input or the padding before it.
    """
    padded, extent, starts = n + before + after, d * (k - 1) + 1, []
    while True:
        start = len(starts) * s
        full = start + extent <= padded
        partial = ceil_mode and start < before + n and start - s + extent < padded
        if not (full or partial):
            return starts
        starts.append(start)


def numpy_pool(x, reduce, window, strides, pads, dilation=(1, 1), ceil_mode=False):
    """`reduce(real_values, positions)` over every window, by direct loops.

    `real_values` are the `(count, N, C)` input pixels under the window, `positions` the number of
    window taps inside the padded input (ceil mode's overhang past the padding excluded).
    """
    _, h, w, _ = x.shape
    (kh, kw), (sh, sw), (dh, dw), ((top, bottom), (left, right)) = window, strides, dilation, pads
    rows = window_starts(h, kh, sh, dh, top, bottom, ceil_mode)
    cols = window_starts(w, kw, sw, dw, left, right, ceil_mode)
    out = np.zeros((x.shape[0], len(rows), len(cols), x.shape[3]))
    for i, r0 in enumerate(rows):
        for j, c0 in enumerate(cols):
            real, positions = [], 0
            for a in range(kh):
                for b in range(kw):
                    r, c = r0 + a * dh - top, c0 + b * dw - left
                    if r >= h + bottom or c >= w + right:
                        continue
                    positions += 1
                    if 0 <= r < h and 0 <= c < w:
                        real.append(x[:, r, c].astype(np.float64))
            out[:, i, j] = reduce(np.reshape(real, (-1, *x.shape[::3])), positions)
    return out


def np_max(real, positions):
    return np.max(real, axis=0, initial=-np.inf)  # a dilated window can miss the input


def np_min(real, positions):
    return np.min(real, axis=0, initial=np.inf)


def np_mean(count_include_pad):
    return lambda real, positions: np.sum(real, 0) / (positions if count_include_pad else len(real))


def np_lp(p):
    return lambda real, positions: np.sum(np.power(real, p), 0) ** (1 / p)


@st.composite
def window_cases(draw, symmetric=False):
    """Windows, strides, dilation, padding within half the window (PyTorch's limit), ceil mode,
    and an input size the window fits."""
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    pads = []
    for k in kernel:
        before = draw(st.integers(0, k // 2))
        pads.append((before, before if symmetric else draw(st.integers(0, k // 2))))
    size = tuple(
        draw(st.integers(max(1, d * (k - 1) + 1 - sum(p)), 7))
        for k, d, p in zip(kernel, dilation, pads)
    )
    return kernel, strides, dilation, tuple(pads), draw(st.booleans()), size


@settings(max_examples=25, deadline=None)
@given(case=window_cases(), p=st.sampled_from([1, 2, 3, 1.5]))
def test_window_pools_match_numpy_loops(case, p):
    kernel, strides, dilation, pads, ceil_mode, (h, w) = case
    x = normal(0, 2, h, w, 3)
    common = dict(ceil_mode=ceil_mode, window=kernel, strides=strides, padding=pads)
    for fn, reduce in [(max_pool2d, np_max), (min_pool2d, np_min)]:
        got = jitted(fn, dilation=dilation, **common)(x)
        expected = numpy_pool(x, reduce, kernel, strides, pads, dilation, ceil_mode)
        np.testing.assert_allclose(got, expected, rtol=1e-6, err_msg=fn.__name__)
    for include in (True, False):
        got = jitted(avg_pool2d, count_include_pad=include, **common)(x)
        expected = numpy_pool(x, np_mean(include), kernel, strides, pads, ceil_mode=ceil_mode)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    positive = np.abs(x) + 0.1  # non-integer powers of negative numbers are NaN
    got = jitted(lp_pool2d, p, **common)(positive)
    expected = numpy_pool(positive, np_lp(p), kernel, strides, pads, ceil_mode=ceil_mode)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def numpy_extreme_gradient(x, cotangent, op, window, strides, pads, dilation, ceil_mode):
    """Gradient of a max (`op=np.greater`) or min pool by loops: each output's cotangent goes to
    the first tap in row-major window order that holds the window's extreme (PyTorch's rule)."""
    _, h, w, _ = x.shape
    (kh, kw), (sh, sw), (dh, dw), ((top, bottom), (left, right)) = window, strides, dilation, pads
    rows = window_starts(h, kh, sh, dh, top, bottom, ceil_mode)
    cols = window_starts(w, kw, sw, dw, left, right, ceil_mode)
    grad = np.zeros(x.shape)
    for n in range(x.shape[0]):
        for ch in range(x.shape[3]):
            for i, r0 in enumerate(rows):
                for j, c0 in enumerate(cols):
                    best = None
                    for a in range(kh):
                        for b in range(kw):
                            r, c = r0 + a * dh - top, c0 + b * dw - left
                            inside = 0 <= r < h and 0 <= c < w
                            if inside and (best is None or op(x[n, r, c, ch], x[n, *best, ch])):
                                best = (r, c)
                    if best is not None:
                        grad[n, *best, ch] += cotangent[n, i, j, ch]
    return grad


@settings(max_examples=8, deadline=None)
@given(case=window_cases())
def test_max_and_min_pool_gradients_go_to_one_winner_per_window(case):
    """Dilated windows too (XLA has no gradient for them); integer-valued input makes ties."""
    kernel, strides, dilation, pads, ceil_mode, (h, w) = case
    x = np.random.default_rng(1).integers(0, 3, size=(2, h, w, 2)).astype(np.float32)
    common = dict(window=kernel, strides=strides, padding=pads, ceil_mode=ceil_mode)
    for fn, op in [(max_pool2d, np.greater), (min_pool2d, np.less)]:
        out, vjp = jax.vjp(lambda x, fn=fn: fn(x, dilation=dilation, **common), x)
        cotangent = normal(3, *out.shape)
        expected = numpy_extreme_gradient(
            x, cotangent, op, kernel, strides, pads, dilation, ceil_mode
        )
        np.testing.assert_allclose(vjp(cotangent)[0], expected, 1e-5, 1e-6, err_msg=fn.__name__)


@settings(max_examples=15, deadline=None)
@given(case=window_cases(symmetric=True))
def test_max_pool_gradient_matches_torch(case):
    """Dilation, padding, ceil mode and ties (integer-valued input) against PyTorch's backward."""
    torch = pytest.importorskip("torch")
    kernel, strides, dilation, pads, ceil_mode, (h, w) = case
    padding = tuple(pair[0] for pair in pads)
    x = np.random.default_rng(1).integers(0, 3, size=(2, h, w, 3)).astype(np.float32)
    pool = functools.partial(
        max_pool2d, window=kernel, strides=strides, padding=padding, dilation=dilation
    )
    out, vjp = jax.vjp(lambda x: pool(x, ceil_mode=ceil_mode), x)
    cotangent = normal(3, *out.shape)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).double()
    xt.requires_grad_(True)
    yt = torch.nn.functional.max_pool2d(xt, kernel, strides, padding, dilation, ceil_mode)
    yt.backward(torch.from_numpy(np.ascontiguousarray(cotangent.transpose(0, 3, 1, 2))).double())
    expected = xt.grad.numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(vjp(cotangent)[0], expected, rtol=1e-5, atol=1e-6)


def test_dilated_max_pool_has_forward_mode_and_second_order_derivatives():
    x = normal(4, 1, 7, 7, 2)
    pool = functools.partial(max_pool2d, window=3, strides=1, padding=2, dilation=2)
    tangent = normal(5, *x.shape)
    out, out_tangent = jax.jvp(pool, (x,), (tangent,))
    _, vjp = jax.vjp(pool, x)
    cotangent = normal(6, *out.shape)
    # <J t, c> = <t, J^T c>: forward and reverse mode describe the same linear map.
    np.testing.assert_allclose(
        np.sum(out_tangent * cotangent), np.sum(tangent * vjp(cotangent)[0]), rtol=1e-5
    )
    hessian_vector = jax.grad(lambda x: jnp.sum(jax.grad(lambda x: jnp.sum(pool(x) ** 2))(x)))(x)
    assert np.all(np.isfinite(hessian_vector))


def test_lp_pool_gradient_is_zero_on_an_all_zero_window():
    x = np.zeros((1, 4, 4, 1), np.float32)
    x[0, :2, :2, 0] = [[1.0, 2.0], [0.5, 3.0]]  # one window non-zero, three all zero
    for p in (1, 2, 3, 1.5):
        out = lp_pool2d(x, p, 2)
        grad = jax.grad(lambda x, p=p: jnp.sum(lp_pool2d(x, p, 2)))(x)
        assert np.all(np.isfinite(grad)), p
        np.testing.assert_array_equal(out[0, :, :, 0] == 0, [[False, True], [True, True]])
        window = x[0, :2, :2, 0].astype(np.float64)
        norm = np.sum(window**p) ** (1 / p)
        # d/dx (sum x^p)^(1/p) = x^(p-1) / norm^(p-1)
        np.testing.assert_allclose(grad[0, :2, :2, 0], window ** (p - 1) / norm ** (p - 1), 1e-5)
        np.testing.assert_array_equal(grad[0, 2:, :, 0], 0)
        np.testing.assert_array_equal(grad[0, :, 2:, 0], 0)


@pytest.mark.parametrize(
    "window, strides, padding",
    [(2, None, "valid"), (3, 2, "same"), ((3, 2), (1, 2), ((1, 0), (1, 1)))],
)
def test_max_and_avg_pool_match_flax_reduce_window(window, strides, padding):
    x = normal(1, 2, 7, 8, 3)
    pads = resolve_padding(padding, window)
    shape = as_pair(window, "window")
    steps = shape if strides is None else as_pair(strides, "strides")
    np.testing.assert_array_equal(
        max_pool2d(x, window, strides, padding), nn.max_pool(x, shape, steps, pads)
    )
    for include in (True, False):
        np.testing.assert_allclose(
            avg_pool2d(x, window, strides, padding, include),
            nn.avg_pool(x, shape, steps, pads, count_include_pad=include),
            rtol=1e-6,
        )
    np.testing.assert_array_equal(
        min_pool2d(x, window, strides, padding), -nn.max_pool(-x, shape, steps, pads)
    )


def test_pool_output_size_ceil_rule():
    # ceil((5 + 2 - 1 - 1) / 2) + 1 = 4, but window 4 would start at 6 = n + p: in the padding.
    assert pool_output_size(5, 2, 2, (1, 1), ceil_mode=True) == 3
    assert pool_output_size(5, 2, 2, (1, 1)) == 3
    assert pool_output_size(5, 2, 2, ceil_mode=True) == 3
    assert pool_output_size(5, 2, 2) == 2
    assert pool_output_size(6, 3, 2, (0, 0), 1, True) == 3
    assert pool_output_size(7, 3, 3, (1, 1), 2, True) == 3


@settings(max_examples=25, deadline=None)
@given(case=window_cases(symmetric=True), p=st.sampled_from([1, 2, 3, 1.5]))
def test_window_pools_match_torch(case, p):
    torch = pytest.importorskip("torch")
    functional = torch.nn.functional
    kernel, strides, dilation, pads, ceil_mode, (h, w) = case
    padding = tuple(pair[0] for pair in pads)
    x = normal(2, 2, h, w, 3)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).double()

    def check(got, expected):
        np.testing.assert_allclose(
            got, expected.numpy().transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-6
        )

    check(
        jitted(max_pool2d, kernel, strides, padding, dilation, ceil_mode)(x),
        functional.max_pool2d(xt, kernel, strides, padding, dilation, ceil_mode),
    )
    for include in (True, False):
        check(
            jitted(avg_pool2d, kernel, strides, padding, include, ceil_mode)(x),
            functional.avg_pool2d(xt, kernel, strides, padding, ceil_mode, include),
        )
    # PyTorch's lp_pool2d has no padding, and rescales ceil mode's partial windows.
    if h < kernel[0] or w < kernel[1]:
        return
    positive = np.abs(x) + 0.1
    check(
        jitted(lp_pool2d, p, kernel, strides)(positive),
        functional.lp_pool2d(
            torch.from_numpy(positive.transpose(0, 3, 1, 2)).double(), p, kernel, strides
        ),
    )


def numpy_adaptive(x, out, reduce):
    _, h, w, _ = x.shape
    rows = [(i * h // out[0], -(-(i + 1) * h // out[0])) for i in range(out[0])]
    cols = [(j * w // out[1], -(-(j + 1) * w // out[1])) for j in range(out[1])]
    return np.stack(
        [
            np.stack([reduce(x[:, r0:r1, c0:c1], axis=(1, 2)) for c0, c1 in cols], 1)
            for r0, r1 in rows
        ],
        1,
    )


@settings(max_examples=20, deadline=None)
@given(h=st.integers(1, 9), w=st.integers(1, 9), oh=st.integers(1, 5), ow=st.integers(1, 5))
def test_adaptive_pools_match_numpy_and_torch(h, w, oh, ow):
    x = normal(3, 2, h, w, 3)
    got_avg = jitted(adaptive_avg_pool2d, (oh, ow))(x)
    got_max = jitted(adaptive_max_pool2d, (oh, ow))(x)
    np.testing.assert_allclose(got_avg, numpy_adaptive(x, (oh, ow), np.mean), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got_max, numpy_adaptive(x, (oh, ow), np.max))
    torch = pytest.importorskip("torch")
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).double()
    expected = torch.nn.functional.adaptive_avg_pool2d(xt, (oh, ow)).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(got_avg, expected, rtol=1e-5, atol=1e-6)
    expected = torch.nn.functional.adaptive_max_pool2d(xt, (oh, ow)).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(got_max, expected, rtol=1e-6)


def test_adaptive_none_keeps_an_axis():
    x = normal(4, 1, 5, 6, 2)
    np.testing.assert_array_equal(
        adaptive_max_pool2d(x, (None, 3)), numpy_adaptive(x, (5, 3), np.max)
    )


@pytest.mark.parametrize("method, reduce", [("max", np.max), ("avg", np.mean)])
def test_spatial_pyramid_pool_is_fixed_length_concat_of_adaptive_pools(method, reduce):
    levels, channels = (1, 2, 4), 3
    spp = jax.jit(functools.partial(spatial_pyramid_pool, levels=levels, method=method))
    for h, w in [(4, 4), (7, 5), (13, 3), (2, 9)]:
        x = normal(h * w, 2, h, w, channels)
        got = np.asarray(spp(x))
        assert got.shape == (2, channels * (1 + 4 + 16))
        offset = 0
        for level in levels:
            grid = numpy_adaptive(x, (level, level), reduce)
            for i in range(level):
                for j in range(level):
                    index = offset + (i * level + j) * channels
                    np.testing.assert_allclose(
                        got[:, index : index + channels], grid[:, i, j], rtol=1e-5, atol=1e-6
                    )
            offset += channels * level * level


def test_global_pools():
    x = normal(5, 2, 3, 4, 5)
    np.testing.assert_allclose(global_avg_pool(x), x.mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_array_equal(global_max_pool(x), x.max(axis=(1, 2)))
    assert GlobalAvgPool(keepdims=True).apply({}, x).shape == (2, 1, 1, 5)
    assert GlobalMaxPool().apply({}, x).shape == (2, 5)
    with pytest.raises(ShapeError, match="global_max_pool"):
        global_max_pool(x[0])


def test_modules_wrap_functions_without_parameters_under_jit():
    x = normal(6, 2, 7, 6, 3)
    cases = [
        (MaxPool2d(3, 2, 1, ceil_mode=True), max_pool2d(x, 3, 2, 1, ceil_mode=True)),
        (MinPool2d(2, 1, dilation=2), min_pool2d(x, 2, 1, dilation=2)),
        (
            AvgPool2d(3, 2, 1, count_include_pad=False, ceil_mode=True),
            avg_pool2d(x, 3, 2, 1, False, True),
        ),
        (LPPool2d(2.0, 2), lp_pool2d(x, 2.0, 2)),
        (AdaptiveAvgPool2d((2, 3)), adaptive_avg_pool2d(x, (2, 3))),
        (AdaptiveMaxPool2d(3), adaptive_max_pool2d(x, 3)),
        (SpatialPyramidPool((1, 3), "avg"), spatial_pyramid_pool(x, (1, 3), "avg")),
    ]
    for module, expected in cases:
        assert module.init(rng_key(0), x) == {}
        np.testing.assert_allclose(jax.jit(module.apply)({}, x), expected, rtol=1e-6)


def test_max_pool_gradient_and_integer_input():
    x = normal(7, 1, 5, 5, 2)
    grad = jax.jit(jax.grad(lambda x: jnp.sum(max_pool2d(x, 2, 2, ceil_mode=True))))(x)
    assert np.all(np.isfinite(grad)) and grad.sum() == 9 * 2  # one winner per window
    pools = [
        functools.partial(min_pool2d, window=3, strides=2, ceil_mode=True),
        functools.partial(avg_pool2d, window=3, padding=1, count_include_pad=False, ceil_mode=True),
        functools.partial(lp_pool2d, p=3, window=2, ceil_mode=True),
        functools.partial(adaptive_max_pool2d, output_size=3),
        functools.partial(adaptive_avg_pool2d, output_size=2),
    ]
    for pool in pools:
        grad = jax.jit(jax.grad(lambda x, pool=pool: jnp.sum(pool(x))))(np.abs(x) + 0.1)
        assert np.all(np.isfinite(grad))
    ints = np.arange(16, dtype=np.int32).reshape(1, 4, 4, 1)
    np.testing.assert_array_equal(
        max_pool2d(ints, 2, padding=((1, 0), (1, 0)))[0, :, :, 0], [[0, 2], [8, 10]]
    )
    assert avg_pool2d(ints).dtype == jnp.float32


def test_errors_name_the_layer():
    x = np.zeros((1, 3, 3, 1), np.float32)
    with pytest.raises(ShapeError, match="MaxPool2d.*larger than the padded input"):
        MaxPool2d(window=5).apply({}, x)
    with pytest.raises(ShapeError, match="avg_pool2d"):
        avg_pool2d(x, 4)
    with pytest.raises(ConfigError, match="at most half the window"):
        max_pool2d(x, 2, padding=2)
    with pytest.raises(ConfigError, match="positive finite"):
        lp_pool2d(x, 0.0)
    with pytest.raises(ConfigError, match="did you mean 'avg'"):
        spatial_pyramid_pool(x, method="avgg")
    with pytest.raises(ConfigError, match="levels"):
        spatial_pyramid_pool(x, levels=(1, 0))
    with pytest.raises(ShapeError, match="adaptive_avg_pool2d"):
        adaptive_avg_pool2d(x[0], 2)
