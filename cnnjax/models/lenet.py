"""LeNet-5 (LeCun et al. 1998, "Gradient-based learning applied to document recognition").

Layers C1 (6@5x5) - S2 (2x2 subsampling) - C3 (16@5x5) - S4 - C5 (120@5x5, a convolution that
sees the whole 5x5 map) - F6 (84) - output, on 32x32 inputs (MNIST's 28x28 digits padded by 2).
With full C3 connections the network has 61,706 parameters.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnjax.layers import Conv2d, avg_pool2d, max_pool2d
from cnnjax.models.registry import register

ModuleDef = Any


class LeNet5(nn.Module):
    """LeNet-5. Input `(N, 32, 32, C)` NHWC -> `(logits (N, num_classes), intermediates)`.

    Attributes:
      num_classes: output units.
      act: activation after every conv and hidden dense layer (tanh in 1998, ReLU today).
      pool: subsampling function `(x) -> x` (average pooling in 1998, max pooling today).
      conv: convolution constructor, called as `conv(features=, kernel_size=, padding=)`.
    """

    num_classes: int = 10
    act: Callable[[jnp.ndarray], jnp.ndarray] = nn.relu
    pool: Callable[[jnp.ndarray], jnp.ndarray] = max_pool2d
    conv: ModuleDef = Conv2d

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False):
        del train  # no batch statistics or dropout
        c1 = self.act(self.conv(features=6, kernel_size=5, padding="valid", name="c1")(x))
        s2 = self.pool(c1)
        c3 = self.act(self.conv(features=16, kernel_size=5, padding="valid", name="c3")(s2))
        s4 = self.pool(c3)
        c5 = self.act(self.conv(features=120, kernel_size=5, padding="valid", name="c5")(s4))
        f6 = self.act(nn.Dense(84, name="f6")(c5.reshape(c5.shape[0], -1)))
        logits = nn.Dense(self.num_classes, name="output")(f6)
        return logits, {"stem": c1, "stage1": s2, "stage2": s4, "stage3": c5, "pre_logits": f6}


_LENET_META = dict(input_shape=(32, 32, 1), num_classes=10, paper="LeCun et al. 1998")
register(
    "lenet5",
    LeNet5,
    description="LeNet-5, modern form: ReLU and 2x2 max pooling",
    **_LENET_META,
)
register(
    "lenet5_classic",
    functools.partial(LeNet5, act=jnp.tanh, pool=avg_pool2d),
    description="LeNet-5 as in 1998: tanh and 2x2 average subsampling (full C3 connections)",
    **_LENET_META,
)
