"""ImageNet ResNets of He et al. 2016 ("Deep residual learning for image recognition").

A 7x7/2 conv (64 filters) + BN + ReLU + 3x3/2 max pool (padding 1) stem, four stages on 56, 28,
14 and 7 pixel maps (224 input) with 64, 128, 256 and 512 base filters, global average pooling and
a dense classifier. Each stage but the first halves the map in its first block. Blocks:

* `BasicBlock` (ResNet-18/34): two 3x3 conv-BN layers;
* `Bottleneck` (ResNet-50/101/152): 1x1 (reduce) - 3x3 - 1x1 (expand x4) conv-BN layers.

Shortcuts are identities except where the shape changes, where they are 1x1 conv + BN
projections (the paper's option B). BN eps is 1e-5 (PyTorch's default).

ResNet v1.5: like torchvision, the bottleneck's stride is on the 3x3 conv, not on the first 1x1
conv as in the paper (which makes the 1x1 skip three quarters of its input); v1.5 costs ~5% more
MACs and is ~0.5% more accurate. `stride_in_1x1=True` gives the paper's v1 layout.

Layer for layer torchvision's `resnet18` .. `resnet152`, with equal parameter counts: ResNet-18
11,689,512, ResNet-34 21,797,672, ResNet-50 25,557,032, ResNet-101 44,549,160, ResNet-152
60,192,808 (1000 classes). `_convert_resnet` maps torchvision state dicts onto these modules
(`layer{i}.{j}` -> `stage{i}_block{j+1}`, `conv1`/`bn1` -> `stem_conv`/`stem_bn`, `fc` -> `head`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from cnnjax.errors import ConfigError, unknown_choice
from cnnjax.layers import BatchNorm, Conv2d, global_avg_pool, max_pool2d
from cnnjax.layers.blurpool import blur_pool2d
from cnnjax.layers.conv import he_normal_fan_out
from cnnjax.layers.dropout import make_dropout
from cnnjax.layers.fusion import conv_bn_act
from cnnjax.models.convert import TorchReader
from cnnjax.models.registry import register

ModuleDef = Any

SHORTCUTS = ("A", "B", "none")
# Where a BasicBlock's dropout sits (Li et al. 2019): after bn1 + ReLU (feeding conv2 + bn2), or
# between conv1 and bn1.
BLOCK_DROPOUT_POSITIONS = ("after_bn", "before_bn")


def _last_norm(norm: ModuleDef, zero_init: bool) -> ModuleDef:
    # Zero-init of the last BN scale makes each residual block start as the identity (Goyal et
    # al. 2017), which helps large-batch training.
    return functools.partial(norm, scale_init=nn.initializers.zeros) if zero_init else norm


def _shortcut(block: nn.Module, x: jnp.ndarray, shape, train: bool) -> jnp.ndarray | None:
    """`x` matched to the residual branch's output `shape` per `block.shortcut` (None: none)."""
    if block.shortcut == "none":  # a "plain" network (the paper's baseline)
        return None
    if x.shape != tuple(shape):
        antialias = getattr(block, "antialias", 1)
        if antialias > 1:  # Zhang 2019: blurred subsampling, then a stride-1 projection
            x = blur_pool2d(x, antialias, block.strides, layer=f"{block.name}/shortcut_blur")
            strides = 1
        else:
            strides = block.strides
        if block.shortcut == "A":  # parameter-free: subsample, then zero channels
            x = x[:, ::strides, ::strides, :]
            zeros = jnp.zeros((*x.shape[:3], shape[-1] - x.shape[-1]), x.dtype)
            x = jnp.concatenate([x, zeros], axis=-1)
        else:
            proj = block.conv(
                features=shape[-1], kernel_size=1, strides=strides, padding=0, name="proj"
            )
            x = conv_bn_act(proj, block.norm(use_running_average=not train, name="proj_bn"), x)
    return x


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers: `act(bn2(conv2(act(bn1(conv1(x))))) + shortcut(x))`.

    `(N, H, W, C) -> (N, H / strides, W / strides, features)`.

    Attributes:
      features: output channels of both convs.
      strides: stride of the first conv (and of the shortcut).
      shortcut: "A" (subsample + zero channels), "B" (1x1 conv + BN where the shape changes;
        identity elsewhere) or "none" (no shortcut: a plain network).
      conv: convolution constructor.
      norm: normalization constructor taking `use_running_average`.
      act: activation function.
      zero_init_residual: initialize the scale of `bn2` to zero.
      dropout_rate: rate of one dropout layer in the block (0: none).
      dropout_position: "after_bn" (`conv1-bn1-relu-drop-conv2-bn2`) or "before_bn"
        (`conv1-drop-bn1-relu-conv2-bn2`), see `BLOCK_DROPOUT_POSITIONS`.
      dropout_kind: a kind of `cnnjax.layers.dropout.make_dropout`.
      antialias: binomial blur size of Zhang 2019 for a strided block (1: plain striding). Above
        1, conv1 runs at stride 1 and `BlurPool(antialias, strides)` follows its ReLU (Zhang's
        `BasicBlock`); the shortcut is blurred before it subsamples.
    """

    expansion: ClassVar[int] = 1
    features: int
    strides: int
    shortcut: str
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    zero_init_residual: bool = False
    dropout_rate: float = 0.0
    dropout_position: str = "after_bn"
    dropout_kind: str = "bernoulli"
    antialias: int = 1

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        if self.dropout_position not in BLOCK_DROPOUT_POSITIONS:
            raise ConfigError(
                unknown_choice(
                    "block dropout position", self.dropout_position, BLOCK_DROPOUT_POSITIONS
                )
            )

        def drop(y, position):
            if self.dropout_rate == 0.0 or position != self.dropout_position:
                return y
            return make_dropout(self.dropout_kind, self.dropout_rate, name="drop")(y, not train)

        blur = self.antialias > 1 and self.strides > 1
        conv = functools.partial(self.conv, features=self.features, kernel_size=3, padding=1)
        conv1 = conv(strides=1 if blur else self.strides, name="conv1")
        bn1 = self.norm(use_running_average=not train, name="bn1")
        if train and self.dropout_rate > 0.0 and self.dropout_position == "before_bn":
            y = self.act(bn1(drop(conv1(x), "before_bn")))  # (dropout is the identity in eval)
        else:
            y = conv_bn_act(conv1, bn1, x, self.act)
        if blur:
            y = blur_pool2d(y, self.antialias, self.strides, layer=f"{self.name}/blur")
        y = drop(y, "after_bn")
        last_norm = _last_norm(self.norm, self.zero_init_residual)
        bn2 = last_norm(use_running_average=not train, name="bn2")
        return conv_bn_act(conv(name="conv2"), bn2, y, self.act, _shortcut(self, x, y.shape, train))


class Bottleneck(nn.Module):
    """1x1 (features) - 3x3 (features) - 1x1 (4 features) conv-BN layers plus a shortcut.

    `(N, H, W, C) -> (N, H / strides, W / strides, 4 features)`.

    Attributes:
      features: channels of the 1x1 reduction and the 3x3 conv; the output has 4x as many.
      strides: stride of the 3x3 conv (ResNet v1.5) or of the first 1x1 (`stride_in_1x1`).
      stride_in_1x1: the paper's original (v1) placement of the stride.
      Other attributes as in `BasicBlock` (`zero_init_residual` zeroes `bn3`'s scale).
    """

    expansion: ClassVar[int] = 4
    features: int
    strides: int
    shortcut: str
    conv: ModuleDef
    norm: ModuleDef
    act: Callable
    zero_init_residual: bool = False
    stride_in_1x1: bool = False

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        norm = functools.partial(self.norm, use_running_average=not train)
        s1, s3 = (self.strides, 1) if self.stride_in_1x1 else (1, self.strides)
        conv1 = self.conv(
            features=self.features, kernel_size=1, strides=s1, padding=0, name="conv1"
        )
        y = conv_bn_act(conv1, norm(name="bn1"), x, self.act)
        conv2 = self.conv(
            features=self.features, kernel_size=3, strides=s3, padding=1, name="conv2"
        )
        y = conv_bn_act(conv2, norm(name="bn2"), y, self.act)
        conv3 = self.conv(features=4 * self.features, kernel_size=1, padding=0, name="conv3")
        last_norm = _last_norm(self.norm, self.zero_init_residual)
        shortcut = _shortcut(self, x, (*y.shape[:-1], 4 * self.features), train)
        bn3 = last_norm(use_running_average=not train, name="bn3")
        return conv_bn_act(conv3, bn3, y, self.act, shortcut)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}

# depth -> (block kind, blocks per stage); Table 1 of the paper.
RESNET_SPECS: dict[int, tuple[str, tuple[int, ...]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
# ImageNet val top-1 error (%), 10-crop: Table 2 for ResNet-18 (option A shortcuts), Table 3
# (option B) for the others.
PUBLISHED_TOP1_ERROR = {18: 27.88, 34: 24.52, 50: 22.85, 101: 21.75, 152: 21.43}


class ResNet(nn.Module):
    """ImageNet ResNet. Input `(N, H, W, 3)` NHWC (224x224 by default; any size >= 32 works
    thanks to global pooling) -> `(logits (N, num_classes), intermediates)`.

    Intermediates: "stem" (after the max pool, `(N, H/4, W/4, 64)`), "stage1".."stage4" (strides
    4, 8, 16, 32; `width * 2^i * expansion` channels) and "pre_logits" (`(N, 8 width * expansion)`).

    Attributes:
      depth: one of `RESNET_SPECS` (18, 34, 50, 101, 152).
      num_classes: output units.
      width: base filters of the stem and first stage (64), doubled in each later stage.
      zero_init_residual: zero-initialize the last BN scale of every block (torchvision's option).
      stride_in_1x1: bottleneck stride on the first 1x1 conv (paper, v1) instead of the 3x3 (v1.5).
      shortcut: "B" (projection where the shape changes), "A" (zero padding) or "none" (plain).
      conv: convolution constructor, called as `conv(features=, kernel_size=, strides=, padding=)`.
      norm: normalization constructor taking `use_running_average` (and `scale_init`).
      act: activation function.
      pool: the stem's max pooling, `(N, H, W, C) -> (N, H/2, W/2, C)`.
    """

    depth: int = 50
    num_classes: int = 1000
    width: int = 64
    zero_init_residual: bool = False
    stride_in_1x1: bool = False
    shortcut: str = "B"
    conv: ModuleDef = functools.partial(Conv2d, use_bias=False, kernel_init=he_normal_fan_out)
    norm: ModuleDef = BatchNorm
    act: Callable = nn.relu
    pool: Callable = functools.partial(max_pool2d, window=3, strides=2, padding=1)

    def _check(self) -> None:
        if self.depth not in RESNET_SPECS:
            raise ConfigError(unknown_choice("ResNet depth", self.depth, map(str, RESNET_SPECS)))
        if self.shortcut not in SHORTCUTS:
            raise ConfigError(unknown_choice("shortcut", self.shortcut, SHORTCUTS))
        if not isinstance(self.width, int) or self.width < 1:
            raise ConfigError(f"ResNet width must be a positive integer, got {self.width!r}")

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False):
        self._check()
        kind, stage_sizes = RESNET_SPECS[self.depth]
        block_kwargs = dict(
            conv=self.conv,
            norm=self.norm,
            act=self.act,
            shortcut=self.shortcut,
            zero_init_residual=self.zero_init_residual,
        )
        if kind == "bottleneck":
            block_kwargs["stride_in_1x1"] = self.stride_in_1x1
        stem_conv = self.conv(
            features=self.width, kernel_size=7, strides=2, padding=3, name="stem_conv"
        )
        y = conv_bn_act(
            stem_conv, self.norm(use_running_average=not train, name="stem_bn"), x, self.act
        )
        y = self.pool(y)
        intermediates = {"stem": y}
        for stage, num_blocks in enumerate(stage_sizes):
            for block in range(num_blocks):
                y = BLOCKS[kind](
                    features=self.width * 2**stage,
                    strides=2 if stage > 0 and block == 0 else 1,
                    name=f"stage{stage + 1}_block{block + 1}",
                    **block_kwargs,
                )(y, train)
            intermediates[f"stage{stage + 1}"] = y
        pre_logits = global_avg_pool(y)
        intermediates["pre_logits"] = pre_logits
        logits = nn.Dense(self.num_classes, name="head")(pre_logits)
        return logits, intermediates


def _convert_resnet(reader: TorchReader) -> dict:
    """torchvision `ResNet` state dict -> `{"params", "batch_stats"}` of `ResNet`.

    Walks the `layer{i}.{j}` blocks present in the state dict, so one converter serves every
    depth; `from_torch` then checks that every tensor was used and every shape fits the model.
    """
    params: dict = {}
    stats: dict = {}

    params["stem_conv"] = reader.conv("conv1")
    params["stem_bn"], stats["stem_bn"] = reader.batch_norm("bn1")
    stage = 1
    while f"layer{stage}.0.conv1.weight" in reader.tensors:
        block = 0
        while f"layer{stage}.{block}.conv1.weight" in reader.tensors:
            prefix = f"layer{stage}.{block}"
            p, s = {}, {}
            index = 1
            while f"{prefix}.conv{index}.weight" in reader.tensors:
                p[f"conv{index}"] = reader.conv(f"{prefix}.conv{index}")
                p[f"bn{index}"], s[f"bn{index}"] = reader.batch_norm(f"{prefix}.bn{index}")
                index += 1
            if f"{prefix}.downsample.0.weight" in reader.tensors:
                p["proj"] = reader.conv(f"{prefix}.downsample.0")
                p["proj_bn"], s["proj_bn"] = reader.batch_norm(f"{prefix}.downsample.1")
            name = f"stage{stage}_block{block + 1}"
            params[name], stats[name] = p, s
            block += 1
        stage += 1
    params["head"] = reader.dense("fc")
    return {"params": params, "batch_stats": stats}


def _paper(depth: int) -> str:
    return f"He et al. 2016 (ImageNet top-1 error {PUBLISHED_TOP1_ERROR[depth]}%, 10-crop)"


def _description(depth: int) -> str:
    kind, sizes = RESNET_SPECS[depth]
    return f"ImageNet ResNet-{depth}, {kind} blocks {'-'.join(map(str, sizes))}" + (
        ", stride on the 3x3 (v1.5, as torchvision)" if kind == "bottleneck" else ""
    )


def _register_resnet(name: str, depth: int) -> None:
    """Registers torchvision's `resnet{depth}`; one converter serves every depth."""
    register(
        name,
        functools.partial(ResNet, depth=depth),
        input_shape=(224, 224, 3),
        paper=_paper(depth),
        description=_description(depth),
        converter=_convert_resnet,
    )


_register_resnet("resnet18", depth=18)
_register_resnet("resnet34", depth=34)
_register_resnet("resnet50", depth=50)
_register_resnet("resnet101", depth=101)
_register_resnet("resnet152", depth=152)
