"""Output-shape arithmetic shared by convolution and pooling layers.

The course's formula for one spatial axis of a convolution or pooling window is

    out = floor((size + pad_before + pad_after - dilation * (kernel - 1) - 1) / stride) + 1

and it is only defined while the dilated kernel fits inside the padded input. The layers call
`check_window` before handing shapes to XLA, so an impossible shape is a clear `ShapeError`
naming the layer, not an XLA crash.
"""

from __future__ import annotations

from collections.abc import Sequence

from cnnjax.errors import ConfigError, ShapeError

PaddingSpec = str | int | Sequence[int] | Sequence[tuple[int, int]]
PADDING_NAMES = ("valid", "same", "full")


def as_pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """Returns `(value, value)` for an int, or the 2-sequence itself, validated positive."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any((not isinstance(v, int)) or v < 1 for v in pair):
        raise ConfigError(f"{name} must be a positive int or a pair of them, got {value!r}")
    return pair


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


def resolve_padding(
    padding: PaddingSpec, kernel: tuple[int, int], dilation: tuple[int, int] = (1, 1)
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Turns a padding spec into explicit `((top, bottom), (left, right))` amounts.

    Args:
      padding: "valid" (none); "same" (`d(k-1)/2` each side, the extra pixel after for even
        kernels: output size equals input size at stride 1; at stride s this is PyTorch's
        `padding=k//2`, not TensorFlow's stride-dependent SAME); "full" (every partial overlap,
        `d(k-1)` each side);
        an int (same amount on all sides), a pair `(ph, pw)`, or explicit pairs
        `((top, bottom), (left, right))`.
      kernel: `(kh, kw)` window size.
      dilation: `(dh, dw)` kernel dilation.

    Returns:
      Explicit padding pairs for the two spatial axes.
    """
    extents = [d * (k - 1) for k, d in zip(kernel, dilation)]
    if isinstance(padding, str):
        name = padding.lower()
        if name == "valid":
            return ((0, 0), (0, 0))
        if name == "same":
            return tuple((e // 2, e - e // 2) for e in extents)
        if name == "full":
            return tuple((e, e) for e in extents)
        raise ConfigError(
            f"unknown padding {padding!r} (valid choices: {', '.join(PADDING_NAMES)})"
        )
    if isinstance(padding, int):
        padding = (padding, padding)
    pads = tuple(padding)
    if len(pads) == 2 and all(isinstance(p, int) for p in pads):
        pads = ((pads[0], pads[0]), (pads[1], pads[1]))
    if len(pads) != 2 or any(len(p) != 2 or min(p) < 0 for p in pads):
        raise ConfigError(
            f"padding must be one of {PADDING_NAMES}, an int, (ph, pw) or ((top, bottom), "
            f"(left, right)) with non-negative amounts; got {padding!r}"
        )
    return tuple(tuple(int(v) for v in p) for p in pads)


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
