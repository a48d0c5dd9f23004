"""Convolution modules (NHWC activations, HWIO kernels) and the `make_conv` factory.

`Conv2d` is a thin Linen wrapper around `lax.conv_general_dilated` that validates shapes before
calling XLA. Models take their convolution as an injected `conv` field, built with `make_conv`,
so an ablation swaps the kind of convolution without copying a model.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from cnnjax.errors import ConfigError, ShapeError, unknown_choice
from cnnjax.layers.shapes import PaddingSpec, as_pair, check_window, resolve_padding

Initializer = Callable[..., Any]

# He et al. 2015 ("Delving deep into rectifiers") normal init, fan-out mode as in torchvision.
he_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def layer_name(module: nn.Module) -> str:
    """A readable path for error messages, e.g. 'CifarResNet/stage2_block1/conv1'."""
    path = module.scope.path if module.scope is not None else ()
    return "/".join((type(module).__name__, *path)) if path else type(module).__name__


class Conv2d(nn.Module):
    """2-D cross-correlation, the operation deep-learning libraries call convolution.

    Attributes:
      features: output channels.
      kernel_size: `k` or `(kh, kw)`.
      strides: `s` or `(sh, sw)`.
      padding: "same", "valid", "full", an int, `(ph, pw)` or `((top, bottom), (left, right))`.
      dilation: kernel dilation `d` or `(dh, dw)`.
      groups: the input and output channels are split into this many independent groups.
      use_bias: add a learned bias per output channel.
      kernel_init: initializer of the `(kh, kw, c_in / groups, features)` kernel.
      precision: XLA matmul precision (None = backend default).
    """

    features: int
    kernel_size: int | Sequence[int] = 3
    strides: int | Sequence[int] = 1
    padding: PaddingSpec = "same"
    dilation: int | Sequence[int] = 1
    groups: int = 1
    use_bias: bool = True
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros_init()
    dtype: Any = None
    precision: Any = None

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """Applies the convolution.

        Args:
          x: `(N, H, W, C_in)` activations.

        Returns:
          `(N, H_out, W_out, features)` with `H_out = floor((H + pt + pb - d(kh-1) - 1)/s) + 1`.
        """
        name = layer_name(self)
        if x.ndim != 4:
            raise ShapeError(f"{name}: expected NHWC input with 4 dims, got shape {x.shape}")
        kernel = as_pair(self.kernel_size, "kernel_size")
        strides = as_pair(self.strides, "strides")
        dilation = as_pair(self.dilation, "dilation")
        in_channels = x.shape[-1]
        if in_channels % self.groups or self.features % self.groups:
            raise ShapeError(
                f"{name}: groups={self.groups} must divide both input channels ({in_channels}) "
                f"and output channels ({self.features})"
            )
        padding = resolve_padding(self.padding, kernel, dilation)
        check_window(name, x.shape[1:3], kernel, strides, padding, dilation)
        w = self.param(
            "kernel", self.kernel_init, (*kernel, in_channels // self.groups, self.features)
        )
        dtype = self.dtype or x.dtype
        y = lax.conv_general_dilated(
            x.astype(dtype),
            w.astype(dtype),
            window_strides=strides,
            padding=padding,
            rhs_dilation=dilation,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=self.groups,
            precision=self.precision,
        )
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,)).astype(dtype)
        return y


CONV_KINDS: dict[str, Callable[..., nn.Module]] = {
    "standard": Conv2d,
    "pointwise": functools.partial(Conv2d, kernel_size=1, padding="valid"),
}


def make_conv(kind: str = "standard", **kwargs: Any) -> Callable[..., nn.Module]:
    """Returns a convolution constructor of the given kind with `kwargs` bound.

    The result is called like `Conv2d`: `make_conv("standard", use_bias=False)(features=16)`.
    Later kinds (depthwise, separable, transposed, ...) register themselves in `CONV_KINDS`.

    Raises:
      ConfigError: for an unknown kind, listing the valid ones.
    """
    if kind not in CONV_KINDS:
        raise ConfigError(unknown_choice("conv kind", kind, CONV_KINDS))
    return functools.partial(CONV_KINDS[kind], **kwargs)
