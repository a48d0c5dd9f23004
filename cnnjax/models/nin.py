"""Network in Network (Lin et al. 2014).

An mlpconv block replaces a linear conv by a small MLP slid over the image: a `k x k` conv then
two 1x1 convs ("cascaded cross channel parametric pooling"), each followed by ReLU. The last
block outputs one confidence map per class and global average pooling turns the maps into the
logits, with no dense layer: fewer parameters to overfit, and the maps are class localisations.

`nin_cifar` is the CIFAR-10 network the authors released with the paper (the paper gives no layer
table; widths from the authors' cuda-convnet/Caffe definitions, as in the Lasagne model zoo
port): mlpconv 192-160-96 (5x5), 3x3/2 max pool, dropout 0.5, mlpconv 192-192-192 (5x5), 3x3/2
pool, dropout 0.5, mlpconv 192-192-classes (3x3), ReLU on every layer including the last,
global average pool: 966,986 parameters. The pools use ceil mode (Caffe's), so 32 -> 16 -> 8.
The paper's text says every mlpconv block is followed by max pooling; the released definition
averages in the second pool; `block_pools=("max", "avg")` (the default) follows the released
definition and `("max", "max")` the text.

`nin_imagenet` is the ImageNet network the authors released in the Caffe Model Zoo
("NIN-Imagenet", 224x224 crops): mlpconv 96-96-96 (11x11, stride 4, no padding), 3x3/2 max pool,
mlpconv 256-256-256 (5x5), pool, mlpconv 384-384-384 (3x3), pool, dropout 0.5, mlpconv
1024-1024-classes (3x3), global average pool over the 6x6 maps: 7,595,176 parameters. The d2l
textbook's NiN is this network with the last block's 1024 channels cut to the class count; its
cost analysis (where the memory and the compute go) is worked out in docs/worked_answers.md.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from cnnjax.errors import ConfigError, unknown_choice
from cnnjax.layers import Conv2d, avg_pool2d, global_avg_pool, max_pool2d
from cnnjax.models.registry import register

ModuleDef = Any


class BlockSpec(NamedTuple):
    """One mlpconv block: its first conv, its 1x1 widths (None: the class count), dropout after."""

    kernel: int
    width: int
    mlp: tuple[int | None, ...]
    stride: int = 1
    padding: int | None = None  # None: kernel // 2, which keeps the map size at stride 1
    dropout: bool = False  # dropout after the block's pool


NIN_SPECS: dict[str, tuple[BlockSpec, ...]] = {
    "cifar": (
        BlockSpec(5, 192, (160, 96), dropout=True),
        BlockSpec(5, 192, (192, 192), dropout=True),
        BlockSpec(3, 192, (192, None)),
    ),
    "imagenet": (
        BlockSpec(11, 96, (96, 96), stride=4, padding=0),
        BlockSpec(5, 256, (256, 256)),
        BlockSpec(3, 384, (384, 384), dropout=True),
        BlockSpec(3, 1024, (1024, None)),
    ),
}
POOL_KINDS = ("max", "avg")
# The released definitions: the CIFAR net averages in its second pool, the ImageNet net never.
DEFAULT_POOLS = {"cifar": ("max", "avg"), "imagenet": ("max", "max", "max")}

_ceil_max_pool = functools.partial(max_pool2d, window=3, strides=2, ceil_mode=True)
_ceil_avg_pool = functools.partial(avg_pool2d, window=3, strides=2, ceil_mode=True)


class MlpConv(nn.Module):
    """`k x k` conv then 1x1 convs, each followed by `act`. `(N, H, W, C) -> (N, H, W, widths[-1])`.

    Attributes:
      kernel: size of the first conv.
      widths: output channels of the first conv and of each 1x1 conv.
      stride: stride of the first conv.
      padding: zero padding of the first conv (None: `kernel // 2`, the map size at stride 1).
      conv: convolution constructor.
      norm: optional normalization after each conv (None in the paper).
      act: activation.
    """

    kernel: int
    widths: Sequence[int]
    stride: int = 1
    padding: int | None = None
    conv: ModuleDef = Conv2d
    norm: ModuleDef | None = None
    act: Callable[[jnp.ndarray], jnp.ndarray] = nn.relu

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        padding = self.kernel // 2 if self.padding is None else self.padding
        for i, width in enumerate(self.widths):
            first, name = i == 0, "conv" if i == 0 else f"cccp{i}"
            x = self.conv(
                features=width,
                kernel_size=self.kernel if first else 1,
                strides=self.stride if first else 1,
                padding=padding if first else 0,
                name=name,
            )(x)
            if self.norm is not None:
                x = self.norm(use_running_average=not train, name=f"{name}_bn")(x)
            x = self.act(x)
        return x


class NiN(nn.Module):
    """Network in Network. `(N, H, W, C)` NHWC -> `(logits (N, num_classes), intermediates)`.

    Intermediates: "stem" block 1 before pooling, "stage1".."stageN" the blocks after pooling
    (the last block is not pooled: its `(N, h, w, num_classes)` class confidence maps), and
    "pre_logits" those maps, which global average pooling turns into the logits.

    Attributes:
      variant: a key of `NIN_SPECS` ("cifar" or "imagenet").
      num_classes: output units (channels of the last 1x1 conv).
      block_pools: pooling after each block but the last: "max" (`pool`) or "avg" (`avg_pool`);
        None: the variant's released definition (`DEFAULT_POOLS`).
      dropout_rate: dropout after the pools of the blocks whose spec asks for it.
      conv: convolution constructor.
      norm: optional normalization after every conv (None: the paper's).
      act: activation.
      pool: the max pool (3x3/2, ceil mode).
      avg_pool: the average pool (3x3/2, ceil mode).
    """

    variant: str = "cifar"
    num_classes: int = 10
    block_pools: Sequence[str] | None = None
    dropout_rate: float = 0.5
    conv: ModuleDef = Conv2d
    norm: ModuleDef | None = None
    act: Callable[[jnp.ndarray], jnp.ndarray] = nn.relu
    pool: Callable[[jnp.ndarray], jnp.ndarray] = _ceil_max_pool
    avg_pool: Callable[[jnp.ndarray], jnp.ndarray] = _ceil_avg_pool

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False):
        if self.variant not in NIN_SPECS:
            raise ConfigError(unknown_choice("NiN variant", self.variant, NIN_SPECS))
        spec = NIN_SPECS[self.variant]
        pools = DEFAULT_POOLS[self.variant] if self.block_pools is None else self.block_pools
        if len(pools) != len(spec) - 1:
            raise ConfigError(
                f"NiN block_pools needs {len(spec) - 1} entries (one per block but the last), "
                f"got {tuple(pools)!r}"
            )
        for kind in pools:
            if kind not in POOL_KINDS:
                raise ConfigError(unknown_choice("NiN pool kind", kind, POOL_KINDS))
        intermediates = {}
        for i, block in enumerate(spec, start=1):
            widths = (block.width, *(self.num_classes if w is None else w for w in block.mlp))
            x = MlpConv(
                block.kernel,
                widths,
                block.stride,
                block.padding,
                self.conv,
                self.norm,
                self.act,
                name=f"block{i}",
            )(x, train)
            if i == 1:
                intermediates["stem"] = x
            if i < len(spec):
                x = self.pool(x) if pools[i - 1] == "max" else self.avg_pool(x)
            intermediates[f"stage{i}"] = x
            if block.dropout:
                x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        intermediates["pre_logits"] = x
        return global_avg_pool(x), intermediates


# Both come from Lin et al. 2014 (the ImageNet one as the authors released it, see above).
_register_nin = functools.partial(register, paper="Lin et al. 2014")
_register_nin(
    "nin_cifar",
    NiN,
    input_shape=(32, 32, 3),
    description="Network in Network for CIFAR-10: three mlpconv blocks, global average pooling",
)
_register_nin(
    "nin_imagenet",
    functools.partial(NiN, variant="imagenet", num_classes=1000),
    input_shape=(224, 224, 3),
    description="Network in Network for ImageNet (the authors' Caffe model): four mlpconv blocks",
)
