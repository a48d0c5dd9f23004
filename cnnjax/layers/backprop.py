"""Convolution whose backward pass is written from the course's formulas (`jax.custom_vjp`).

For a layer `z = a_l ⋆ W` (cross-correlation with stride s, dilation d, zero padding p, groups g)
and the gradient `δ_{l+1} = ∂J/∂z` arriving from above:

  * input gradient: `δ_l = pad_full(dilate_s(δ_{l+1})) ⋆ rot180(W)ᵀ`, cropped by `p`:
    insert `s - 1` zeros between the rows and columns of `δ_{l+1}` (undoing the stride), pad by
    the dilated kernel extent `d(k-1)` on each side ("full" correlation), correlate with the kernel
    rotated by 180 degrees and with its input/output channels swapped inside each group (kernel
    dilation `d` is kept), then remove the forward padding `p`;
  * kernel gradient: `∂J/∂W = a_l ⋆ δ_{l+1}`: correlate the padded input with the stride-dilated
    output gradient, summing over the batch, with the output sampled every `d` pixels.

The two formulas are registered as `BACKWARD_KERNELS["formula"]`; a faster implementation (a
fused or hand-written kernel) registers another entry with the same signatures and is selected by
name, so models never change. `tests/layers/test_backprop.py` checks every entry against
`jax.grad` of `lax.conv_general_dilated`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from cnnjax.errors import ConfigError, unknown_choice
from cnnjax.layers.shapes import dimension_numbers

Pads = tuple[tuple[int, int], ...]


def dilate_stride(delta: jnp.ndarray, strides: tuple[int, ...]) -> jnp.ndarray:
    """Inserts `s - 1` zeros between neighbouring pixels of `(N, *spatial, C)`: undoes a stride."""
    config = [(0, 0, 0)] + [(0, 0, s - 1) for s in strides] + [(0, 0, 0)]
    return lax.pad(delta, jnp.zeros((), delta.dtype), config)


def rot180_transposed(kernel: jnp.ndarray, groups: int) -> jnp.ndarray:
    """`(*k, C_in/g, C_out) -> (*k, C_out/g, C_in)`: rot180, swap channels per group."""
    ndim = kernel.ndim - 2
    window, in_per_group, out_channels = kernel.shape[:ndim], kernel.shape[-2], kernel.shape[-1]
    out_per_group = out_channels // groups
    grouped = kernel.reshape(*window, in_per_group, groups, out_per_group)
    axes = tuple(range(ndim))
    swapped = jnp.transpose(grouped, (*axes, ndim + 2, ndim + 1, ndim))
    return jnp.flip(swapped, axis=axes).reshape(*window, out_per_group, groups * in_per_group)


def input_gradient(delta, kernel, padded_shape, strides, pads, dilation, groups, precision):
    """`δ_l` of the unpadded input, from `δ_{l+1}` of shape `(N, *out, C_out)`."""
    ndim = delta.ndim - 2
    window = kernel.shape[:ndim]
    dilated = dilate_stride(delta, strides)
    extents = [d * (k - 1) for k, d in zip(window, dilation)]
    # Rows of the padded input that no window reached (when the stride does not divide evenly)
    # get zero gradient: pad the end by that remainder.
    remainders = [
        size - (dilated_size + e)
        for size, dilated_size, e in zip(padded_shape[1:-1], dilated.shape[1:-1], extents)
    ]
    full = jnp.pad(dilated, [(0, 0)] + [(e, e + r) for e, r in zip(extents, remainders)] + [(0, 0)])
    padded_grad = lax.conv_general_dilated(
        full,
        rot180_transposed(kernel, groups),
        window_strides=(1,) * ndim,
        padding="VALID",
        rhs_dilation=dilation,
        dimension_numbers=dimension_numbers(ndim),
        feature_group_count=groups,
        precision=precision,
    )
    crop = tuple(slice(p0, size - p1) for (p0, p1), size in zip(pads, padded_shape[1:-1]))
    return padded_grad[(slice(None), *crop, slice(None))]


def kernel_gradient(padded_input, delta, kernel_shape, strides, dilation, groups, precision):
    """`∂J/∂W` of shape `(*k, C_in/g, C_out)` from the padded input and `δ_{l+1}`."""
    ndim = delta.ndim - 2
    # Correlate over space with the batch as the contracted "channel": the input's channels
    # become the batch axis, and the groups pair input-channel groups with output-channel groups.
    lhs = jnp.moveaxis(padded_input, (0, -1), (-1, 0))  # (C_in, *padded, N)
    rhs = jnp.moveaxis(delta, 0, -2)  # (*out, N, C_out)
    grad = lax.conv_general_dilated(
        lhs,
        rhs,
        window_strides=dilation,
        padding="VALID",
        rhs_dilation=strides,
        dimension_numbers=dimension_numbers(ndim),
        batch_group_count=groups,
        precision=precision,
    )  # (C_in / g, *k', C_out), k' >= k when the stride leaves unused rows
    grad = jnp.moveaxis(grad, 0, -2)
    return grad[tuple(slice(0, k) for k in kernel_shape[:ndim])]


class BackwardKernels(NamedTuple):
    """The two halves of a convolution's backward pass (signatures of the functions above)."""

    input_gradient: object
    kernel_gradient: object


BACKWARD_KERNELS: dict[str, BackwardKernels] = {
    "formula": BackwardKernels(input_gradient, kernel_gradient),
}


def _forward(x, kernel, strides, pads, dilation, groups, precision):
    padded = jnp.pad(x, [(0, 0), *pads, (0, 0)])
    y = lax.conv_general_dilated(
        padded,
        kernel,
        window_strides=strides,
        padding="VALID",
        rhs_dilation=dilation,
        dimension_numbers=dimension_numbers(x.ndim - 2),
        feature_group_count=groups,
        precision=precision,
    )
    return y, padded


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6, 7))
def _explicit_conv(x, kernel, strides, pads, dilation, groups, precision, backward):
    return _forward(x, kernel, strides, pads, dilation, groups, precision)[0]


def _explicit_conv_fwd(x, kernel, strides, pads, dilation, groups, precision, backward):
    y, padded = _forward(x, kernel, strides, pads, dilation, groups, precision)
    return y, (padded, kernel)


def _explicit_conv_bwd(strides, pads, dilation, groups, precision, backward, residuals, delta):
    padded, kernel = residuals
    kernels = BACKWARD_KERNELS[backward]
    dx = kernels.input_gradient(
        delta, kernel, padded.shape, strides, pads, dilation, groups, precision
    )
    dw = kernels.kernel_gradient(padded, delta, kernel.shape, strides, dilation, groups, precision)
    return dx.astype(padded.dtype), dw.astype(kernel.dtype)


_explicit_conv.defvjp(_explicit_conv_fwd, _explicit_conv_bwd)


def explicit_conv(
    x: jnp.ndarray,
    kernel: jnp.ndarray,
    strides: tuple[int, ...],
    pads: Pads,
    dilation: tuple[int, ...],
    groups: int = 1,
    precision=None,
    backward: str = "formula",
) -> jnp.ndarray:
    """Zero-padded cross-correlation whose gradients come from `BACKWARD_KERNELS[backward]`.

    Args:
      x: `(N, *spatial, C_in)`.
      kernel: `(*k, C_in / groups, C_out)`.
      strides, dilation: one int per spatial axis.
      pads: `(before, after)` zero padding per spatial axis.
      groups: feature groups.
      precision: `lax.Precision` of forward and backward products.
      backward: name of the registered backward implementation.

    Returns:
      `(N, *out, C_out)`, equal to `lax.conv_general_dilated` with the same arguments.
    """
    if backward not in BACKWARD_KERNELS:
        raise ConfigError(unknown_choice("backward kernel", backward, BACKWARD_KERNELS))
    pads = tuple(tuple(int(v) for v in p) for p in pads)
    return _explicit_conv(
        x, kernel, tuple(strides), pads, tuple(dilation), groups, precision, backward
    )
