"""Pooling over NHWC activations, with the same shape validation as convolution.

Window pools (max, average, min, LP) take PyTorch's arguments: `window` (PyTorch's
`kernel_size`), `strides` (defaults to the window), `padding`, `dilation` (max and min only) and
`ceil_mode`. Their output size along one axis of length `n` is

    floor mode:  floor((n + p_b + p_a - d(k - 1) - 1) / s) + 1
    ceil mode:   ceil((n + p_b + p_a - d(k - 1) - 1) / s) + 1, minus 1 if that last window would
                 start in the right padding (at or after `n + p_b`)

(`pool_output_size`). Ceil mode keeps a last, partial window that runs past the padded input;
like PyTorch, the part past the padding is ignored (never counted, not even by
`count_include_pad`). Padding may be at most half the (dilated) window on each side, as in
PyTorch, so that every window overlaps the input.

Adaptive pools choose the windows from the output size instead (PyTorch's bins), and the
spatial pyramid pool concatenates several of them into one fixed-length vector.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar, NamedTuple

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from jax import lax

from cnnjax.errors import ConfigError, ShapeError, unknown_choice
from cnnjax.layers.backend import layer_name
from cnnjax.layers.shapes import PaddingSpec, as_pair, check_window, resolve_padding

SPP_METHODS = ("max", "avg")


def pool_output_size(
    size: int,
    kernel: int,
    stride: int,
    padding: tuple[int, int] = (0, 0),
    dilation: int = 1,
    ceil_mode: bool = False,
) -> int:
    """Length of one output axis of a pooling window, with PyTorch's `ceil_mode` rule.

    Args:
      size: input length `n` along the axis.
      kernel: window length `k` (before dilation).
      stride: step `s` between windows.
      padding: `(before, after)` padding.
      dilation: spacing `d` between window taps.
      ceil_mode: keep a last partial window, provided it starts inside the input or the
        padding before it.

    Returns:
      The output length (see the module docstring); below 1 when the window does not fit.
    """
    span = size + padding[0] + padding[1] - dilation * (kernel - 1) - 1
    if not ceil_mode:
        return span // stride + 1
    out = -(-span // stride) + 1
    if (out - 1) * stride >= size + padding[0]:
        out -= 1
    return out


def _check_4d(x: jnp.ndarray, layer: str) -> None:
    if x.ndim != 4:
        raise ShapeError(f"{layer}: expected NHWC input with 4 dims, got shape {x.shape}")


class PoolWindow(NamedTuple):
    """A validated window in `lax.reduce_window` form (batch and channel axes included); `pads`
    adds ceil mode's overhang to `user_pads`, the `(before, after)` padding asked for."""

    dims: tuple[int, ...]
    strides: tuple[int, ...]
    dilation: tuple[int, ...]
    pads: tuple[tuple[int, int], ...]
    user_pads: tuple[tuple[int, int], ...]
    out: tuple[int, int]


def plan_window(
    x: jnp.ndarray,
    window: int | Sequence[int],
    strides: int | Sequence[int] | None,
    padding: PaddingSpec,
    dilation: int | Sequence[int] = 1,
    ceil_mode: bool = False,
    layer: str = "pool",
) -> PoolWindow:
    """Validates a pooling window over `(N, H, W, C)` input and returns its `PoolWindow`.

    Raises:
      ShapeError: `x` is not 4-D, or the window is larger than the padded input.
      ConfigError: bad window, strides, dilation or padding, or padding over half the window.
    """
    _check_4d(x, layer)
    window = as_pair(window, "window")
    strides = window if strides is None else as_pair(strides, "strides")
    dilation = as_pair(dilation, "dilation")
    user_pads = resolve_padding(padding, window, dilation)
    for k, d, pair in zip(window, dilation, user_pads):
        # Wider padding could make a window see only padding: -inf from a max pool, 0/0 from an
        # average that does not count padding. PyTorch forbids it for the same reason.
        if max(pair) > (d * (k - 1) + 1) // 2:
            raise ConfigError(
                f"{layer}: padding {tuple(user_pads)} must be at most half the window "
                f"{tuple(d * (k - 1) + 1 for k, d in zip(window, dilation))} on each side"
            )
    check_window(layer, x.shape[1:3], window, strides, user_pads, dilation)
    out, pads = [], []
    for n, k, s, d, (before, after) in zip(x.shape[1:3], window, strides, dilation, user_pads):
        size = pool_output_size(n, k, s, (before, after), d, ceil_mode)
        reach = (size - 1) * s + d * (k - 1) + 1
        out.append(size)
        pads.append((before, after + max(0, reach - (n + before + after))))
    return PoolWindow(
        dims=(1, *window, 1),
        strides=(1, *strides, 1),
        dilation=(1, *dilation, 1),
        pads=((0, 0), *pads, (0, 0)),
        user_pads=user_pads,
        out=tuple(out),
    )


def _identity(dtype, op: str) -> jnp.ndarray:
    """The identity of max or min for `dtype`, so `reduce_window` keeps its gradient rule."""
    if jnp.issubdtype(dtype, jnp.floating):
        return np.asarray(-np.inf if op == "max" else np.inf, dtype)
    return np.asarray(jnp.iinfo(dtype).min if op == "max" else jnp.iinfo(dtype).max, dtype)


def _reduce(x: jnp.ndarray, plan: PoolWindow, op: str) -> jnp.ndarray:
    if plan.dilation != (1, 1, 1, 1):
        return _dilated_extreme(x, plan, op)
    reducer = lax.max if op == "max" else lax.min
    return lax.reduce_window(
        x, _identity(x.dtype, op), reducer, plan.dims, plan.strides, plan.pads, None, plan.dilation
    )


def _dilated_extreme(x: jnp.ndarray, plan: PoolWindow, op: str) -> jnp.ndarray:
    """Max or min over dilated windows, as a selection among the `k_h k_w` tap views.

    XLA's reduce_window has no gradient for a dilated max, so the window is unrolled: every tap
    gives a strided view `(N, H_out, W_out, C)` of the padded input, and the output takes, per
    position, the view that wins (`argmax`: the first in row-major window order on ties, as
    PyTorch). The selection is an integer index, so autodiff routes each output's gradient to
    that one input pixel, like XLA's undilated max pool and PyTorch (a max over the stacked views
    would split it among ties), in forward and reverse mode and to any order.
    """
    _, kh, kw, _ = plan.dims
    _, sh, sw, _ = plan.strides
    _, dh, dw, _ = plan.dilation
    (ho, wo), (n, _, _, c) = plan.out, x.shape
    padded = lax.pad(x, _identity(x.dtype, op), [(b, a, 0) for b, a in plan.pads])
    views = jnp.stack(
        [
            lax.slice(
                padded,
                (0, i * dh, j * dw, 0),
                (n, i * dh + sh * (ho - 1) + 1, j * dw + sw * (wo - 1) + 1, c),
                plan.strides,
            )
            for i in range(kh)
            for j in range(kw)
        ]
    )
    winner = jnp.argmax(views, axis=0) if op == "max" else jnp.argmin(views, axis=0)
    return jnp.take_along_axis(views, winner[None], axis=0)[0]


def _as_float(x: jnp.ndarray) -> jnp.ndarray:
    return x if jnp.issubdtype(x.dtype, jnp.inexact) else x.astype(jnp.float32)


def _window_sum(x: jnp.ndarray, plan: PoolWindow) -> jnp.ndarray:
    return lax.reduce_window(
        x, np.asarray(0, x.dtype), lax.add, plan.dims, plan.strides, plan.pads, None, plan.dilation
    )


def max_pool2d(
    x: jnp.ndarray,
    window: int | Sequence[int] = 2,
    strides: int | Sequence[int] | None = None,
    padding: PaddingSpec = "valid",
    dilation: int | Sequence[int] = 1,
    ceil_mode: bool = False,
    *,
    layer: str = "max_pool2d",
) -> jnp.ndarray:
    """Max over each window: `y[i, j, c] = max_{a, b} x[s i + d a - p, s j + d b - p, c]`.

    Padded positions count as -inf, so they never win. `strides` defaults to `window`.

    Args:
      x: `(N, H, W, C)`, any float or integer dtype.
      window: `k` or `(k_h, k_w)`.
      strides: `s` or `(s_h, s_w)`; None: the window.
      padding: "valid", "same", an int, one int per axis or `(before, after)` per axis.
      dilation: spacing between window taps.
      ceil_mode: keep a last partial window (PyTorch's rule, see the module docstring).
      layer: name for error messages.

    Returns:
      `(N, H_out, W_out, C)` with `H_out = pool_output_size(H, k_h, s_h, p_h, d_h, ceil_mode)`.
    """
    plan = plan_window(x, window, strides, padding, dilation, ceil_mode, layer)
    return _reduce(x, plan, "max")


def min_pool2d(
    x: jnp.ndarray,
    window: int | Sequence[int] = 2,
    strides: int | Sequence[int] | None = None,
    padding: PaddingSpec = "valid",
    dilation: int | Sequence[int] = 1,
    ceil_mode: bool = False,
    *,
    layer: str = "min_pool2d",
) -> jnp.ndarray:
    """Min over each window, `-max_pool2d(-x)`; padded positions count as +inf.

    Arguments and shapes as in `max_pool2d`. Morphological erosion with a flat structuring
    element (max pooling at stride 1 is dilation).
    """
    plan = plan_window(x, window, strides, padding, dilation, ceil_mode, layer)
    return _reduce(x, plan, "min")


def avg_pool2d(
    x: jnp.ndarray,
    window: int | Sequence[int] = 2,
    strides: int | Sequence[int] | None = None,
    padding: PaddingSpec = "valid",
    count_include_pad: bool = True,
    ceil_mode: bool = False,
    *,
    layer: str = "avg_pool2d",
) -> jnp.ndarray:
    """Mean over each window. `strides` defaults to `window`.

    Args:
      x: `(N, H, W, C)`; integer input is averaged in float32.
      window, strides, padding, ceil_mode: as in `max_pool2d` (no dilation, as in PyTorch).
      count_include_pad: divide by the number of window positions inside the padded input
        (PyTorch's default: the full `k_h k_w` except for ceil mode's partial windows) instead
        of the number of real input pixels under the window.
      layer: name for error messages.

    Returns:
      `(N, H_out, W_out, C)`, sizes as in `max_pool2d`.
    """
    plan = plan_window(x, window, strides, padding, 1, ceil_mode, layer)
    x = _as_float(x)
    total = _window_sum(x, plan)
    if not count_include_pad:
        return total / _window_sum(jnp.ones((1, *x.shape[1:3], 1), x.dtype), plan)
    if plan.pads[1:3] == plan.user_pads:
        return total / (plan.dims[1] * plan.dims[2])
    # PyTorch counts the padded input under the window, not ceil mode's overhang past it.
    padded = tuple(n + b + a for n, (b, a) in zip(x.shape[1:3], plan.user_pads))
    overhang = tuple((0, p[1] - u[1]) for p, u in zip(plan.pads[1:3], plan.user_pads))
    ones = jnp.ones((1, *padded, 1), x.dtype)
    return total / _window_sum(ones, plan._replace(pads=((0, 0), *overhang, (0, 0))))


def lp_pool2d(
    x: jnp.ndarray,
    p: float,
    window: int | Sequence[int] = 2,
    strides: int | Sequence[int] | None = None,
    ceil_mode: bool = False,
    *,
    padding: PaddingSpec = "valid",
    layer: str = "lp_pool2d",
) -> jnp.ndarray:
    """LP (power) pooling: `y = (sum_{window} x^p)^(1/p)`, as `torch.nn.functional.lp_pool2d`.

    `p = 1` is sum pooling, `p = 2` the L2 norm of the window (Sermanet et al. 2012), and
    `p -> inf` approaches max pooling for non-negative input. The power average (generalized
    mean, the "GeM" pooling of Radenović et al. 2018) is `(mean x^p)^(1/p) =
    (k_h k_w)^(-1/p) lp_pool2d(x, p)`, between the average (`p = 1`) and the max (`p -> inf`).

    As in PyTorch, `x^p` of a negative `x` is NaN for non-integer `p`, so feed non-negative
    activations (after a ReLU); where a window sums to 0 the output and its gradient are 0.
    Zero padding contributes 0 to the sum; ceil mode's partial windows sum over the pixels they
    cover (PyTorch instead rescales them by `k_h k_w / covered`).

    Args:
      x: `(N, H, W, C)`.
      p: the power, a positive finite number (PyTorch's `norm_type`); an int uses exact integer
        powers.
      window, strides, ceil_mode: as in `max_pool2d`.
      padding: zero padding (PyTorch's `lp_pool2d` has none).
      layer: name for error messages.

    Returns:
      `(N, H_out, W_out, C)`, sizes as in `max_pool2d`.
    """
    if isinstance(p, bool) or not isinstance(p, int | float | np.number) or not 0 < p < np.inf:
        raise ConfigError(f"{layer}: p must be a positive finite number, got {p!r}")
    plan = plan_window(x, window, strides, padding, 1, ceil_mode, layer)
    x = _as_float(x)
    total = _window_sum(jnp.power(x, p), plan)
    # d(S^(1/p))/dS is infinite at S = 0 (an all-zero window) and the chain rule would give
    # inf * 0 = NaN; the root of a safe S keeps the gradient 0 there, as PyTorch's lp_pool2d.
    # Only S == 0 is replaced: a NaN sum (negative input, fractional p) stays NaN, as documented.
    zero = total == 0
    return jnp.where(zero, 0.0, jnp.where(zero, 1.0, total) ** (1.0 / p))


def global_avg_pool(x: jnp.ndarray, keepdims: bool = False) -> jnp.ndarray:
    """`(N, H, W, C) -> (N, C)` mean over all positions (`(N, 1, 1, C)` with `keepdims`)."""
    _check_4d(x, "global_avg_pool")
    return jnp.mean(_as_float(x), axis=(1, 2), keepdims=keepdims)


def global_max_pool(x: jnp.ndarray, keepdims: bool = False) -> jnp.ndarray:
    """`(N, H, W, C) -> (N, C)` max over all positions (`(N, 1, 1, C)` with `keepdims`)."""
    _check_4d(x, "global_max_pool")
    return jnp.max(x, axis=(1, 2), keepdims=keepdims)


def adaptive_bins(size: int, out: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive bins: bin `i` is `[floor(i n / out), ceil((i + 1) n / out))`.

    The bins cover the axis, differ in length by at most one, and adjacent bins share at most
    one pixel (where `out` does not divide `n`); every bin is non-empty, even when `out > n`.
    """
    return [(i * size // out, -(-(i + 1) * size // out)) for i in range(out)]


def _adaptive_axis(x: jnp.ndarray, axis: int, out: int, op: str) -> jnp.ndarray:
    size = x.shape[axis]
    reduce = jnp.max if op == "max" else jnp.mean
    if size % out == 0:
        return reduce(x.reshape(*x.shape[:axis], out, size // out, *x.shape[axis + 1 :]), axis + 1)
    bins = np.array(adaptive_bins(size, out))
    lengths = bins[:, 1] - bins[:, 0]
    taps = np.arange(lengths.max())
    # Short bins repeat their last pixel: harmless for the max, masked out of the mean.
    index = np.minimum(bins[:, :1] + taps, bins[:, 1:] - 1)
    gathered = jnp.take(x, index.reshape(-1), axis=axis)
    gathered = gathered.reshape(*x.shape[:axis], out, len(taps), *x.shape[axis + 1 :])
    if op == "max":
        return jnp.max(gathered, axis + 1)
    trailing = (1,) * (x.ndim - axis - 1)
    mask = (taps < lengths[:, None]).reshape(out, len(taps), *trailing)
    return jnp.sum(jnp.where(mask, gathered, 0), axis + 1) / lengths.reshape(out, *trailing)


def _adaptive(x, output_size, op: str, layer: str) -> jnp.ndarray:
    _check_4d(x, layer)
    if isinstance(output_size, int | np.integer) or output_size is None:
        output_size = (output_size, output_size)
    # None keeps that axis, as in PyTorch.
    sizes = tuple(n if o is None else o for n, o in zip(x.shape[1:3], tuple(output_size)))
    sizes = as_pair(sizes, "output_size")
    x = _as_float(x) if op == "avg" else x
    # A rectangle's max (mean) is the max (mean) over rows of the per-row max (mean): pool the
    # two axes one after the other.
    return _adaptive_axis(_adaptive_axis(x, 1, sizes[0], op), 2, sizes[1], op)


def adaptive_avg_pool2d(
    x: jnp.ndarray, output_size: int | Sequence[int | None], *, layer: str = "adaptive_avg_pool2d"
) -> jnp.ndarray:
    """Mean over PyTorch's adaptive bins (`adaptive_bins`): any input size to `output_size`.

    Args:
      x: `(N, H, W, C)`.
      output_size: `o` or `(o_h, o_w)`; None for an axis keeps its size.
      layer: name for error messages.

    Returns:
      `(N, o_h, o_w, C)`.
    """
    return _adaptive(x, output_size, "avg", layer)


def adaptive_max_pool2d(
    x: jnp.ndarray, output_size: int | Sequence[int | None], *, layer: str = "adaptive_max_pool2d"
) -> jnp.ndarray:
    """Max over PyTorch's adaptive bins (`adaptive_bins`); arguments as `adaptive_avg_pool2d`."""
    return _adaptive(x, output_size, "max", layer)


def spatial_pyramid_pool(
    x: jnp.ndarray,
    levels: Sequence[int] = (1, 2, 4),
    method: str = "max",
    *,
    layer: str = "spatial_pyramid_pool",
) -> jnp.ndarray:
    """Spatial pyramid pooling (He et al. 2014, SPPNet): a fixed-length vector for any input size.

    Level `l` pools the map into an `l x l` grid of adaptive bins (`adaptive_bins`; SPPNet's
    own windows, `ceil(n / l)` wide at stride `floor(n / l)`, can miss the last pixels). The
    features are ordered level by level (in the order of `levels`), each level's bins row-major
    (top row first, left to right), channels fastest:

        index = sum_{m < level} C l_m^2 + (i l + j) C + c   for bin (i, j), channel c

    i.e. `concat([adaptive_pool(x, l).reshape(N, -1) for l in levels], axis=-1)`.

    Args:
      x: `(N, H, W, C)`, any `H, W` (bins overlap when `H < l`).
      levels: grid sizes.
      method: "max" (SPPNet) or "avg".
      layer: name for error messages.

    Returns:
      `(N, C * sum(l * l for l in levels))`.
    """
    if method not in SPP_METHODS:
        raise ConfigError(unknown_choice(f"{layer} method", method, SPP_METHODS))
    levels = tuple(levels)
    if not levels:
        raise ConfigError(f"{layer}: levels must be positive ints, got {levels!r}")
    pooled = []
    for level in levels:
        if not isinstance(level, int | np.integer) or level < 1:
            raise ConfigError(f"{layer}: levels must be positive ints, got {levels!r}")
        grid = _adaptive(x, int(level), method, layer)
        pooled.append(grid.reshape(x.shape[0], -1))
    return jnp.concatenate(pooled, axis=-1)


class MaxPool2d(nn.Module):
    """Module form of `max_pool2d` (no parameters); fields are its arguments."""

    # The function the module applies; MinPool2d swaps it and keeps the fields.
    pool_fn: ClassVar[Callable[..., jnp.ndarray]] = staticmethod(max_pool2d)
    window: int | Sequence[int] = 2
    strides: int | Sequence[int] | None = None
    padding: PaddingSpec = "valid"
    dilation: int | Sequence[int] = 1
    ceil_mode: bool = False

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """`(N, H, W, C) -> (N, H_out, W_out, C)`."""
        return self.pool_fn(
            x,
            self.window,
            self.strides,
            self.padding,
            self.dilation,
            self.ceil_mode,
            layer=layer_name(self),
        )


class MinPool2d(MaxPool2d):
    """Module form of `min_pool2d` (no parameters); fields as in `MaxPool2d`."""

    pool_fn: ClassVar[Callable[..., jnp.ndarray]] = staticmethod(min_pool2d)


class AvgPool2d(nn.Module):
    """Module form of `avg_pool2d` (no parameters); fields are its arguments."""

    window: int | Sequence[int] = 2
    strides: int | Sequence[int] | None = None
    padding: PaddingSpec = "valid"
    count_include_pad: bool = True
    ceil_mode: bool = False

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """`(N, H, W, C) -> (N, H_out, W_out, C)`."""
        return avg_pool2d(
            x,
            self.window,
            self.strides,
            self.padding,
            self.count_include_pad,
            self.ceil_mode,
            layer=layer_name(self),
        )


class LPPool2d(nn.Module):
    """Module form of `lp_pool2d` (no parameters); `p` is PyTorch's `norm_type`."""

    p: float = 2.0
    window: int | Sequence[int] = 2
    strides: int | Sequence[int] | None = None
    ceil_mode: bool = False
    padding: PaddingSpec = "valid"

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """`(N, H, W, C) -> (N, H_out, W_out, C)`."""
        return lp_pool2d(
            x,
            self.p,
            self.window,
            self.strides,
            self.ceil_mode,
            padding=self.padding,
            layer=layer_name(self),
        )


class GlobalAvgPool(nn.Module):
    """Module form of `global_avg_pool`: `(N, H, W, C) -> (N, C)`, or `(N, 1, 1, C)`."""

    keepdims: bool = False

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """Mean over all positions."""
        return global_avg_pool(x, self.keepdims)


class GlobalMaxPool(nn.Module):
    """Module form of `global_max_pool`: `(N, H, W, C) -> (N, C)`, or `(N, 1, 1, C)`."""

    keepdims: bool = False

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """Max over all positions."""
        return global_max_pool(x, self.keepdims)


class AdaptiveAvgPool2d(nn.Module):
    """Module form of `adaptive_avg_pool2d`: `(N, H, W, C) -> (N, o_h, o_w, C)`."""

    output_size: int | Sequence[int | None] = 1

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """Mean over adaptive bins."""
        return adaptive_avg_pool2d(x, self.output_size, layer=layer_name(self))


class AdaptiveMaxPool2d(nn.Module):
    """Module form of `adaptive_max_pool2d`: `(N, H, W, C) -> (N, o_h, o_w, C)`."""

    output_size: int | Sequence[int | None] = 1

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """Max over adaptive bins."""
        return adaptive_max_pool2d(x, self.output_size, layer=layer_name(self))


class SpatialPyramidPool(nn.Module):
    """Module form of `spatial_pyramid_pool`: `(N, H, W, C) -> (N, C * sum(l^2))`."""

    levels: Sequence[int] = (1, 2, 4)
    method: str = "max"

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """Concatenated pyramid of adaptive pools, ordered as in `spatial_pyramid_pool`."""
        return spatial_pyramid_pool(x, self.levels, self.method, layer=layer_name(self))
