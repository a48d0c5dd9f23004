"""`ConvBlock`: a convolution with normalization, activation and dropout in a configurable order.

The order of batch normalization and dropout changes what the network learns: dropout before BN
shifts the variance BN sees between training and evaluation ("variance shift", Li et al. 2019,
"Understanding the disharmony between dropout and batch normalization by variance shift"), and
pre-activation ResNets (He et al. 2016, "Identity mappings in deep residual networks") put BN and
ReLU before the convolution. One block with an `order` string runs all these ablations.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnjax.errors import ConfigError, unknown_choice
from cnnjax.layers.conv import make_conv
from cnnjax.layers.dropout import ChannelDropout
from cnnjax.layers.fusion import conv_bn_act
from cnnjax.layers.norm import BatchNorm
from cnnjax.layers.shapes import PaddingSpec

ModuleDef = Any

ORDER_TOKENS = ("conv", "bn", "act", "drop")


def parse_order(order: str) -> tuple[str, ...]:
    """Splits a `ConvBlock` order such as "conv-bn-act-drop" into its tokens.

    Args:
      order: tokens from `ORDER_TOKENS` joined by "-", each at most once, "conv" required.

    Returns:
      The tokens in order, e.g. `("conv", "bn", "act", "drop")`.

    Raises:
      ConfigError: for an unknown, repeated or missing token, naming the order and valid tokens.
    """
    if not isinstance(order, str):
        raise ConfigError(f"ConvBlock order must be a string like 'conv-bn-act', got {order!r}")
    tokens = tuple(order.split("-"))
    valid = ", ".join(ORDER_TOKENS)
    for token in tokens:
        if token not in ORDER_TOKENS:
            raise ConfigError(
                f"in ConvBlock order {order!r}: " + unknown_choice("token", token, ORDER_TOKENS)
            )
        if tokens.count(token) > 1:
            raise ConfigError(
                f"ConvBlock order {order!r} repeats {token!r}; each of {valid} may appear once"
            )
    if "conv" not in tokens:
        raise ConfigError(f"ConvBlock order {order!r} has no 'conv' (tokens: {valid})")
    return tokens


def _accepts(constructor: Callable[..., Any], field: str) -> bool:
    """Whether a module constructor (class or partial of one) takes keyword `field`."""
    target = constructor
    while isinstance(target, functools.partial):
        target = target.func
    if dataclasses.is_dataclass(target):
        return field in {f.name for f in dataclasses.fields(target)}
    try:
        return field in inspect.signature(target).parameters
    except (TypeError, ValueError):
        return True


class ConvBlock(nn.Module):
    """Convolution, normalization, activation and dropout in the order `order` gives.

    With the default "conv-bn-act": `relu(bn(conv(x)))`. Other orders: "conv-bn-act-drop"
    (dropout after the nonlinearity), "conv-drop-bn-act" (dropout before BN, the variance-shift
    case of Li et al. 2019), "conv-act-bn" (BN after ReLU), "bn-act-conv" (pre-activation).
    A "drop" token with `dropout_rate=0` is the identity.

    The convolution has no bias when a "bn" token directly follows "conv": batch normalization
    subtracts each channel's mean, which removes any per-channel constant, so the bias would be a
    wasted parameter with zero gradient. `conv_bias` overrides this, e.g. for a `norm` that does
    not subtract per-channel means (LayerNorm over C).

    Parameters: those of the conv (`k*k*C_in*features` for a standard conv, `+ features` with a
    bias) plus `2C` for the norm (`C` the channels where "bn" sits: `C_in` before the conv,
    `features` after) and `2C` batch statistics.

    Attributes:
      features: output channels of the convolution.
      kernel_size: passed to `conv` (overrides a kernel size bound in it).
      strides: passed to `conv`.
      padding: passed to `conv`.
      order: tokens "conv", "bn", "act", "drop" joined by "-"; see `parse_order`.
      conv: convolution constructor, e.g. `make_conv("separable", kernel_init=...)`.
      norm: normalization constructor; given `use_running_average=not train` when it takes one
        (`BatchNorm`, `TorchBatchNorm`), else called plainly (`LayerNorm`).
      act: activation function.
      dropout_rate: drop probability of the "drop" token.
      channel_dropout: drop whole channels (`ChannelDropout`) instead of elements (`nn.Dropout`).
      conv_bias: bias of the conv; None chooses as described above.
    """

    features: int
    kernel_size: int | Sequence[int] = 3
    strides: int | Sequence[int] = 1
    padding: PaddingSpec = "same"
    order: str = "conv-bn-act"
    conv: ModuleDef = make_conv()
    norm: ModuleDef = BatchNorm
    act: Callable[[jnp.ndarray], jnp.ndarray] = nn.relu
    dropout_rate: float = 0.0
    channel_dropout: bool = False
    conv_bias: bool | None = None

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        """Applies the block.

        Args:
          x: `(N, H, W, C_in)`.
          train: batch statistics and dropout when True (needs mutable "batch_stats" and a
            "dropout" rng); running averages and no dropout when False.

        Returns:
          `(N, H_out, W_out, features)`, `H_out` as for `conv`.
        """
        tokens = parse_order(self.order)
        if not 0.0 <= self.dropout_rate <= 1.0:
            raise ConfigError(f"ConvBlock dropout_rate must be in [0, 1], got {self.dropout_rate}")
        if self.dropout_rate > 0.0 and "drop" not in tokens:
            raise ConfigError(
                f"ConvBlock dropout_rate={self.dropout_rate} has no effect: order "
                f"{self.order!r} has no 'drop' token"
            )
        use_bias = self.conv_bias
        if use_bias is None:
            position = tokens.index("conv")
            use_bias = tokens[position + 1 : position + 2] != ("bn",)
        norm_kwargs = {}
        if _accepts(self.norm, "use_running_average"):
            norm_kwargs["use_running_average"] = not train
        conv = functools.partial(
            self.conv,
            features=self.features,
            kernel_size=self.kernel_size,
            strides=self.strides,
            padding=self.padding,
            use_bias=use_bias,
            name="conv",
        )
        if tokens[:2] == ("conv", "bn"):  # foldable at inference (`cnnjax.layers.fusion`)
            with_act = tokens[2:3] == ("act",)
            bn = self.norm(name="bn", **norm_kwargs)
            x = conv_bn_act(conv(), bn, x, self.act if with_act else None)
            tokens = tokens[3 if with_act else 2 :]
        for token in tokens:
            if token == "conv":
                x = conv()(x)
            elif token == "bn":
                x = self.norm(name="bn", **norm_kwargs)(x)
            elif token == "act":
                x = self.act(x)
            elif self.channel_dropout:
                x = ChannelDropout(self.dropout_rate, name="drop")(x, deterministic=not train)
            else:
                x = nn.Dropout(self.dropout_rate, name="drop")(x, deterministic=not train)
        return x
