"""CIFAR ResNets of He et al. 2016 ("Deep residual learning for image recognition", Sec. 4.2).

A 3x3 stem conv with 16 filters, then three stages of `n` basic blocks on 32x32, 16x16 and 8x8
maps with 16, 32 and 64 filters, global average pooling and a 10-way dense layer: `6n + 2` layers.
Option A shortcuts (parameter-free: stride-2 subsampling plus zero channels) as in the paper;
option B uses 1x1 projections where the shape changes. ResNet-20 has 269,722 parameters; the
paper's 0.27M, 0.46M, 0.66M, 0.85M and 1.7M for depths 20-110 are these counts rounded.

The "plain" networks of Sec. 4.2 (`plain20` .. `plain110`, `shortcut="none"`) are the same stacks
without shortcuts; with option A shortcuts being parameter-free, they have the same parameters.
The basic block is shared with the ImageNet ResNets (`cnnjax.models.resnet.BasicBlock`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnjax.errors import ConfigError, unknown_choice
from cnnjax.layers import BatchNorm, Conv2d, global_avg_pool
from cnnjax.layers.conv import he_normal_fan_out
from cnnjax.layers.dropout import make_dropout
from cnnjax.layers.fusion import conv_bn_act
from cnnjax.models.registry import register
from cnnjax.models.resnet import BLOCK_DROPOUT_POSITIONS, SHORTCUTS, BasicBlock

__all__ = ["BLOCKS_PER_STAGE", "PUBLISHED_ERROR", "BasicBlock", "CifarResNet"]

ModuleDef = Any

# Paper, Sec. 4.2: depth 6n+2 with n in {3, 5, 7, 9, 18}.
BLOCKS_PER_STAGE = {20: 3, 32: 5, 44: 7, 56: 9, 110: 18}
PUBLISHED_ERROR = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43}  # Table 6, % test error
PUBLISHED_PARAMS_M = {20: 0.27, 32: 0.46, 44: 0.66, 56: 0.85, 110: 1.7}  # Table 6, millions


class CifarResNet(nn.Module):
    """CIFAR ResNet. Input `(N, 32, 32, 3)` NHWC -> `(logits (N, num_classes), intermediates)`.

    Attributes:
      depth: 6n+2 total layers; one of `BLOCKS_PER_STAGE`.
      num_classes: output units.
      width: filters of the first stage (doubled in each later stage).
      shortcut: "A" (zero-padded identity, the paper's CIFAR choice), "B" (1x1 projection) or
        "none" (no shortcuts: the paper's plain baseline).
      conv: convolution constructor (injected so ablations can swap it).
      norm: normalization constructor taking `use_running_average`.
      act: activation function.
      zero_init_residual: zero-initialize the scale of each block's last BN.
      dropout_rate: dropout rate (0: none), for the BN-versus-dropout ablation (Li et al. 2019).
      dropout_position: "after_bn" or "before_bn" (one dropout in every block, see
        `BasicBlock`) or "head" (only on the pooled features, before the classifier).
      dropout_kind: "bernoulli", "channel", "gaussian" or "uniform" (`make_dropout`).
      antialias: binomial blur size of Zhang 2019's anti-aliased downsampling in the two strided
        blocks (1: the paper's plain strided convs and subsampled shortcuts).
    """

    depth: int = 20
    num_classes: int = 10
    width: int = 16
    shortcut: str = "A"
    conv: ModuleDef = functools.partial(Conv2d, use_bias=False, kernel_init=he_normal_fan_out)
    norm: ModuleDef = BatchNorm
    act: Callable = nn.relu
    zero_init_residual: bool = False
    dropout_rate: float = 0.0
    dropout_position: str = "after_bn"
    dropout_kind: str = "bernoulli"
    antialias: int = 1

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False):
        if self.depth not in BLOCKS_PER_STAGE:
            raise ConfigError(
                f"CIFAR ResNet depth must be 6n+2 with n in the paper's set: one of "
                f"{sorted(BLOCKS_PER_STAGE)}, got {self.depth}"
            )
        if self.shortcut not in SHORTCUTS:
            raise ConfigError(unknown_choice("shortcut", self.shortcut, SHORTCUTS))
        positions = (*BLOCK_DROPOUT_POSITIONS, "head")
        if self.dropout_position not in positions:
            raise ConfigError(unknown_choice("dropout position", self.dropout_position, positions))
        in_blocks = self.dropout_position != "head"
        stem_conv = self.conv(features=self.width, kernel_size=3, name="stem_conv")
        stem_bn = self.norm(use_running_average=not train, name="stem_bn")
        stem = conv_bn_act(stem_conv, stem_bn, x, self.act)
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
                    zero_init_residual=self.zero_init_residual,
                    dropout_rate=self.dropout_rate if in_blocks else 0.0,
                    dropout_position=self.dropout_position if in_blocks else "after_bn",
                    dropout_kind=self.dropout_kind,
                    antialias=self.antialias,
                    name=f"stage{stage + 1}_block{block + 1}",
                )(y, train)
            intermediates[f"stage{stage + 1}"] = y
        pre_logits = global_avg_pool(y)
        intermediates["pre_logits"] = pre_logits
        if not in_blocks and self.dropout_rate > 0.0:
            pre_logits = make_dropout(self.dropout_kind, self.dropout_rate, name="head_drop")(
                pre_logits, not train
            )
        logits = nn.Dense(self.num_classes, name="head")(pre_logits)
        return logits, intermediates


def _register_cifar(name: str, depth: int, plain: bool = False) -> None:
    """Registers CIFAR ResNet-`depth` or, with `plain`, its shortcut-free baseline (Sec. 4.2)."""
    if plain:
        constructor = functools.partial(CifarResNet, depth=depth, shortcut="none")
        paper = "He et al. 2016 (plain baseline, Sec. 4.2)"
        description = f"CIFAR plain-{depth}: ResNet-{depth} without shortcuts"
    else:
        constructor = functools.partial(CifarResNet, depth=depth)
        paper = f"He et al. 2016 (CIFAR-10 test error {PUBLISHED_ERROR[depth]}%)"
        description = f"CIFAR ResNet-{depth}, option A shortcuts"
    register(name, constructor, input_shape=(32, 32, 3), paper=paper, description=description)


_register_cifar("resnet20", depth=20)
_register_cifar("plain20", depth=20, plain=True)
_register_cifar("resnet32", depth=32)
_register_cifar("plain32", depth=32, plain=True)
_register_cifar("resnet44", depth=44)
_register_cifar("plain44", depth=44, plain=True)
_register_cifar("resnet56", depth=56)
_register_cifar("plain56", depth=56, plain=True)
_register_cifar("resnet110", depth=110)
_register_cifar("plain110", depth=110, plain=True)
