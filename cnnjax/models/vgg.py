"""VGG (Simonyan & Zisserman 2015, "Very deep convolutional networks for large-scale image
recognition").

Stacks of 3x3 convolutions (stride 1, padding 1) in five blocks separated by 2x2 max pools, the
widths doubling from 64 to 512; two 3x3 convs see a 5x5 window with fewer parameters and one
more nonlinearity than one 5x5 conv. Configurations A, B, D and E of the paper's Table 1 are
`vgg11`, `vgg13`, `vgg16` and `vgg19` (`VGG_SPECS`), matching torchvision exactly: an adaptive
7x7 average pool, then 4096-4096 dense layers with dropout; the `_bn` variants add batch
normalization (eps 1e-5) after every conv, keeping the conv biases as torchvision does. VGG-16 has
138,357,544 parameters, VGG-16-BN 138,365,992.

`vgg16_cifar` is the 32x32 adaptation popularised by kuangliu/pytorch-cifar (not in the VGG
paper): configuration D with batch normalization, the five pools leaving a 1x1x512 map that a
single dense layer classifies (no hidden dense layers, no dropout): 14,728,266 parameters for 10
classes. Liu & Deng 2015 similarly adapted a batch-normalized VGG-16 to CIFAR-10; this module
follows kuangliu's layout, not theirs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnjax.errors import ConfigError, unknown_choice
from cnnjax.layers import BatchNorm, Conv2d, max_pool2d
from cnnjax.layers.conv import he_normal_fan_out
from cnnjax.layers.fusion import conv_bn_act
from cnnjax.layers.pooling import adaptive_avg_pool2d
from cnnjax.models.convert import TorchReader
from cnnjax.models.registry import register

ModuleDef = Any

# Table 1: the widths of the convs of each of the five blocks (each block ends in a max pool).
VGG_SPECS: dict[str, tuple[tuple[int, ...], ...]] = {
    "A": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "B": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "D": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "E": ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}
DEPTHS = {"A": 11, "B": 13, "D": 16, "E": 19}

# torchvision's initialization: He normal (fan-out) convs, N(0, 0.01) dense layers, zero biases.
VGGConv = functools.partial(Conv2d, kernel_init=he_normal_fan_out)
_dense_init = nn.initializers.normal(0.01)


class VGG(nn.Module):
    """VGG. `(N, H, W, C)` NHWC -> `(logits (N, num_classes), intermediates)`.

    Intermediates: "stem" the first conv's activation `(N, H, W, 64)`, "stage1".."stage5" the
    pooled blocks (`H/2` .. `H/32`), "pre_logits" the input of the last dense layer (`(N, 4096)`
    for the ImageNet form, the flattened map for the CIFAR form).

    Attributes:
      config: a key of `VGG_SPECS` ("A", "B", "D", "E").
      num_classes: output units.
      width_multiplier: scales every conv width (1.0: the paper's).
      widths: the conv widths of each block, overriding `config`'s table and `width_multiplier`
        (e.g. a channel-pruned VGG made compact, `cnnjax.compress.compact`); None: the table's.
      hidden: widths of the hidden dense layers (`()`: a single dense layer on the features).
      pool_size: adaptive average pool before the classifier (7 in torchvision; None: flatten
        the last map as it is).
      dropout_rate: dropout after each hidden dense layer.
      conv: convolution constructor, called as `conv(features=, kernel_size=3, padding=1)`.
      norm: normalization after each conv (None: plain VGG; `BatchNorm`: the `_bn` variants).
      act: activation.
      pool: the 2x2 max pool ending each block.
    """

    config: str = "D"
    num_classes: int = 1000
    width_multiplier: float = 1.0
    widths: Sequence[Sequence[int]] | None = None
    hidden: Sequence[int] = (4096, 4096)
    pool_size: int | None = 7
    dropout_rate: float = 0.5
    conv: ModuleDef = VGGConv
    norm: ModuleDef | None = None
    act: Callable[[jnp.ndarray], jnp.ndarray] = nn.relu
    pool: Callable[[jnp.ndarray], jnp.ndarray] = max_pool2d

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False):
        intermediates = {}
        for block, widths in enumerate(block_widths(self), start=1):
            for i, features in enumerate(widths, start=1):
                name = f"conv{block}_{i}"
                conv = self.conv(features=features, kernel_size=3, padding=1, name=name)
                if self.norm is None:
                    x = self.act(conv(x))
                else:
                    bn = self.norm(use_running_average=not train, name=f"bn{block}_{i}")
                    x = conv_bn_act(conv, bn, x, self.act)
                intermediates.setdefault("stem", x)
            x = self.pool(x)
            intermediates[f"stage{block}"] = x
        if self.pool_size is not None:
            x = adaptive_avg_pool2d(x, self.pool_size, layer="avgpool")
        x = pre_logits = x.reshape(x.shape[0], -1)
        for i, width in enumerate(self.hidden, start=6):
            x = pre_logits = self.act(nn.Dense(width, kernel_init=_dense_init, name=f"fc{i}")(x))
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        intermediates["pre_logits"] = pre_logits
        logits = nn.Dense(self.num_classes, kernel_init=_dense_init, name="head")(x)
        return logits, intermediates


def block_widths(vgg: VGG) -> list[list[int]]:
    """The conv widths of each block of `vgg`: its `widths`, or its `config`'s table scaled by
    `width_multiplier`.

    Raises:
      ConfigError: an unknown config, a multiplier <= 0, or widths that are not blocks of
        positive ints.
    """
    if vgg.widths is not None:
        blocks = [list(block) for block in vgg.widths]
        ok = blocks and all(
            block and all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in block)
            for block in blocks
        )
        if not ok:
            raise ConfigError(
                f"VGG widths must be blocks of positive ints, e.g. [[64, 64], [128]], got "
                f"{vgg.widths!r}"
            )
        return blocks
    if vgg.config not in VGG_SPECS:
        raise ConfigError(unknown_choice("VGG configuration", vgg.config, VGG_SPECS))
    if not vgg.width_multiplier > 0:
        raise ConfigError(f"VGG width_multiplier must be > 0, got {vgg.width_multiplier}")
    return [
        [max(1, round(w * vgg.width_multiplier)) for w in block] for block in VGG_SPECS[vgg.config]
    ]


def _vgg_converter(config: str, batch_norm: bool):
    """Converter of torchvision's `vgg*`: Sequential `features.{i}`, then `classifier.{0,3,6}`."""

    def convert(reader: TorchReader) -> dict:
        params, stats = {}, {}
        index = 0
        for block, widths in enumerate(VGG_SPECS[config], start=1):
            for i in range(1, len(widths) + 1):
                params[f"conv{block}_{i}"] = reader.conv(f"features.{index}")
                if batch_norm:
                    bn_params, bn_stats = reader.batch_norm(f"features.{index + 1}")
                    params[f"bn{block}_{i}"], stats[f"bn{block}_{i}"] = bn_params, bn_stats
                index += 3 if batch_norm else 2  # conv, (bn,) relu
            index += 1  # max pool
        params["fc6"] = reader.dense("classifier.0", input_layout=(512, 7, 7))
        params["fc7"] = reader.dense("classifier.3")
        params["head"] = reader.dense("classifier.6")
        return {"params": params, "batch_stats": stats} if batch_norm else {"params": params}

    return convert


def _description(config: str, batch_norm: bool) -> str:
    return (
        f"VGG-{DEPTHS[config]} (configuration {config})"
        + (" with batch normalization" if batch_norm else "")
        + ", torchvision layout"
    )


def _register_vgg(name: str, config: str, batch_norm: bool) -> None:
    """Registers torchvision's `vgg*` / `vgg*_bn` of configuration `config` (Table 1)."""
    register(
        name,
        functools.partial(VGG, config=config, norm=BatchNorm if batch_norm else None),
        input_shape=(224, 224, 3),
        paper="Simonyan & Zisserman 2015",
        description=_description(config, batch_norm=batch_norm),
        converter=_vgg_converter(config, batch_norm=batch_norm),
    )


_register_vgg("vgg11", "A", batch_norm=False)
_register_vgg("vgg11_bn", "A", batch_norm=True)
_register_vgg("vgg13", "B", batch_norm=False)
_register_vgg("vgg13_bn", "B", batch_norm=True)
_register_vgg("vgg16", "D", batch_norm=False)
_register_vgg("vgg16_bn", "D", batch_norm=True)
_register_vgg("vgg19", "E", batch_norm=False)
_register_vgg("vgg19_bn", "E", batch_norm=True)

# The CIFAR form has no torchvision counterpart, hence no converter.
register(
    "vgg16_cifar",
    functools.partial(VGG, config="D", norm=BatchNorm, hidden=(), pool_size=None, num_classes=10),
    input_shape=(32, 32, 3),
    paper="Simonyan & Zisserman 2015; CIFAR form of kuangliu/pytorch-cifar",
    description="VGG-16 with BN for 32x32 inputs: 1x1x512 features, one dense layer",
)
