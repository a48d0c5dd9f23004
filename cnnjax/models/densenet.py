"""DenseNets of Huang et al. 2017 ("Densely connected convolutional networks").

Inside a dense block every layer receives the concatenation of the block input and all earlier
layers' outputs and adds `k` (the growth rate) channels. DenseNet-BC layers are bottlenecks,
BN-ReLU-1x1 conv (`bn_size * k` channels) - BN-ReLU-3x3 conv (`k` channels); transitions between
blocks are BN-ReLU-1x1 conv (compression: `floor(theta * m)` of `m` channels, theta = 0.5) - 2x2
average pooling. After the last block: BN, ReLU, global average pooling, a dense classifier.

* ImageNet (`densenet121/161/169/201`, as torchvision): 7x7/2 conv (`2k` filters, 96 for 161)
  + BN + ReLU + 3x3/2 max pool (padding 1) stem, four blocks; torchvision's parameter counts
  (DenseNet-121 7,978,856, -161 28,681,000, -169 14,149,480, -201 20,013,928). `_convert_densenet`
  maps `features.denseblock{i}.denselayer{j}` -> `block{i}_layer{j}` and
  `features.transition{i}` -> `transition{i}`, `conv0`/`norm0`/`norm5`/`classifier` ->
  `stem_conv`/`stem_bn`/`final_bn`/`head`.
* CIFAR (`densenet_bc_100`, k = 12): a single 3x3 conv with `2k = 24` filters as stem (no BN,
  no pooling), three blocks of 16 bottleneck layers on 32, 16 and 8 pixel maps:
  `L = 3 * 16 * 2 + 4 = 100` layers, 769,162 parameters for 10 classes (the paper's "0.8M").

Dropout (`dropout_rate`, 0 by default) follows each layer's 3x3 conv as in torchvision; the paper
(0.2 on CIFAR without augmentation) also drops after the 1x1 and transition convs.

Concatenation: each dense block allocates its output once (the input padded with `L k` zero
channels) and every layer writes its `k` channels into it in place (`dynamic_update_slice`) and
reads the first `c` channels as its input, so the traced program grows linearly with depth and
nothing is copied per layer in the forward pass. The backward pass, though, keeps each layer's
input (a `c`-channel slice) for its first BN: memory quadratic in the block's depth.

`memory_efficient=True` (Pleiss et al. 2017, "Memory-efficient implementation of DenseNets";
torchvision's flag of the same name): each dense layer concatenates the block's feature maps
itself and runs under `jax.checkpoint`, so the backward pass keeps only the feature maps (each
once, shared by every later layer: linear memory) and recomputes the concatenation, BN, ReLU and
convolutions of one layer at a time. The same parameters and function; about one extra forward
pass of the dense layers in compute.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from cnnjax.errors import ConfigError, unknown_choice
from cnnjax.layers import BatchNorm, Conv2d, avg_pool2d, global_avg_pool, max_pool2d
from cnnjax.models.convert import TorchReader
from cnnjax.models.registry import register

ModuleDef = Any

# torchvision's conv init: kaiming_normal_ with its default fan-in mode (He et al. 2015).
he_normal_fan_in = nn.initializers.variance_scaling(2.0, "fan_in", "normal")

STEMS = ("imagenet", "cifar")


class DenseLayer(nn.Module):
    """`(N, H, W, C) -> (N, H, W, growth_rate)`: the new features of one dense layer.

    The input is one array or the sequence of feature maps to concatenate along channels.

    BN-act-1x1 conv (`bn_size * growth_rate`) - BN-act-3x3 conv (`growth_rate`) - dropout;
    `bn_size=0` drops the bottleneck (a basic DenseNet layer: BN-act-3x3 conv).
    """

    growth_rate: int
    bn_size: int
    dropout_rate: float
    conv: ModuleDef
    norm: ModuleDef
    act: Callable

    @nn.compact
    def __call__(self, x: jnp.ndarray | Sequence[jnp.ndarray], train: bool) -> jnp.ndarray:
        norm = functools.partial(self.norm, use_running_average=not train)
        # A sequence: the block's feature maps so far, concatenated here (memory-efficient mode).
        y = x if isinstance(x, jnp.ndarray) else jnp.concatenate(list(x), axis=-1)
        if self.bn_size:
            y = self.act(norm(name="bn1")(y))
            y = self.conv(
                features=self.bn_size * self.growth_rate, kernel_size=1, padding=0, name="conv1"
            )(y)
        y = self.act(norm(name="bn2")(y))
        y = self.conv(features=self.growth_rate, kernel_size=3, padding=1, name="conv2")(y)
        if self.dropout_rate:
            y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
        return y


class Transition(nn.Module):
    """BN-act-1x1 conv (`features`) - pooling: `(N, H, W, C) -> (N, H/2, W/2, features)`."""

    features: int
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    pool: Callable

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        y = self.act(self.norm(use_running_average=not train, name="bn")(x))
        y = self.conv(features=self.features, kernel_size=1, padding=0, name="conv")(y)
        return self.pool(y)


# depth -> (growth rate k, layers per block, stem filters); Table 1 of the paper, and torchvision.
DENSENET_SPECS: dict[int, tuple[int, tuple[int, ...], int]] = {
    121: (32, (6, 12, 24, 16), 64),
    161: (48, (6, 12, 36, 24), 96),
    169: (32, (6, 12, 32, 32), 64),
    201: (32, (6, 12, 48, 32), 64),
}
# ImageNet val top-1 error (%), single crop, Table 3; DenseNet-161 (k=48) is not in the paper's
# table but in the authors' model release.
PUBLISHED_TOP1_ERROR = {121: 25.02, 169: 23.80, 201: 22.58}


class DenseNet(nn.Module):
    """DenseNet(-BC). Input `(N, H, W, C)` NHWC -> `(logits (N, num_classes), intermediates)`.

    Intermediates: "stem" (input of the first block), "stage1".."stageN" (each dense block's
    concatenated output, before its transition) and "pre_logits" (`(N, C_final)`, after the
    final BN-act and global average pooling).

    Attributes:
      growth_rate: channels `k` each dense layer adds.
      block_config: number of dense layers in each block.
      num_init_features: filters of the stem conv.
      bn_size: the bottleneck 1x1 conv has `bn_size * k` filters (0: no bottleneck, "DenseNet").
      compression: transitions keep `floor(compression * m)` of `m` channels, in (0, 1].
      stem: "imagenet" (7x7/2 conv, BN, act, max pool) or "cifar" (a single 3x3 conv).
      num_classes: output units.
      dropout_rate: dropout after each dense layer's 3x3 conv (train only).
      conv: convolution constructor, called as `conv(features=, kernel_size=, strides=, padding=)`.
      norm: normalization constructor taking `use_running_average`.
      act: activation function.
      pool: the ImageNet stem's max pooling.
      transition_pool: the transitions' downsampling (2x2 average pooling).
      memory_efficient: recompute each dense layer in the backward pass from the block's feature
        maps instead of saving its concatenated input (see the module docstring).
    """

    growth_rate: int = 32
    block_config: Sequence[int] = (6, 12, 24, 16)
    num_init_features: int = 64
    bn_size: int = 4
    compression: float = 0.5
    stem: str = "imagenet"
    num_classes: int = 1000
    dropout_rate: float = 0.0
    conv: ModuleDef = functools.partial(Conv2d, use_bias=False, kernel_init=he_normal_fan_in)
    norm: ModuleDef = BatchNorm
    act: Callable = nn.relu
    pool: Callable = functools.partial(max_pool2d, window=3, strides=2, padding=1)
    transition_pool: Callable = functools.partial(avg_pool2d, window=2, strides=2)
    memory_efficient: bool = False

    def _check(self) -> None:
        if self.stem not in STEMS:
            raise ConfigError(unknown_choice("DenseNet stem", self.stem, STEMS))
        positive = {"growth_rate": self.growth_rate, "num_init_features": self.num_init_features}
        positive.update({f"block_config[{i}]": n for i, n in enumerate(self.block_config)})
        for field, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"DenseNet {field} must be a positive integer, got {value!r}")
        if not self.block_config:
            raise ConfigError("DenseNet block_config must list at least one dense block")
        if not isinstance(self.bn_size, int) or self.bn_size < 0:
            raise ConfigError(f"DenseNet bn_size must be an integer >= 0, got {self.bn_size!r}")
        if not 0.0 < self.compression <= 1.0:
            raise ConfigError(f"DenseNet compression must be in (0, 1], got {self.compression}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ConfigError(f"DenseNet dropout_rate must be in [0, 1), got {self.dropout_rate}")

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False):
        self._check()
        if self.stem == "imagenet":
            y = self.conv(
                features=self.num_init_features,
                kernel_size=7,
                strides=2,
                padding=3,
                name="stem_conv",
            )(x)
            y = self.act(self.norm(use_running_average=not train, name="stem_bn")(y))
            y = self.pool(y)
        else:
            y = self.conv(
                features=self.num_init_features, kernel_size=3, padding=1, name="stem_conv"
            )(x)
        intermediates = {"stem": y}
        # `train` is a Python bool that selects BN's mode: static under `jax.checkpoint`.
        layer_class = (
            nn.remat(DenseLayer, static_argnums=(2,)) if self.memory_efficient else DenseLayer
        )
        layer = functools.partial(
            layer_class,
            growth_rate=self.growth_rate,
            bn_size=self.bn_size,
            dropout_rate=self.dropout_rate,
            conv=self.conv,
            norm=self.norm,
            act=self.act,
        )
        for block, num_layers in enumerate(self.block_config, start=1):
            if self.memory_efficient:
                features = [y]
                for index in range(1, num_layers + 1):
                    new = layer(name=f"block{block}_layer{index}")(tuple(features), train)
                    features.append(new.astype(y.dtype))
                y = jnp.concatenate(features, axis=-1)
            else:
                # One buffer per block, filled in place: with a chain of concatenates instead, XLA
                # took twice as long to compile DenseNet-201's training step (95 s against 50 s).
                channels = y.shape[-1]
                y = jnp.pad(y, ((0, 0), (0, 0), (0, 0), (0, num_layers * self.growth_rate)))
                for index in range(1, num_layers + 1):
                    new = layer(name=f"block{block}_layer{index}")(y[..., :channels], train)
                    y = lax.dynamic_update_slice(y, new.astype(y.dtype), (0, 0, 0, channels))
                    channels += self.growth_rate
            intermediates[f"stage{block}"] = y
            if block < len(self.block_config):
                y = Transition(
                    features=math.floor(self.compression * y.shape[-1]),
                    conv=self.conv,
                    norm=self.norm,
                    act=self.act,
                    pool=self.transition_pool,
                    name=f"transition{block}",
                )(y, train)
        y = self.act(self.norm(use_running_average=not train, name="final_bn")(y))
        pre_logits = global_avg_pool(y)
        intermediates["pre_logits"] = pre_logits
        logits = nn.Dense(self.num_classes, name="head")(pre_logits)
        return logits, intermediates


def _convert_densenet(reader: TorchReader) -> dict:
    """torchvision `DenseNet` state dict -> `{"params", "batch_stats"}` of `DenseNet`.

    Walks the blocks, layers and transitions present in the state dict, so one converter serves
    every variant; `from_torch` checks that every tensor was used and every shape fits.
    """
    params: dict = {"stem_conv": reader.conv("features.conv0")}
    stats: dict = {}
    params["stem_bn"], stats["stem_bn"] = reader.batch_norm("features.norm0")
    block = 1
    while f"features.denseblock{block}.denselayer1.conv1.weight" in reader.tensors:
        index = 1
        while f"features.denseblock{block}.denselayer{index}.conv1.weight" in reader.tensors:
            prefix = f"features.denseblock{block}.denselayer{index}"
            p, s = {}, {}
            for i in (1, 2):
                p[f"conv{i}"] = reader.conv(f"{prefix}.conv{i}")
                p[f"bn{i}"], s[f"bn{i}"] = reader.batch_norm(f"{prefix}.norm{i}")
            params[f"block{block}_layer{index}"], stats[f"block{block}_layer{index}"] = p, s
            index += 1
        prefix = f"features.transition{block}"
        if f"{prefix}.conv.weight" in reader.tensors:
            bn_params, bn_stats = reader.batch_norm(f"{prefix}.norm")
            params[f"transition{block}"] = {"bn": bn_params, "conv": reader.conv(f"{prefix}.conv")}
            stats[f"transition{block}"] = {"bn": bn_stats}
        block += 1
    params["final_bn"], stats["final_bn"] = reader.batch_norm("features.norm5")
    params["head"] = reader.dense("classifier")
    return {"params": params, "batch_stats": stats}


def _imagenet_paper(depth: int) -> str:
    if depth in PUBLISHED_TOP1_ERROR:
        error = PUBLISHED_TOP1_ERROR[depth]
        return f"Huang et al. 2017 (ImageNet top-1 error {error}%, single crop)"
    return "Huang et al. 2017 (authors' k=48 release, not in the paper's tables)"


def _register_densenet(name: str, depth: int) -> None:
    """Registers torchvision's `densenet{depth}`; one converter serves every variant."""
    growth_rate, block_config, num_init_features = DENSENET_SPECS[depth]
    blocks = "-".join(map(str, block_config))
    register(
        name,
        functools.partial(
            DenseNet,
            growth_rate=growth_rate,
            block_config=block_config,
            num_init_features=num_init_features,
        ),
        input_shape=(224, 224, 3),
        paper=_imagenet_paper(depth),
        description=f"ImageNet DenseNet-BC-{depth}, k={growth_rate}, blocks {blocks}",
        converter=_convert_densenet,
    )


_register_densenet("densenet121", depth=121)
_register_densenet("densenet161", depth=161)
_register_densenet("densenet169", depth=169)
_register_densenet("densenet201", depth=201)

# The CIFAR DenseNet-BC has no torchvision counterpart, hence no converter.
register(
    "densenet_bc_100",
    functools.partial(
        DenseNet,
        growth_rate=12,
        block_config=(16, 16, 16),
        num_init_features=24,
        stem="cifar",
        num_classes=10,
    ),
    input_shape=(32, 32, 3),
    paper="Huang et al. 2017 (CIFAR-10+ test error 4.51%, 0.8M params)",
    description="CIFAR DenseNet-BC (L=100, k=12): 3 blocks of 16 bottleneck layers, theta=0.5",
)
