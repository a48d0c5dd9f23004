"""Anti-aliased downsampling (Zhang 2019, "Making Convolutional Networks Shift-Invariant Again").

Subsampling by `s` aliases every frequency above `1/(2s)`: shifting the input by one pixel can
change a strided layer's output completely. Zhang low-pass filters before subsampling, with a
fixed binomial filter, and rewrites each downsampling layer as a dense (stride 1) evaluation
followed by blurred subsampling:

    MaxPool(k, s)        ->  BlurPool(m, s) . MaxPool(k, 1)          (`MaxBlurPool`)
    ReLU . Conv(k, s)    ->  BlurPool(m, s) . ReLU . Conv(k, 1)      (`ConvBlurPool`)
    AvgPool(k, s)        ->  BlurPool(m, s)                          (`BlurPool`)

The last line is the paper's: average pooling is already blurred subsampling with a box filter,
and the binomial filter is a better low-pass filter. `BlurAvgPool` keeps the box as well (box
`k`, stride 1, then BlurPool): since `[1, 1] * binomial(m) = binomial(m + 1)`, `window=2` is a
slightly stronger blur with the output size of `AvgPool(2, 2)`, and `window=1` is BlurPool.

The filter is fixed, so none of these layers adds parameters (`ConvBlurPool` has its conv's).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from jax import lax

from cnnjax.errors import ConfigError, ShapeError
from cnnjax.layers.backend import layer_name
from cnnjax.layers.conv import Conv2d
from cnnjax.layers.padding import check_pad_mode, pad
from cnnjax.layers.pooling import avg_pool2d, max_pool2d
from cnnjax.layers.shapes import PaddingSpec, as_pair

MAX_FILTER_SIZE = 7


def binomial_taps(size: int) -> np.ndarray:
    """Row `size - 1` of Pascal's triangle, normalized to sum to 1: `C(size - 1, i) / 2^(size-1)`.

    Raises:
      ConfigError: `size` outside 1..7 (Zhang's filters: `[1]`, `[1, 1]`, `[1, 2, 1]`, ...).
    """
    if isinstance(size, bool) or not isinstance(size, int | np.integer):
        raise ConfigError(f"filter_size must be an int in 1..{MAX_FILTER_SIZE}, got {size!r}")
    if not 1 <= size <= MAX_FILTER_SIZE:
        raise ConfigError(f"filter_size must be an int in 1..{MAX_FILTER_SIZE}, got {size!r}")
    row = np.array([math.comb(size - 1, i) for i in range(size)], np.float64)
    return (row / row.sum()).astype(np.float32)


def binomial_filter(size: int) -> np.ndarray:
    """Zhang's 2-D blur filter: the outer product of `binomial_taps(size)` with itself.

    Size 1 is the identity (plain subsampling), 2 the box filter, 3 `[1, 2, 1]ᵀ[1, 2, 1] / 16`.
    Binomial filters approximate a Gaussian of variance `(size - 1) / 4`; they are symmetric and
    sum to 1 (the entries are dyadic, so exactly in float32).

    Returns:
      `(size, size)` float32.
    """
    taps = binomial_taps(size)
    return np.outer(taps, taps)


def blur_pool2d(
    x: jnp.ndarray,
    filter_size: int = 3,
    strides: int | Sequence[int] = 2,
    pad_mode: str = "reflect",
    *,
    layer: str = "blur_pool2d",
) -> jnp.ndarray:
    """Blurred subsampling: depthwise convolution with `binomial_filter(filter_size)` at stride s.

    The input is padded by `(m - 1) // 2` before and `m // 2` after (the "same" padding, as
    Zhang's reference code), so the output has `ceil(H / s)` rows. The filter is separable; it is
    applied as two 1-D passes of shifted, strided slices (exact float arithmetic, no matmul
    precision modes).

    Args:
      x: `(N, H, W, C)`.
      filter_size: `m` in 1..7; 1 is plain subsampling `x[:, ::s, ::s]`.
      strides: `s` or `(s_h, s_w)`.
      pad_mode: a mode of `cnnjax.layers.padding.pad` ("reflect" as in the paper, "zeros",
        "constant" (0), "replicate", "circular").
      layer: name for error messages.

    Returns:
      `(N, ceil(H / s_h), ceil(W / s_w), C)`.

    Raises:
      ShapeError: non-4-D input, or "reflect" padding on an axis not longer than the padding.
    """
    if x.ndim != 4:
        raise ShapeError(f"{layer}: expected NHWC input with 4 dims, got shape {x.shape}")
    taps = binomial_taps(filter_size)
    strides = as_pair(strides, "strides")
    check_pad_mode(pad_mode)
    if pad_mode == "reflect" and min(x.shape[1:3]) <= filter_size // 2:
        raise ShapeError(
            f"{layer}: reflect padding by {filter_size // 2} needs spatial axes longer than "
            f"that, got input spatial shape {tuple(x.shape[1:3])}; use another pad_mode"
        )
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        x = x.astype(jnp.float32)
    y = pad(x, "same", pad_mode, kernel_size=filter_size)
    for axis, stride in zip((1, 2), strides):
        out = (x.shape[axis] - 1) // stride + 1
        span = (out - 1) * stride + 1
        terms = [
            float(t) * lax.slice_in_dim(y, a, a + span, stride, axis) for a, t in enumerate(taps)
        ]
        y = sum(terms[1:], terms[0])
    return y


def max_blur_pool2d(
    x: jnp.ndarray,
    window: int | Sequence[int] = 2,
    strides: int | Sequence[int] = 2,
    filter_size: int = 3,
    padding: PaddingSpec = "valid",
    pad_mode: str = "reflect",
    *,
    layer: str = "max_blur_pool2d",
) -> jnp.ndarray:
    """Zhang's MaxBlurPool: `max_pool2d(window, stride 1, padding)` then `blur_pool2d(stride s)`.

    `window=2, padding="valid"` replaces `MaxPool(2, 2)` with the same output size (`H - 1`
    rows after the dense max, `floor(H / 2)` after subsampling); `window=3, padding=1` replaces
    ResNet's `MaxPool(3, 2, padding=1)`.

    Returns:
      `(N, ceil(H_max / s_h), ceil(W_max / s_w), C)`, `H_max` the dense max pool's size.
    """
    dense = max_pool2d(x, window, 1, padding, layer=layer)
    return blur_pool2d(dense, filter_size, strides, pad_mode, layer=layer)


def blur_avg_pool2d(
    x: jnp.ndarray,
    window: int | Sequence[int] = 2,
    strides: int | Sequence[int] = 2,
    filter_size: int = 3,
    padding: PaddingSpec = "valid",
    pad_mode: str = "reflect",
    count_include_pad: bool = True,
    *,
    layer: str = "blur_avg_pool2d",
) -> jnp.ndarray:
    """`avg_pool2d(window, stride 1)` then `blur_pool2d(stride s)`: box * binomial filter.

    See the module docstring: `window=2` matches `AvgPool(2, 2)`'s output size, `window=1` is
    the paper's plain `BlurPool` replacement of average pooling.

    Returns:
      `(N, ceil(H_avg / s_h), ceil(W_avg / s_w), C)`, `H_avg` the dense average pool's size.
    """
    dense = avg_pool2d(x, window, 1, padding, count_include_pad, layer=layer)
    return blur_pool2d(dense, filter_size, strides, pad_mode, layer=layer)


class BlurPool(nn.Module):
    """Module form of `blur_pool2d` (Zhang's `Downsample`): no parameters.

    Attributes:
      filter_size: binomial filter size `m` in 1..7 (the paper recommends 3 to 5).
      strides: subsampling factor.
      pad_mode: border mode, see `blur_pool2d`.
    """

    filter_size: int = 3
    strides: int | Sequence[int] = 2
    pad_mode: str = "reflect"

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """`(N, H, W, C) -> (N, ceil(H / s), ceil(W / s), C)`."""
        return blur_pool2d(x, self.filter_size, self.strides, self.pad_mode, layer=layer_name(self))


class MaxBlurPool(nn.Module):
    """Module form of `max_blur_pool2d`: dense max pool, then BlurPool. No parameters."""

    window: int | Sequence[int] = 2
    strides: int | Sequence[int] = 2
    filter_size: int = 3
    padding: PaddingSpec = "valid"
    pad_mode: str = "reflect"

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """`(N, H, W, C) -> (N, H_out, W_out, C)`, see `max_blur_pool2d`."""
        return max_blur_pool2d(
            x,
            self.window,
            self.strides,
            self.filter_size,
            self.padding,
            self.pad_mode,
            layer=layer_name(self),
        )


class BlurAvgPool(nn.Module):
    """Module form of `blur_avg_pool2d`: dense average pool, then BlurPool. No parameters."""

    window: int | Sequence[int] = 2
    strides: int | Sequence[int] = 2
    filter_size: int = 3
    padding: PaddingSpec = "valid"
    pad_mode: str = "reflect"
    count_include_pad: bool = True

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """`(N, H, W, C) -> (N, H_out, W_out, C)`, see `blur_avg_pool2d`."""
        return blur_avg_pool2d(
            x,
            self.window,
            self.strides,
            self.filter_size,
            self.padding,
            self.pad_mode,
            self.count_include_pad,
            layer=layer_name(self),
        )


class ConvBlurPool(nn.Module):
    """A strided conv made shift-robust: `Conv(k, stride 1) -> act -> BlurPool(stride s)`.

    The paper's `ConvBlurPool`, replacing `act(Conv(k, s))`. It costs `s^2` times the conv's
    FLOPs of the strided version. In a Conv-BN-ReLU stack, compose the same recipe by hand:
    `Conv2d(strides=1) -> BatchNorm -> relu -> BlurPool(strides=s)`.

    Attributes:
      features: output channels.
      kernel_size: conv kernel.
      strides: subsampling factor of the BlurPool (the conv runs at stride 1).
      padding: conv padding ("same": `ceil(H / s)` output rows, as a strided "same" conv).
      use_bias: conv bias.
      act: nonlinearity between conv and blur; None for none (a linear conv then blur).
      filter_size: binomial filter size.
      pad_mode: BlurPool border mode.
      conv: conv constructor, e.g. `make_conv("separable")`; called with `features`,
        `kernel_size`, `strides=1`, `padding`, `use_bias`, `name`.

    Parameters: those of the conv, `(k^2 C_in + 1) C_out` for a standard one.
    """

    features: int
    kernel_size: int | Sequence[int] = 3
    strides: int | Sequence[int] = 2
    padding: PaddingSpec = "same"
    use_bias: bool = True
    act: Callable[[jnp.ndarray], jnp.ndarray] | None = nn.relu
    filter_size: int = 3
    pad_mode: str = "reflect"
    conv: Callable[..., Any] = Conv2d

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """`(N, H, W, C_in) -> (N, ceil(H_conv / s), ceil(W_conv / s), features)`."""
        y = self.conv(
            features=self.features,
            kernel_size=self.kernel_size,
            strides=1,
            padding=self.padding,
            use_bias=self.use_bias,
            name="conv",
        )(x)
        if self.act is not None:
            y = self.act(y)
        return blur_pool2d(y, self.filter_size, self.strides, self.pad_mode, layer=layer_name(self))
