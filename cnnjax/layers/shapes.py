"""Output-shape arithmetic and the channels-last layout shared by convolution and pooling layers.

The course's formula for one spatial axis of a convolution or pooling window is

    out = floor((size + pad_before + pad_after - dilation * (kernel - 1) - 1) / stride) + 1

and it is only defined while the dilated kernel fits inside the padded input. The layers call
`check_window` before handing shapes to XLA, so an impossible shape is a clear `ShapeError`
naming the layer, not an XLA crash.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cnnjax.errors import ConfigError, ShapeError, unknown_choice

PaddingSpec = str | int | Sequence[int] | Sequence[tuple[int, int]]
PADDING_NAMES = ("valid", "same", "full")
_DIMENSION_NUMBERS = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC")}


def dimension_numbers(ndim: int) -> tuple[str, str, str]:
    """`lax` dimension numbers of channels-last activations and kernels with `ndim` spatial axes."""
    if ndim not in _DIMENSION_NUMBERS:
        raise ShapeError(f"only 1-D and 2-D convolutions are supported, got {ndim} spatial axes")
    return _DIMENSION_NUMBERS[ndim]


def as_pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """Returns `(value, value)` for an int, or the 2-sequence itself, validated positive."""
    return as_tuple(value, 2, name)


def conv_output_size(
    size: int, kernel: int, stride: int = 1, padding: tuple[int, int] = (0, 0), dilation: int = 1
) -> int:
    """Length of one output axis of a convolution or pooling window.

    Args:
      size: input length along the axis.
      kernel: window length (before dilation).
      stride: step between windows.
      padding: `(before, after)` padding added to the input.
      dilation: spacing between kernel taps; the effective kernel is `dilation * (kernel - 1) + 1`.

    Returns:
      `floor((size + before + after - dilation * (kernel - 1) - 1) / stride) + 1`; zero or negative
      when the dilated kernel is larger than the padded input.
    """
    padded = size + padding[0] + padding[1]
    return (padded - dilation * (kernel - 1) - 1) // stride + 1


def as_tuple(value: int | Sequence[int], ndim: int, name: str) -> tuple[int, ...]:
    """Returns `ndim` copies of an int, or the sequence itself, validated positive."""
    values = (value,) * ndim if isinstance(value, int | np.integer) else tuple(value)
    if len(values) != ndim or any(not isinstance(v, int | np.integer) or v < 1 for v in values):
        raise ConfigError(f"{name} must be a positive int or {ndim} of them, got {value!r}")
    return tuple(int(v) for v in values)


def conv_transpose_output_size(
    size: int,
    kernel: int,
    stride: int = 1,
    padding: tuple[int, int] = (0, 0),
    dilation: int = 1,
    output_padding: int = 0,
) -> int:
    """Length of one output axis of a transposed convolution (PyTorch's `ConvTranspose` rule).

    It inverts `conv_output_size`: `(size - 1) * stride - before - after + d(k - 1) + 1`, plus
    `output_padding` (< stride) to pick one of the `stride` input sizes that a strided
    convolution maps to `size`.
    """
    return (
        (size - 1) * stride - padding[0] - padding[1] + dilation * (kernel - 1) + 1 + output_padding
    )


def resolve_padding(
    padding: PaddingSpec,
    kernel: int | Sequence[int],
    dilation: int | Sequence[int] = 1,
    ndim: int | None = None,
) -> tuple[tuple[int, int], ...]:
    """Turns a padding spec into explicit `(before, after)` amounts per spatial axis.

    Args:
      padding: "valid" (none); "same" (`d(k-1)/2` each side, the extra pixel after for even
        kernels: output size equals input size at stride 1; at stride s this is PyTorch's
        `padding=k//2`, not TensorFlow's stride-dependent SAME); "full" (every partial overlap,
        `d(k-1)` each side); an int (same amount on all sides); one int per axis (symmetric);
        or one `(before, after)` pair per axis. For a single axis, `(before, after)` may be
        given directly.
      kernel: window size, an int or one per axis.
      dilation: kernel dilation, an int or one per axis.
      ndim: number of spatial axes; defaults to `len(kernel)`, or 2 for an int kernel.

    Returns:
      `((before, after), ...)`, one pair per spatial axis.
    """
    if ndim is None:
        ndim = 2 if isinstance(kernel, int | np.integer) else len(kernel)
    kernel = as_tuple(kernel, ndim, "kernel_size")
    dilation = as_tuple(dilation, ndim, "dilation")
    extents = [d * (k - 1) for k, d in zip(kernel, dilation)]
    if isinstance(padding, str):
        name = padding.lower()
        if name == "valid":
            return ((0, 0),) * ndim
        if name == "same":
            return tuple((e // 2, e - e // 2) for e in extents)
        if name == "full":
            return tuple((e, e) for e in extents)
        raise ConfigError(unknown_choice("padding", padding, PADDING_NAMES))
    try:
        pads = _explicit_pads(padding, ndim)
    except (TypeError, ValueError):
        pads = None
    if pads is None or any(min(p) < 0 for p in pads):
        raise ConfigError(
            f"padding must be one of {PADDING_NAMES}, an int, {ndim} ints or {ndim} "
            f"(before, after) pairs with non-negative amounts; got {padding!r}"
        )
    return pads


def _explicit_pads(padding, ndim: int) -> tuple[tuple[int, int], ...] | None:
    if isinstance(padding, int | np.integer):
        return ((int(padding),) * 2,) * ndim
    pads = tuple(padding)
    if all(isinstance(p, int | np.integer) for p in pads):
        if len(pads) == ndim:
            return tuple((int(p), int(p)) for p in pads)
        if ndim == 1 and len(pads) == 2:
            return ((int(pads[0]), int(pads[1])),)
        return None
    pairs = tuple(tuple(int(v) for v in p) for p in pads)
    if len(pairs) != ndim or any(len(p) != 2 for p in pairs):
        return None
    return pairs


def check_window(
    layer: str,
    spatial: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    padding: Sequence[tuple[int, int]],
    dilation: Sequence[int] = (1, 1),
) -> tuple[int, ...]:
    """Validates that a (dilated) window fits the padded input and returns the output size.

    Raises:
      ShapeError: naming `layer`, the input size, the padding and the kernel, if any output axis
        would be empty.
    """
    out = tuple(
        conv_output_size(s, k, st, p, d)
        for s, k, st, p, d in zip(spatial, kernel, strides, padding, dilation)
    )
    if min(out) < 1:
        effective = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))
        padded = tuple(s + p[0] + p[1] for s, p in zip(spatial, padding))
        raise ShapeError(
            f"{layer}: kernel {effective} (kernel {tuple(kernel)}, dilation {tuple(dilation)}) is "
            f"larger than the padded input {padded} (input {tuple(spatial)}, padding "
            f"{tuple(padding)}); use a larger input, more padding or a smaller kernel"
        )
    return out
