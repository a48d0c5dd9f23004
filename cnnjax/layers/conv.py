"""Convolution modules (NHWC activations, HWIO kernels) and the `make_conv` factory.

The modules are thin Linen wrappers around the pure functions of `conv_ops`, which validate
shapes before calling XLA. Models take their convolution as an injected `conv` field, built with
`make_conv`, so an ablation swaps the kind of convolution without copying a model.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from cnnjax.errors import ConfigError, ShapeError, unknown_choice
from cnnjax.layers import conv_ops
from cnnjax.layers.backend import layer_name
from cnnjax.layers.shapes import PaddingSpec, as_pair, as_tuple, resolve_padding

Initializer = Callable[..., Any]

# He et al. 2015 ("Delving deep into rectifiers") normal init, fan-out mode as in torchvision.
he_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class _Conv(nn.Module):
    """N-D convolution module over `conv_ops.conv`; subclasses fix the number of spatial axes.

    Attributes:
      features: output channels.
      kernel_size: `k` or one per spatial axis.
      strides: `s` or one per spatial axis.
      padding: "same", "valid", "full", an int, one per axis or `(before, after)` per axis.
      dilation: kernel dilation `d` or one per axis.
      groups: input and output channels are split into this many independent groups.
      use_bias: add a learned bias per output channel.
      padding_mode: "zeros", "constant", "reflect", "symmetric" (edge repeated: OpenCV's
        BORDER_REFLECT), "replicate" or "circular" (see `cnnjax.layers.padding`).
      padding_value: fill of padding_mode "constant": a number, or a tuple with one per input
        channel (an RGB border colour).
      flip_kernel: true convolution (kernel rotated 180 degrees) instead of cross-correlation.
      impl: "auto" (oneDNN kernels on CPU when available, else XLA's), "xla", "onednn", or
        "explicit" for the course's backpropagation formulas (`backprop.py`); see `conv_ops`.
      kernel_init: initializer of the `(*k, C_in / groups, features)` kernel.
      bias_init: initializer of the `(features,)` bias.
      dtype: computation dtype (None: the input's).
      precision: `lax.Precision` of the products (None: the backend's default).
    """

    ndim: ClassVar[int] = 2
    features: int
    kernel_size: int | Sequence[int] = 3
    strides: int | Sequence[int] = 1
    padding: PaddingSpec = "same"
    dilation: int | Sequence[int] = 1
    groups: int = 1
    use_bias: bool = True
    padding_mode: str = "zeros"
    padding_value: float | tuple[float, ...] = 0.0
    flip_kernel: bool = False
    impl: str = "auto"
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros_init()
    dtype: Any = None
    precision: Any = None

    def _groups(self, in_channels: int) -> int:
        return self.groups

    def _features(self, in_channels: int) -> int:
        return self.features

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """Applies the convolution.

        Args:
          x: `(N, *spatial, C_in)` with `ndim` spatial axes.

        Returns:
          `(N, *out, features)` with `out = floor((size + before + after - d(k-1) - 1)/s) + 1`.
        """
        name = layer_name(self)
        if x.ndim != self.ndim + 2:
            raise ShapeError(
                f"{name}: expected input with {self.ndim} spatial axes, channels last "
                f"({self.ndim + 2} dims), got shape {x.shape}"
            )
        in_channels = x.shape[-1]
        groups, features = self._groups(in_channels), self._features(in_channels)
        if in_channels % groups or features % groups:
            raise ShapeError(
                f"{name}: groups={groups} must divide both input channels ({in_channels}) "
                f"and output channels ({features})"
            )
        window = as_tuple(self.kernel_size, self.ndim, "kernel_size")
        kernel = self.param("kernel", self.kernel_init, (*window, in_channels // groups, features))
        bias = self.param("bias", self.bias_init, (features,)) if self.use_bias else None
        dtype = self.dtype or x.dtype
        return conv_ops.conv(
            x.astype(dtype),
            # Cast only when needed: a quantized kernel (qwix's PTQ) must reach the convolution
            # untouched, and it has no float astype.
            kernel if kernel.dtype == dtype else kernel.astype(dtype),
            None if bias is None else bias.astype(dtype),
            strides=self.strides,
            padding=self.padding,
            dilation=self.dilation,
            groups=groups,
            padding_mode=self.padding_mode,
            padding_value=self.padding_value,
            flip_kernel=self.flip_kernel,
            precision=self.precision,
            impl=self.impl,
            layer=name,
        )


class Conv2d(_Conv):
    """2-D convolution (cross-correlation) of `(N, H, W, C)` images; see `_Conv` for fields."""

    ndim: ClassVar[int] = 2


class Conv1d(_Conv):
    """1-D convolution of `(N, L, C)` sequences (time series); see `_Conv` for fields."""

    ndim: ClassVar[int] = 1


class DepthwiseConv2d(Conv2d):
    """One filter bank per input channel (`groups = C_in`); `features` must be a multiple of C_in.

    Parameters: `k*k*features` (+ bias), against `k*k*C_in*features` for a standard conv.
    """

    def _groups(self, in_channels: int) -> int:
        if self.features % in_channels:
            raise ShapeError(
                f"{layer_name(self)}: a depthwise conv needs features ({self.features}) to be "
                f"a multiple of the input channels ({in_channels})"
            )
        return in_channels


class SeparableConv2d(nn.Module):
    """Depthwise-separable convolution: a depthwise `k x k` conv then a pointwise `1 x 1` conv.

    Costs `k*k*C_in + C_in*C_out` weights instead of `k*k*C_in*C_out`: a ratio of
    `1/C_out + 1/k^2` (MobileNet, Howard et al. 2017). No nonlinearity between the two; models
    that want BN/ReLU there (MobileNet) build the two convs themselves.

    Attributes:
      features: output channels of the pointwise conv.
      depth_multiplier: depthwise output channels per input channel.
      Other fields as in `Conv2d` (stride, padding and dilation apply to the depthwise conv).
    """

    features: int
    kernel_size: int | Sequence[int] = 3
    strides: int | Sequence[int] = 1
    padding: PaddingSpec = "same"
    dilation: int | Sequence[int] = 1
    depth_multiplier: int = 1
    use_bias: bool = True
    padding_mode: str = "zeros"
    padding_value: float | tuple[float, ...] = 0.0
    impl: str = "auto"
    kernel_init: Initializer = nn.initializers.lecun_normal()
    precision: Any = None

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """`(N, H, W, C_in) -> (N, H_out, W_out, features)`."""
        common = dict(impl=self.impl, kernel_init=self.kernel_init, precision=self.precision)
        x = DepthwiseConv2d(
            features=x.shape[-1] * self.depth_multiplier,
            kernel_size=self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            dilation=self.dilation,
            padding_mode=self.padding_mode,
            padding_value=self.padding_value,
            use_bias=False,
            name="depthwise",
            **common,
        )(x)
        return Conv2d(
            self.features, 1, padding="valid", use_bias=self.use_bias, name="pointwise", **common
        )(x)


class SpatiallySeparableConv2d(nn.Module):
    """A `kh x 1` conv then a `1 x kw` conv: a rank-1 factorization of a `kh x kw` kernel.

    Exact for separable kernels such as Sobel (`[1, 2, 1]ᵀ [-1, 0, 1]`); Inception v3 uses it to
    cut a `k x k` conv's cost by `2/k`. Each half pads and strides along its own axis only, so the
    output shape equals that of the `kh x kw` conv. Only the second half has a bias (a bias in the
    first passes linearly through the second).

    Attributes:
      features: output channels.
      mid_features: channels between the two halves (default: `features`).
      Other fields as in `Conv2d`.
    """

    features: int
    kernel_size: int | Sequence[int] = 3
    strides: int | Sequence[int] = 1
    padding: PaddingSpec = "same"
    dilation: int | Sequence[int] = 1
    mid_features: int | None = None
    use_bias: bool = True
    padding_mode: str = "zeros"
    padding_value: float | tuple[float, ...] = 0.0
    impl: str = "auto"
    kernel_init: Initializer = nn.initializers.lecun_normal()
    precision: Any = None

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """`(N, H, W, C_in) -> (N, H_out, W_out, features)`."""
        (kh, kw), (sh, sw) = (
            as_pair(self.kernel_size, "kernel_size"),
            as_pair(self.strides, "strides"),
        )
        dh, dw = as_pair(self.dilation, "dilation")
        rows, cols = resolve_padding(self.padding, (kh, kw), (dh, dw))
        # Each half pads its own input: a per-channel padding_value must fit both (C_in and
        # mid_features channels); a number always does.
        common = dict(
            padding_mode=self.padding_mode,
            padding_value=self.padding_value,
            impl=self.impl,
            kernel_init=self.kernel_init,
            precision=self.precision,
        )
        x = Conv2d(
            self.mid_features or self.features,
            (kh, 1),
            (sh, 1),
            (rows, (0, 0)),
            (dh, 1),
            use_bias=False,
            name="vertical",
            **common,
        )(x)
        return Conv2d(
            self.features,
            (1, kw),
            (1, sw),
            ((0, 0), cols),
            (1, dw),
            use_bias=self.use_bias,
            name="horizontal",
            **common,
        )(x)


class ConvTranspose2d(nn.Module):
    """Transposed ("fractionally strided") convolution with PyTorch's arguments.

    The adjoint of `Conv2d` with the same strides, padding and dilation, used to upsample.

    Attributes:
      features: output channels.
      kernel_size, strides, dilation, groups: as in `Conv2d`.
      padding: rows/columns the matching forward conv padded, removed from the output border.
      output_padding: extra rows/columns at the end (< stride or dilation).
    """

    features: int
    kernel_size: int | Sequence[int] = 3
    strides: int | Sequence[int] = 1
    padding: int | Sequence[int] | Sequence[tuple[int, int]] = 0
    output_padding: int | Sequence[int] = 0
    dilation: int | Sequence[int] = 1
    groups: int = 1
    use_bias: bool = True
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros_init()
    precision: Any = None

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """`(N, H, W, C_in) -> (N, H_out, W_out, features)`, see `conv_ops.conv_transpose`."""
        name = layer_name(self)
        if x.ndim != 4:
            raise ShapeError(f"{name}: expected NHWC input with 4 dims, got shape {x.shape}")
        if x.shape[-1] % self.groups:
            raise ShapeError(
                f"{name}: groups={self.groups} must divide the input channels ({x.shape[-1]})"
            )
        window = as_pair(self.kernel_size, "kernel_size")
        kernel = self.param(
            "kernel", self.kernel_init, (*window, x.shape[-1] // self.groups, self.features)
        )
        bias = self.param("bias", self.bias_init, (self.features,)) if self.use_bias else None
        return conv_ops.conv_transpose(
            x,
            kernel,
            bias,
            self.strides,
            self.padding,
            self.output_padding,
            self.dilation,
            self.groups,
            self.precision,
            layer=name,
        )


CONV_KINDS: dict[str, Callable[..., nn.Module]] = {
    "standard": Conv2d,
    "pointwise": functools.partial(Conv2d, kernel_size=1, padding="valid"),
    "depthwise": DepthwiseConv2d,
    "separable": SeparableConv2d,
    "spatially_separable": SpatiallySeparableConv2d,
    "transposed": ConvTranspose2d,
    "true_convolution": functools.partial(Conv2d, flip_kernel=True),
    "explicit_backprop": functools.partial(Conv2d, impl="explicit"),
    "conv1d": Conv1d,
}


def make_conv(kind: str = "standard", **kwargs: Any) -> Callable[..., nn.Module]:
    """Returns a convolution constructor of the given kind with `kwargs` bound.

    The result is called like `Conv2d`: `make_conv("separable", use_bias=False)(features=16)`.
    Strided, dilated and grouped convolutions are "standard" with `strides`, `dilation` or
    `groups` set; any kind takes `padding_mode` except "transposed", whose padding crops.

    Raises:
      ConfigError: for an unknown kind, listing the valid ones.
    """
    if kind not in CONV_KINDS:
        raise ConfigError(unknown_choice("conv kind", kind, CONV_KINDS))
    return functools.partial(CONV_KINDS[kind], **kwargs)
