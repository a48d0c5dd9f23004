"""Padding of channels-last activations with every border mode of the course.

Modes use PyTorch's names:

  * "zeros": fill with 0 (what "padding=p" means in a conv layer);
  * "constant": fill with `value`, one number or one per channel (an RGB border colour);
  * "reflect": mirror without repeating the edge pixel (`d c b | a b c d | c b a`);
  * "symmetric": mirror repeating the edge pixel (`c b a | a b c d | d c b`): OpenCV's
    BORDER_REFLECT, numpy's "symmetric";
  * "replicate": repeat the edge pixel (`a a a | a b c d | d d d`), numpy's "edge";
  * "circular": wrap around (`b c d | a b c d | a b c`), a periodic image; numpy's "wrap".
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp

from cnnjax.errors import ConfigError, ShapeError, unknown_choice
from cnnjax.layers.shapes import PaddingSpec, resolve_padding

PAD_MODES = ("zeros", "constant", "reflect", "symmetric", "replicate", "circular")
_NUMPY_MODES = {
    "zeros": "constant",
    "constant": "constant",
    "reflect": "reflect",
    "symmetric": "symmetric",
    "replicate": "edge",
    "circular": "wrap",
}


def check_pad_mode(mode: str) -> str:
    """Returns `mode` if it is one of `PAD_MODES`, else raises `ConfigError` listing them."""
    if mode not in _NUMPY_MODES:
        raise ConfigError(unknown_choice("padding mode", mode, PAD_MODES))
    return mode


def pad(
    x: jnp.ndarray,
    padding: PaddingSpec,
    mode: str = "zeros",
    value: float | Sequence[float] | jnp.ndarray = 0.0,
    kernel_size: int | Sequence[int] = 1,
    dilation: int | Sequence[int] = 1,
) -> jnp.ndarray:
    """Pads the spatial axes of `(N, *spatial, C)` activations.

    Args:
      x: `(N, L, C)`, `(N, H, W, C)` or any `(N, *spatial, C)`.
      padding: "valid", "same" or "full" (these need `kernel_size`, and `dilation` if any), an
        int, one int per spatial axis, or one `(before, after)` pair per spatial axis.
      mode: one of `PAD_MODES`.
      value: fill value of mode "constant": a scalar, or `(C,)` values, one per channel.
        Differentiable (the gradient is the sum of the cotangent over the border).
      kernel_size: window the padding is for, when `padding` is a name.
      dilation: dilation of that window.

    Returns:
      `(N, *padded_spatial, C)`.

    Raises:
      ConfigError: unknown mode or padding spec.
      ShapeError: "reflect" padding not smaller than the axis it mirrors, "symmetric" padding
        larger than it, or a per-channel `value` whose length is not `C`.
    """
    check_pad_mode(mode)
    spatial = x.shape[1:-1]
    pads = resolve_padding(padding, kernel_size, dilation, ndim=len(spatial))
    # One mirror image at most, as PyTorch ("reflect" skips the edge, so it has one pixel less).
    limit = {"reflect": 1, "symmetric": 0}.get(mode)
    for size, (before, after) in zip(spatial, pads):
        if limit is not None and max(before, after) > size - limit:
            longer = "longer than" if limit else "at least as long as"
            raise ShapeError(
                f"{mode} padding {(before, after)} needs an axis {longer} the padding, "
                f"got input spatial shape {tuple(spatial)}"
            )
    if mode == "constant":
        value = jnp.asarray(value)
        if value.ndim > 1 or (value.ndim == 1 and value.shape[0] != x.shape[-1]):
            raise ShapeError(
                f"constant padding value of shape {value.shape}: give one number or one per "
                f"channel ({x.shape[-1]},)"
            )
    widths = ((0, 0), *pads, (0, 0))
    if not any(before or after for before, after in pads):
        return x
    if mode != "constant":  # "zeros" is numpy's constant mode with its default fill, 0
        return jnp.pad(x, widths, mode=_NUMPY_MODES[mode])
    # A select rather than jnp.pad(constant_values=value): JAX cannot transpose lax.pad with
    # respect to its padding value, so that form has no gradient for `value`.
    border = jnp.pad(jnp.zeros((1, *spatial, 1), bool), widths, constant_values=True)
    return jnp.where(border, value.astype(x.dtype), jnp.pad(x, widths))
