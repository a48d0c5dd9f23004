"""Convolutions as pure functions: channels-last activations, `(*window, in/groups, out)` kernels.

Deep-learning "convolution" is cross-correlation, `y[i] = sum_a x[s*i + d*a - p] w[a]`; true
convolution flips the kernel (`flip_kernel=True`, i.e. correlation with `rot180(w)`). One
implementation serves 1-D (`(N, L, C)`, time series) and 2-D (`(N, H, W, C)`) inputs. Shapes are
checked before XLA sees them, so a kernel larger than the padded input is a `ShapeError` naming
the layer.

`impl` selects the kernels: "xla" is `lax.conv_general_dilated` and JAX's own gradient of it;
"onednn" calls oneDNN's forward, backward-data and backward-weights kernels through the XLA FFI
(`cnnjax.ext.onednn`, an optional compiled extension, several times faster on CPU); "explicit"
differentiates with the course's backpropagation formulas (`cnnjax.layers.backprop`). "auto"
(the default) is "onednn" on the CPU backend when the extension is available and the call is
supported (float32, no negative padding), else "xla": GPUs and TPUs always get XLA's native
convolutions. All compute the same function (tested to float32 rounding).

`conv_impl("xla")` (`cnnjax.layers.backend`) makes "auto" mean "xla" inside a `with` block
(`force=True`: "onednn" too). The analysis tools trace under it, so that they see
`conv_general_dilated` equations; forward-mode differentiation (`jax.jvp`, Hessian-vector
products) needs `conv_impl("xla", force=True)` too, since the oneDNN path and batch norm's
hand-written backward pass (`cnnjax.layers.norm`) are defined for reverse mode only; under it
both use JAX's own differentiation rules.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cnnjax.errors import ConfigError, ShapeError, unknown_choice
from cnnjax.layers.backend import CONV_IMPLS, conv_impl_override
from cnnjax.layers.backprop import explicit_conv
from cnnjax.layers.padding import check_pad_mode, pad
from cnnjax.layers.shapes import (
    PaddingSpec,
    as_tuple,
    check_window,
    conv_transpose_output_size,
    dimension_numbers,
    resolve_padding,
)


def select_impl(impl: str, x, kernel, pads, layer: str = "conv") -> str:
    """The implementation ("xla", "onednn" or "explicit") a convolution call runs with."""
    if impl not in CONV_IMPLS:
        raise ConfigError(unknown_choice("conv impl", impl, CONV_IMPLS))
    override, force = conv_impl_override()
    if override is not None and (impl == "auto" or (force and impl == "onednn")):
        impl = override
    if impl not in ("auto", "onednn"):
        return impl
    from cnnjax.ext import onednn

    supported = onednn.supports(x, kernel, pads)
    if impl == "auto":
        use = jax.default_backend() == "cpu" and supported and onednn.available()
        return "onednn" if use else "xla"
    if not supported:
        raise ConfigError(
            f"{layer}: impl 'onednn' needs float32 inputs and non-negative padding, got "
            f"{x.dtype} / {kernel.dtype} and padding {pads}; use impl 'auto' or 'xla'"
        )
    onednn.load()  # raises Unavailable with the reason
    return impl


def _check_channels(layer: str, x, kernel, groups: int) -> None:
    in_channels, out_channels = x.shape[-1], kernel.shape[-1]
    if groups < 1 or in_channels % groups or out_channels % groups:
        raise ShapeError(
            f"{layer}: groups={groups} must divide both input channels ({in_channels}) and "
            f"output channels ({out_channels})"
        )
    if kernel.shape[-2] * groups != in_channels:
        raise ShapeError(
            f"{layer}: kernel {kernel.shape} expects {kernel.shape[-2] * groups} input channels "
            f"with groups={groups}, got input shape {x.shape}"
        )


def conv(
    x: jnp.ndarray,
    kernel: jnp.ndarray,
    bias: jnp.ndarray | None = None,
    strides: int | Sequence[int] = 1,
    padding: PaddingSpec = "valid",
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    padding_value: float | Sequence[float] | jnp.ndarray = 0.0,
    flip_kernel: bool = False,
    precision=None,
    impl: str = "auto",
    layer: str = "conv",
) -> jnp.ndarray:
    """N-D convolution (cross-correlation) of channels-last input.

    Args:
      x: `(N, *spatial, C_in)` with 1 or 2 spatial axes.
      kernel: `(*window, C_in / groups, C_out)`; output channels are grouped group-major.
      bias: `(C_out,)` or None.
      strides, dilation: an int or one per spatial axis.
      padding: "valid", "same", "full", an int, one int per axis or `(before, after)` per axis
        (see `resolve_padding`).
      groups: channels are split into `groups` independent convolutions (`groups == C_in`:
        depthwise).
      padding_mode: how the padding is filled, one of `PAD_MODES`: "zeros", "constant"
        (`padding_value`), "reflect", "symmetric", "replicate" or "circular" (`pad`).
      padding_value: fill of "constant": a number or one per input channel; differentiable.
      flip_kernel: true convolution (kernel rotated 180 degrees) instead of cross-correlation.
      precision: `lax.Precision` of the products (None: the backend's default).
      impl: "auto", "xla", "onednn" or "explicit" (gradients from the course's formulas), see
        the module docstring.
      layer: name used in error messages.

    Returns:
      `(N, *out_spatial, C_out)` with `out = floor((size + before + after - d(k-1) - 1) / s) + 1`.
    """
    ndim = x.ndim - 2
    numbers = dimension_numbers(ndim)
    if kernel.ndim != ndim + 2:
        raise ShapeError(f"{layer}: kernel of shape {kernel.shape} does not fit input {x.shape}")
    _check_channels(layer, x, kernel, groups)
    if impl not in CONV_IMPLS:
        raise ConfigError(unknown_choice("conv impl", impl, CONV_IMPLS))
    window = kernel.shape[:ndim]
    strides = as_tuple(strides, ndim, "strides")
    dilation = as_tuple(dilation, ndim, "dilation")
    pads = resolve_padding(padding, window, dilation, ndim)
    check_window(layer, x.shape[1:-1], window, strides, pads, dilation)
    if check_pad_mode(padding_mode) != "zeros":
        x = pad(x, pads, padding_mode, padding_value)
        pads = ((0, 0),) * ndim
    if flip_kernel:
        kernel = jnp.flip(kernel, axis=tuple(range(ndim)))
    dtype = jnp.result_type(x.dtype, kernel.dtype)
    if isinstance(kernel, jax.Array | np.ndarray):
        x, kernel = x.astype(dtype), kernel.astype(dtype)
        impl = select_impl(impl, x, kernel, pads, layer)
    else:
        # A quantized kernel (qwix's PTQ weights): only lax.conv_general_dilated, which qwix
        # intercepts, knows what to do with it, so it takes the portable XLA path.
        x, impl = x.astype(dtype), "xla"
    if impl == "onednn":
        from cnnjax.ext.onednn import conv2d as onednn_conv

        y = onednn_conv(x, kernel, strides, pads, dilation, groups)
    elif impl == "explicit":
        y = explicit_conv(x, kernel, strides, pads, dilation, groups, precision)
    else:
        y = lax.conv_general_dilated(
            x,
            kernel,
            window_strides=strides,
            padding=pads,
            rhs_dilation=dilation,
            dimension_numbers=numbers,
            feature_group_count=groups,
            precision=precision,
        )
    return y if bias is None else y + bias.astype(y.dtype)


def conv1d(x, kernel, bias=None, strides=1, padding="valid", dilation=1, groups=1, **kwargs):
    """1-D convolution of `(N, L, C_in)` sequences with a `(k, C_in / groups, C_out)` kernel."""
    if x.ndim != 3:
        raise ShapeError(f"conv1d expects (N, L, C) input, got shape {x.shape}")
    return conv(x, kernel, bias, strides, padding, dilation, groups, **kwargs)


def conv2d(x, kernel, bias=None, strides=1, padding="valid", dilation=1, groups=1, **kwargs):
    """2-D convolution of `(N, H, W, C_in)` images, `(kh, kw, C_in / groups, C_out)` kernel."""
    if x.ndim != 4:
        raise ShapeError(f"conv2d expects (N, H, W, C) input, got shape {x.shape}")
    return conv(x, kernel, bias, strides, padding, dilation, groups, **kwargs)


def conv_transpose(
    x: jnp.ndarray,
    kernel: jnp.ndarray,
    bias: jnp.ndarray | None = None,
    strides: int | Sequence[int] = 1,
    padding: int | Sequence[int] | Sequence[tuple[int, int]] = 0,
    output_padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    precision=None,
    layer: str = "conv_transpose",
) -> jnp.ndarray:
    """Transposed convolution with PyTorch's `ConvTranspose` arguments, channels-last.

    It is the adjoint (vector-Jacobian product) of `conv` with the same strides, padding and
    dilation: each input pixel scatters `x[i] * w` to the output window at `s*i - p`.
    Computed as a correlation of the stride-dilated input, padded by `d(k-1) - p`, with the
    spatially flipped kernel.

    Args:
      x: `(N, *spatial, C_in)`.
      kernel: `(*window, C_in / groups, C_out)`, mapping input to output channels like `conv`
        (PyTorch stores the same numbers as `(C_in, C_out / groups, *window)`).
      padding: amount the forward convolution padded (removed from the output border); an int,
        one per axis or `(before, after)` per axis. Padding modes do not apply: this padding
        crops.
      output_padding: extra rows/columns after the output (< stride or dilation), to choose
        among the input sizes that a strided convolution maps to the same output size.

    Returns:
      `(N, *out, C_out)` with `out = (size - 1) s - before - after + d(k-1) + output_padding + 1`.
    """
    ndim = x.ndim - 2
    numbers = dimension_numbers(ndim)
    if kernel.ndim != ndim + 2:
        raise ShapeError(f"{layer}: kernel of shape {kernel.shape} does not fit input {x.shape}")
    _check_channels(layer, x, kernel, groups)
    window = kernel.shape[:ndim]
    strides = as_tuple(strides, ndim, "strides")
    dilation = as_tuple(dilation, ndim, "dilation")
    if isinstance(padding, str):
        raise ConfigError(f"{layer}: padding must be amounts, not {padding!r}")
    pads = resolve_padding(padding, window, dilation, ndim)
    extra = (output_padding,) * ndim if isinstance(output_padding, int) else tuple(output_padding)
    for op, s, d in zip(extra, strides, dilation):
        if not 0 <= op < max(s, d):
            raise ShapeError(
                f"{layer}: output_padding {tuple(extra)} must be >= 0 and smaller than the stride "
                f"{strides} or the dilation {dilation}"
            )
    out = [
        conv_transpose_output_size(size, k, s, p, d, op)
        for size, k, s, p, d, op in zip(x.shape[1:-1], window, strides, pads, dilation, extra)
    ]
    if min(out) < 1:
        raise ShapeError(
            f"{layer}: padding {pads} removes the whole output of size {tuple(out)} for input "
            f"{x.shape}, kernel {tuple(window)}, strides {strides}, dilation {dilation}"
        )
    full = [
        (d * (k - 1) - p0, d * (k - 1) - p1 + op)
        for k, d, (p0, p1), op in zip(window, dilation, pads, extra)
    ]
    dtype = jnp.result_type(x.dtype, kernel.dtype)
    y = lax.conv_general_dilated(
        x.astype(dtype),
        jnp.flip(kernel, axis=tuple(range(ndim))).astype(dtype),
        window_strides=(1,) * ndim,
        padding=full,  # negative amounts crop, which is what padding > d(k-1) means
        lhs_dilation=strides,
        rhs_dilation=dilation,
        dimension_numbers=numbers,
        feature_group_count=groups,
        precision=precision,
    )
    return y if bias is None else y + bias.astype(y.dtype)


def conv_transpose2d(x, kernel, bias=None, strides=1, padding=0, output_padding=0, **kwargs):
    """2-D `conv_transpose` of `(N, H, W, C_in)` images."""
    if x.ndim != 4:
        raise ShapeError(f"conv_transpose2d expects (N, H, W, C) input, got shape {x.shape}")
    return conv_transpose(x, kernel, bias, strides, padding, output_padding, **kwargs)
