"""Inception v3 (Szegedy et al. 2016, "Rethinking the Inception architecture for computer vision").

On a 299x299 input: a stem of five conv-BN-ReLU layers and two 3x3/2 max pools down to 35x35x192,
three stages of Inception modules on 35x35 (A: 5x5 and double-3x3 branches), 17x17 (C: 7x7
convolutions factorized into 1x7 and 7x1) and 8x8 grids (E: 3x3 outputs split into parallel 1x3
and 3x1 convs, "expanded filter bank"), joined by grid reductions that run stride-2 convs beside a
stride-2 max pool (B, D: paper Figure 10), then global average pooling, dropout 0.5 and a dense
layer. An auxiliary classifier reads the 17x17 grid (Mixed_6e) during training.

Built to match torchvision's `inception_v3` exactly (27,161,264 parameters with the auxiliary
head, 23,834,568 without): every conv is followed by BatchNorm (eps 1e-3) and ReLU, each half of a
factorized 1xn/nx1 pair included (so it is not `SpatiallySeparableConv2d`, which has nothing in
between). The module names are those of the released checkpoints (TF-slim's, kept by torchvision:
"Conv2d_1a_3x3", "Mixed_5b", "AuxLogits", ...), which makes the converter a name-for-name copy.

Inputs: at least 75x75 in evaluation. The auxiliary head pools 5x5/3 and then applies a 5x5 conv,
so training with `aux_logits` needs a 17x17 grid at Mixed_6e, i.e. a 299x299 input (as in
torchvision). Its parameters are created at initialization in either mode (on a placeholder 17x17
map when the real one is smaller), so the parameter tree does not depend on `train`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnjax.layers import Conv2d, global_avg_pool
from cnnjax.layers.pooling import avg_pool2d, max_pool2d
from cnnjax.models.convert import TorchReader
from cnnjax.models.googlenet import (
    TV_BATCH_NORM,
    conv_block,
    convert_named_tree,
    imagenet_to_unit_range,
)
from cnnjax.models.registry import register

ModuleDef = Any

# (name, module type, width): A's pool-branch projection or C's 7x7 bottleneck channels.
INCEPTION_V3_BLOCKS = (
    ("Mixed_5b", "A", 32),
    ("Mixed_5c", "A", 64),
    ("Mixed_5d", "A", 64),
    ("Mixed_6a", "B", None),
    ("Mixed_6b", "C", 128),
    ("Mixed_6c", "C", 160),
    ("Mixed_6d", "C", 160),
    ("Mixed_6e", "C", 192),
    ("Mixed_7a", "D", None),
    ("Mixed_7b", "E", None),
    ("Mixed_7c", "E", None),
)
# The last module of each stage; stage 2 and 3 begin with a grid reduction (B, D).
STAGE_ENDS = {"Mixed_5d": "stage1", "Mixed_6e": "stage2", "Mixed_7c": "stage3"}
AUX_MIN_GRID = 17  # 5x5/3 average pool to 5x5, then a valid 5x5 conv


def _avg_pool_3x3(x: jnp.ndarray) -> jnp.ndarray:
    # 3x3/1 with 1 pixel of zero padding, divided by 9 everywhere (count_include_pad, PyTorch's
    # default and torchvision's choice).
    return avg_pool2d(x, 3, 1, padding=1)


class _Block(nn.Module):
    """Base of the Inception v3 modules: a conv unit constructor and the max pool function."""

    block: ModuleDef
    pool: Callable

    def conv(self, x, train, features, kernel, strides=1, padding=0, *, name):
        return self.block(features, kernel, strides=strides, padding=padding, name=name)(x, train)


class InceptionA(_Block):
    """35x35 module: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1 (`pool_features`) (Figure 5)."""

    pool_features: int = 32

    @nn.compact
    def __call__(self, x, train):
        b1 = self.conv(x, train, 64, 1, name="branch1x1")
        b5 = self.conv(x, train, 48, 1, name="branch5x5_1")
        b5 = self.conv(b5, train, 64, 5, padding=2, name="branch5x5_2")
        b3 = self.conv(x, train, 64, 1, name="branch3x3dbl_1")
        b3 = self.conv(b3, train, 96, 3, padding=1, name="branch3x3dbl_2")
        b3 = self.conv(b3, train, 96, 3, padding=1, name="branch3x3dbl_3")
        bp = self.conv(_avg_pool_3x3(x), train, self.pool_features, 1, name="branch_pool")
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(_Block):
    """35x35 -> 17x17 reduction: 3x3/2 | 1x1-3x3-3x3/2 | 3x3/2 max pool (no padding)."""

    @nn.compact
    def __call__(self, x, train):
        b3 = self.conv(x, train, 384, 3, strides=2, name="branch3x3")
        bd = self.conv(x, train, 64, 1, name="branch3x3dbl_1")
        bd = self.conv(bd, train, 96, 3, padding=1, name="branch3x3dbl_2")
        bd = self.conv(bd, train, 96, 3, strides=2, name="branch3x3dbl_3")
        return jnp.concatenate([b3, bd, self.pool(x, window=3, strides=2)], axis=-1)


class InceptionC(_Block):
    """17x17 module with 7x7 convs factorized into 1x7 and 7x1, each with BN and ReLU (Figure 6).

    1x1 | 1x1-1x7-7x1 | 1x1-7x1-1x7-7x1-1x7 | avgpool-1x1, every branch 192 channels out.
    """

    channels_7x7: int = 128

    @nn.compact
    def __call__(self, x, train):
        c7 = self.channels_7x7
        row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))  # (kernel, symmetric padding (h, w))
        b1 = self.conv(x, train, 192, 1, name="branch1x1")
        b7 = self.conv(x, train, c7, 1, name="branch7x7_1")
        b7 = self.conv(b7, train, c7, row[0], padding=row[1], name="branch7x7_2")
        b7 = self.conv(b7, train, 192, col[0], padding=col[1], name="branch7x7_3")
        bd = self.conv(x, train, c7, 1, name="branch7x7dbl_1")
        for i, (shape, width) in enumerate(((col, c7), (row, c7), (col, c7), (row, 192)), 2):
            bd = self.conv(bd, train, width, shape[0], padding=shape[1], name=f"branch7x7dbl_{i}")
        bp = self.conv(_avg_pool_3x3(x), train, 192, 1, name="branch_pool")
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(_Block):
    """17x17 -> 8x8 reduction: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | 3x3/2 max pool."""

    @nn.compact
    def __call__(self, x, train):
        b3 = self.conv(x, train, 192, 1, name="branch3x3_1")
        b3 = self.conv(b3, train, 320, 3, strides=2, name="branch3x3_2")
        b7 = self.conv(x, train, 192, 1, name="branch7x7x3_1")
        b7 = self.conv(b7, train, 192, (1, 7), padding=(0, 3), name="branch7x7x3_2")
        b7 = self.conv(b7, train, 192, (7, 1), padding=(3, 0), name="branch7x7x3_3")
        b7 = self.conv(b7, train, 192, 3, strides=2, name="branch7x7x3_4")
        return jnp.concatenate([b3, b7, self.pool(x, window=3, strides=2)], axis=-1)


class InceptionE(_Block):
    """8x8 module with expanded filter banks (Figure 7): a 1x3 and a 3x1 conv read the same map
    and their outputs are concatenated.

    1x1 (320) | 1x1 (384)-[1x3 | 3x1] (768) | 1x1 (448)-3x3 (384)-[1x3 | 3x1] (768) |
    avgpool-1x1 (192): 2048 channels.
    """

    @nn.compact
    def __call__(self, x, train):
        def split(y, prefix):
            a = self.conv(y, train, 384, (1, 3), padding=(0, 1), name=f"{prefix}a")
            b = self.conv(y, train, 384, (3, 1), padding=(1, 0), name=f"{prefix}b")
            return jnp.concatenate([a, b], axis=-1)

        b1 = self.conv(x, train, 320, 1, name="branch1x1")
        b3 = split(self.conv(x, train, 384, 1, name="branch3x3_1"), "branch3x3_2")
        bd = self.conv(x, train, 448, 1, name="branch3x3dbl_1")
        bd = self.conv(bd, train, 384, 3, padding=1, name="branch3x3dbl_2")
        bd = split(bd, "branch3x3dbl_3")
        bp = self.conv(_avg_pool_3x3(x), train, 192, 1, name="branch_pool")
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionAux(nn.Module):
    """Auxiliary classifier on the 17x17 grid: 5x5/3 avg pool, 1x1 conv (128), 5x5 conv (768),
    global average pool, dense. BN in the head (the paper's "BN-auxiliary", Sec. 10)."""

    num_classes: int
    block: ModuleDef

    @nn.compact
    def __call__(self, x, train):
        x = avg_pool2d(x, 5, 3, layer="AuxLogits/avg_pool")
        x = self.block(128, 1, padding=0, name="conv0")(x, train)
        x = self.block(768, 5, padding=0, name="conv1")(x, train)
        return nn.Dense(self.num_classes, name="fc")(global_avg_pool(x))


MODULE_TYPES = {"A": InceptionA, "B": InceptionB, "C": InceptionC, "D": InceptionD, "E": InceptionE}
WIDTH_FIELDS = {"A": "pool_features", "C": "channels_7x7"}


class InceptionV3(nn.Module):
    """Inception v3. Input `(N, 299, 299, 3)` NHWC -> `(logits (N, num_classes), intermediates)`.

    Intermediates: "stem" (35x35x192), "stage1" (Mixed_5d, 35x35x288), "stage2" (Mixed_6e,
    17x17x768), "stage3" (Mixed_7c, 8x8x2048), "pre_logits" (pooled 2048 features) and, in
    training with `aux_logits`, "aux" (the auxiliary logits).

    Attributes:
      num_classes: output units.
      aux_logits: build the auxiliary classifier (run in training only).
      transform_input: re-normalise ImageNet-normalised input to [-1, 1] first (torchvision
        sets it for its pretrained weights).
      dropout_rate: dropout before the classifier.
      conv: convolution constructor.
      norm: normalization after each conv (given `use_running_average`), or None for none.
      act: activation.
      pool: max pooling function (stem and grid reductions), called as
        `pool(x, window=, strides=)`.
    """

    num_classes: int = 1000
    aux_logits: bool = True
    transform_input: bool = False
    dropout_rate: float = 0.5
    conv: ModuleDef = Conv2d
    norm: ModuleDef | None = TV_BATCH_NORM
    act: Callable = nn.relu
    pool: Callable = max_pool2d

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False):
        block = conv_block(self)
        if self.transform_input:
            x = imagenet_to_unit_range(x)
        for name, features, kernel, strides, padding in (
            ("Conv2d_1a_3x3", 32, 3, 2, 0),
            ("Conv2d_2a_3x3", 32, 3, 1, 0),
            ("Conv2d_2b_3x3", 64, 3, 1, 1),
            ("Conv2d_3b_1x1", 80, 1, 1, 0),
            ("Conv2d_4a_3x3", 192, 3, 1, 0),
        ):
            if name == "Conv2d_3b_1x1":
                x = self.pool(x, window=3, strides=2)
            x = block(features, kernel, strides=strides, padding=padding, name=name)(x, train)
        x = self.pool(x, window=3, strides=2)
        features = {"stem": x}
        for name, kind, width in INCEPTION_V3_BLOCKS:
            extra = {WIDTH_FIELDS[kind]: width} if kind in WIDTH_FIELDS else {}
            x = MODULE_TYPES[kind](block, self.pool, name=name, **extra)(x, train)
            if name in STAGE_ENDS:
                features[STAGE_ENDS[name]] = x
            if name == "Mixed_6e" and self.aux_logits and (train or self.is_initializing()):
                aux_in = x
                if not train and min(x.shape[1:3]) < AUX_MIN_GRID:
                    # Parameters only (eval-mode init): their shapes do not depend on the grid.
                    aux_in = jnp.zeros((1, AUX_MIN_GRID, AUX_MIN_GRID, x.shape[-1]), x.dtype)
                aux = InceptionAux(self.num_classes, block, name="AuxLogits")(aux_in, train)
                if train:
                    features["aux"] = aux
        x = global_avg_pool(x)
        features["pre_logits"] = x
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        return nn.Dense(self.num_classes, name="fc")(x), features


def _convert_inception_v3(reader: TorchReader) -> dict:
    return convert_named_tree(reader)  # the module names are torchvision's


register(
    "inception_v3",
    InceptionV3,
    input_shape=(299, 299, 3),
    paper="Szegedy et al. 2016",
    description="Inception v3 as torchvision builds it: BN (eps 1e-3), auxiliary head",
    converter=_convert_inception_v3,
)
