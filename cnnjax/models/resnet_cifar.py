"""CIFAR ResNets of He et al. 2016 ("Deep residual learning for image recognition", Sec. 4.2).

A 3x3 stem conv with 16 filters, then three stages of `n` basic blocks on 32x32, 16x16 and 8x8
maps with 16, 32 and 64 filters, global average pooling and a 10-way dense layer: `6n + 2` layers.
Option A shortcuts (parameter-free: stride-2 subsampling plus zero channels) as in the paper;
option B uses 1x1 projections where the shape changes. ResNet-20 has 269,722 parameters.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnjax.errors import ConfigError
from cnnjax.layers import BatchNorm, Conv2d, global_avg_pool
from cnnjax.layers.conv import he_normal_fan_out
from cnnjax.models.registry import register

ModuleDef = Any

# Paper, Sec. 4.2: depth 6n+2 with n in {3, 5, 7, 9, 18}.
BLOCKS_PER_STAGE = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18}
PUBLISHED_ERROR = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43}  # Table 6, % test error


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a shortcut: `relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))`."""

    features: int
    strides: int
    shortcut: str
    conv: ModuleDef
    norm: ModuleDef
    act: Callable

    @nn.compact
    def __call__(self, x, train: bool):
        norm = functools.partial(self.norm, use_running_average=not train)
        y = self.conv(features=self.features, kernel_size=3, strides=self.strides, name="conv1")(x)
        y = self.act(norm(name="bn1")(y))
        y = self.conv(features=self.features, kernel_size=3, name="conv2")(y)
        y = norm(name="bn2")(y)
        if x.shape != y.shape:
            if self.shortcut == "A":
                x = x[:, :: self.strides, :: self.strides, :]
                zeros = jnp.zeros((*x.shape[:3], self.features - x.shape[-1]), x.dtype)
                x = jnp.concatenate([x, zeros], axis=-1)
            else:
                x = self.conv(
                    features=self.features,
                    kernel_size=1,
                    strides=self.strides,
                    padding="valid",
                    name="proj",
                )(x)
                x = norm(name="proj_bn")(x)
        return self.act(y + x)


class CifarResNet(nn.Module):
    """CIFAR ResNet. Input `(N, 32, 32, 3)` NHWC -> `(logits (N, num_classes), intermediates)`.

    Attributes:
      depth: 6n+2 total layers; one of `BLOCKS_PER_STAGE`.
      num_classes: output units.
      width: filters of the first stage (doubled in each later stage).
      shortcut: "A" (zero-padded identity, the paper's CIFAR choice) or "B" (1x1 projection).
      conv: convolution constructor (injected so ablations can swap it).
      norm: normalization constructor taking `use_running_average`.
      act: activation function.
    """

    depth: int = 20
    num_classes: int = 10
    width: int = 16
    shortcut: str = "A"
    conv: ModuleDef = functools.partial(Conv2d, use_bias=False, kernel_init=he_normal_fan_out)
    norm: ModuleDef = BatchNorm
    act: Callable = nn.relu

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False):
        if self.depth not in BLOCKS_PER_STAGE:
            raise ConfigError(
                f"CIFAR ResNet depth must be 6n+2 with n in the paper's set: one of "
                f"{sorted(BLOCKS_PER_STAGE)}, got {self.depth}"
            )
        if self.shortcut not in ("A", "B"):
            raise ConfigError(f"unknown shortcut {self.shortcut!r} (valid choices: A, B)")
        y = self.conv(features=self.width, kernel_size=3, name="stem_conv")(x)
        stem = self.act(self.norm(use_running_average=not train, name="stem_bn")(y))
        intermediates = {"stem": stem}
        y = stem
        for stage in range(3):
            for block in range(BLOCKS_PER_STAGE[self.depth]):
                y = BasicBlock(
                    features=self.width * 2**stage,
                    strides=2 if stage > 0 and block == 0 else 1,
                    shortcut=self.shortcut,
                    conv=self.conv,
                    norm=self.norm,
                    act=self.act,
                    name=f"stage{stage + 1}_block{block + 1}",
                )(y, train)
            intermediates[f"stage{stage + 1}"] = y
        pre_logits = global_avg_pool(y)
        intermediates["pre_logits"] = pre_logits
        logits = nn.Dense(self.num_classes, name="head")(pre_logits)
        return logits, intermediates


for _depth in BLOCKS_PER_STAGE:
    register(
        f"resnet{_depth}",
        functools.partial(CifarResNet, depth=_depth),
        input_shape=(32, 32, 3),
        num_classes=10,
        paper=f"He et al. 2016 (CIFAR-10 test error {PUBLISHED_ERROR[_depth]}%)",
        description=f"CIFAR ResNet-{_depth}, option A shortcuts",
    )
