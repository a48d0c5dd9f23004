"""Pooling over NHWC activations, with the same shape validation as convolution."""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
from jax import lax

from cnnjax.errors import ShapeError
from cnnjax.layers.shapes import PaddingSpec, as_pair, check_window, resolve_padding


def _window(x, window, strides, padding, layer):
    if x.ndim != 4:
        raise ShapeError(f"{layer}: expected NHWC input with 4 dims, got shape {x.shape}")
    window = as_pair(window, "window")
    strides = as_pair(window if strides is None else strides, "strides")
    pads = resolve_padding(padding, window)
    check_window(layer, x.shape[1:3], window, strides, pads)
    return (1, *window, 1), (1, *strides, 1), ((0, 0), *pads, (0, 0))


def max_pool2d(
    x: jnp.ndarray,
    window: int | Sequence[int] = 2,
    strides: int | Sequence[int] | None = None,
    padding: PaddingSpec = "valid",
    layer: str = "max_pool2d",
) -> jnp.ndarray:
    """Max over each window; padded positions count as -inf. `strides` defaults to `window`.

    Args:
      x: `(N, H, W, C)`.

    Returns:
      `(N, H_out, W_out, C)`.
    """
    dims, steps, pads = _window(x, window, strides, padding, layer)
    return lax.reduce_window(x, -jnp.inf, lax.max, dims, steps, pads)


def avg_pool2d(
    x: jnp.ndarray,
    window: int | Sequence[int] = 2,
    strides: int | Sequence[int] | None = None,
    padding: PaddingSpec = "valid",
    count_include_pad: bool = True,
    layer: str = "avg_pool2d",
) -> jnp.ndarray:
    """Mean over each window. `strides` defaults to `window`.

    Args:
      x: `(N, H, W, C)`.
      count_include_pad: divide by the full window size (PyTorch's default) instead of the number
        of real input pixels under the window.

    Returns:
      `(N, H_out, W_out, C)`.
    """
    dims, steps, pads = _window(x, window, strides, padding, layer)
    total = lax.reduce_window(x, 0.0, lax.add, dims, steps, pads)
    if count_include_pad:
        return total / (dims[1] * dims[2])
    ones = jnp.ones((1, *x.shape[1:3], 1), x.dtype)
    return total / lax.reduce_window(ones, 0.0, lax.add, dims, steps, pads)


def global_avg_pool(x: jnp.ndarray) -> jnp.ndarray:
    """`(N, H, W, C) -> (N, C)` mean over all spatial positions."""
    return jnp.mean(x, axis=(1, 2))
