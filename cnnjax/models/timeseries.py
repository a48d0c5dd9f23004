"""1-D CNNs for time series: `(N, L, C)` sequences -> `(logits, intermediates)`.

Two models for next-step up/down classification of `cnnjax.data.series` windows (`L = 64`,
`C = 2`), both with injectable `conv`, `norm` and `act` like the image models:

  * `Conv1dNet` ("cnn1d"): a plain 1-D VGG-style stack. Every layer sees both past and future
    neighbours inside the window ("same" padding); that is fine for classifying a whole window.
  * `TemporalConvNet` ("tcn1d"): the TCN of Bai, Kolter & Koltun 2018 ("An empirical evaluation
    of generic convolutional and recurrent networks for sequence modeling"): residual blocks of
    two causal dilated convolutions, so the features at step `t` depend on inputs `<= t` only,
    and the logits are read from the last step.

Pooling layers of `cnnjax.layers` are 2-D; the 1-D pools here are `lax.reduce_window` over `L`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from jax import lax

from cnnjax.errors import ShapeError
from cnnjax.layers import BatchNorm, Conv1d
from cnnjax.layers.conv import he_normal_fan_out
from cnnjax.models.registry import register

__all__ = [
    "Conv1dNet",
    "TemporalBlock",
    "TemporalConvNet",
    "avg_pool1d",
    "max_pool1d",
    "tcn_receptive_field",
]

ModuleDef = Any

PAPER_TCN = (
    "Bai, Kolter & Koltun 2018, An empirical evaluation of generic convolutional and recurrent "
    "networks for sequence modeling"
)
SERIES_INPUT_SHAPE = (64, 2)  # `cnnjax.data.series`: 64 steps of (scaled return, log volatility)


def _check_3d(x: jnp.ndarray, layer: str) -> None:
    if x.ndim != 3:
        raise ShapeError(f"{layer}: expected (N, L, C) sequences, got shape {x.shape}")


def max_pool1d(x: jnp.ndarray, window: int = 2, strides: int | None = None) -> jnp.ndarray:
    """Max over non-padded windows along `L`: `(N, L, C) -> (N, floor((L - k) / s) + 1, C)`."""
    _check_3d(x, "max_pool1d")
    strides = window if strides is None else strides
    init = np.array(-np.inf, x.dtype)
    return lax.reduce_window(x, init, lax.max, (1, window, 1), (1, strides, 1), "VALID")


def avg_pool1d(x: jnp.ndarray, window: int = 2, strides: int | None = None) -> jnp.ndarray:
    """Mean over non-padded windows along `L`: `(N, L, C) -> (N, floor((L - k) / s) + 1, C)`."""
    _check_3d(x, "avg_pool1d")
    strides = window if strides is None else strides
    init = np.array(0, x.dtype)
    total = lax.reduce_window(x, init, lax.add, (1, window, 1), (1, strides, 1), "VALID")
    return total / window


def _norm_act(module: nn.Module, y: jnp.ndarray, name: str, train: bool) -> jnp.ndarray:
    if module.norm is not None:
        y = module.norm(use_running_average=not train, name=name)(y)
    return module.act(y)


class Conv1dNet(nn.Module):
    """Plain 1-D CNN. Input `(N, L, C)` -> `(logits (N, num_classes), intermediates)`.

    Stem `conv(k) + norm + act`, then one stage per entry of `widths`:
    `conv(k) + norm + act + pool`, global average pooling over `L`, dropout and a dense head.
    With the defaults on `(64, 2)` windows the stages run at lengths 64, 32 and 16, ending at 8.

    Intermediates: "stem" `(N, L, stem_width)`, "stage{i}" `(N, L / 2^i, widths[i-1])`,
    "pre_logits" `(N, widths[-1])`.

    Attributes:
      num_classes: output units (2: down, up).
      stem_width: filters of the stem conv.
      widths: filters of each stage.
      kernel_size: length of every conv kernel.
      conv: 1-D convolution constructor ("same" padding by default).
      norm: normalization constructor taking `use_running_average`, or None.
      act: activation function.
      pool: `(N, L, C) -> (N, L', C)` applied at the end of each stage, or None.
      dropout_rate: dropout before the head (rng collection "dropout" when training).
    """

    num_classes: int = 2
    stem_width: int = 32
    widths: Sequence[int] = (32, 64, 128)
    kernel_size: int = 5
    conv: ModuleDef = functools.partial(Conv1d, use_bias=False, kernel_init=he_normal_fan_out)
    norm: ModuleDef | None = BatchNorm
    act: Callable = nn.relu
    pool: Callable | None = functools.partial(max_pool1d, window=2)
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False):
        _check_3d(x, type(self).__name__)
        y = self.conv(features=self.stem_width, kernel_size=self.kernel_size, name="stem_conv")(x)
        y = _norm_act(self, y, "stem_norm", train)
        intermediates = {"stem": y}
        for i, width in enumerate(self.widths, start=1):
            y = self.conv(features=width, kernel_size=self.kernel_size, name=f"stage{i}_conv")(y)
            y = _norm_act(self, y, f"stage{i}_norm", train)
            if self.pool is not None:
                y = self.pool(y)
            intermediates[f"stage{i}"] = y
        pre_logits = jnp.mean(y, axis=1)
        intermediates["pre_logits"] = pre_logits
        y = nn.Dropout(self.dropout_rate, name="dropout")(pre_logits, deterministic=not train)
        logits = nn.Dense(self.num_classes, name="head")(y)
        return logits, intermediates


def tcn_receptive_field(kernel_size: int, dilations: Sequence[int], convs_per_block: int = 2):
    """Input steps seen by one output step: `1 + convs_per_block * (k - 1) * sum(dilations)`."""
    return 1 + convs_per_block * (kernel_size - 1) * sum(dilations)


class TemporalBlock(nn.Module):
    """TCN residual block: `act(x + [causal conv(d) + norm + act + dropout] x 2)`.

    A causal conv pads `d * (k - 1)` zeros on the left only, so output `t` reads inputs
    `t - d(k-1) .. t`. A 1x1 conv projects the shortcut when the width changes.
    The paper normalizes weights (weight norm); here `norm` is injected (BatchNorm by default).
    """

    features: int
    dilation: int
    kernel_size: int = 3
    conv: ModuleDef = Conv1d
    norm: ModuleDef | None = BatchNorm
    act: Callable = nn.relu
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        """`(N, L, C_in) -> (N, L, features)`."""
        left = ((self.dilation * (self.kernel_size - 1), 0),)
        y = x
        for i in (1, 2):
            y = self.conv(
                features=self.features,
                kernel_size=self.kernel_size,
                dilation=self.dilation,
                padding=left,
                name=f"conv{i}",
            )(y)
            y = _norm_act(self, y, f"norm{i}", train)
            y = nn.Dropout(self.dropout_rate, name=f"dropout{i}")(y, deterministic=not train)
        shortcut = x
        if x.shape[-1] != self.features:
            shortcut = self.conv(features=self.features, kernel_size=1, name="shortcut")(x)
        return self.act(y + shortcut)


class TemporalConvNet(nn.Module):
    """Causal TCN. Input `(N, L, C)` -> `(logits (N, num_classes), intermediates)`.

    A 1x1 stem (`conv + norm + act`, width `width`), one `TemporalBlock` per dilation, and a dense
    head on the features of the last step. Every layer is causal: the features at step `t` are a
    function of `x[:, : t + 1]` only (exactly so in eval mode; in training mode BatchNorm's batch
    statistics pool over all steps, so use `norm=None` or a per-step norm for strict causality
    there). Receptive field, two convs per block:

        1 + 2 * (k - 1) * sum(dilations) = 1 + 2 * 2 * (1 + 2 + 4 + 8) = 61 steps

    for the default `k = 3`, dilations `(1, 2, 4, 8)`: the last step sees 61 of a 64-step window.

    Intermediates: "stem" and "stage{i}" `(N, L, width)` (per-step features), "pre_logits"
    `(N, width)` (the last step of the last stage).

    Attributes:
      num_classes: output units.
      width: channels of the stem and every block.
      kernel_size: length of each dilated kernel.
      dilations: one residual block per dilation.
      conv: 1-D convolution constructor; blocks pass left-only padding and `dilation`.
      norm: normalization constructor taking `use_running_average`, or None.
      act: activation function.
      dropout_rate: dropout after every conv of the blocks (the paper's regularizer).
    """

    num_classes: int = 2
    width: int = 32
    kernel_size: int = 3
    dilations: Sequence[int] = (1, 2, 4, 8)
    conv: ModuleDef = functools.partial(Conv1d, kernel_init=he_normal_fan_out)
    norm: ModuleDef | None = BatchNorm
    act: Callable = nn.relu
    dropout_rate: float = 0.0

    @property
    def receptive_field(self) -> int:
        return tcn_receptive_field(self.kernel_size, self.dilations)

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False):
        _check_3d(x, type(self).__name__)
        y = self.conv(features=self.width, kernel_size=1, name="stem_conv")(x)
        y = _norm_act(self, y, "stem_norm", train)
        intermediates = {"stem": y}
        for i, dilation in enumerate(self.dilations, start=1):
            y = TemporalBlock(
                features=self.width,
                dilation=dilation,
                kernel_size=self.kernel_size,
                conv=self.conv,
                norm=self.norm,
                act=self.act,
                dropout_rate=self.dropout_rate,
                name=f"stage{i}",
            )(y, train)
            intermediates[f"stage{i}"] = y
        pre_logits = y[:, -1, :]
        intermediates["pre_logits"] = pre_logits
        logits = nn.Dense(self.num_classes, name="head")(pre_logits)
        return logits, intermediates


register(
    "cnn1d",
    Conv1dNet,
    input_shape=SERIES_INPUT_SHAPE,
    paper="1-D VGG-style CNN (Simonyan & Zisserman 2015 pattern applied to sequences)",
    description="1-D CNN, stem + 3 conv-BN-ReLU-maxpool stages, next-step up/down of a series",
)
register(
    "tcn1d",
    TemporalConvNet,
    input_shape=SERIES_INPUT_SHAPE,
    paper=PAPER_TCN,
    description="causal dilated TCN, dilations 1-8, kernel 3, receptive field 61 steps",
)
