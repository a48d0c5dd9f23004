"""GoogLeNet / Inception v1 (Szegedy et al. 2015) and BN-Inception (Ioffe & Szegedy 2015).

GoogLeNet ("Going deeper with convolutions", Table 1): a stem (7x7/2 conv, pools, 1x1 and 3x3
convs), nine Inception modules in three stages on 28x28, 14x14 and 7x7 maps (224x224 input),
global average pooling, dropout and one dense layer. Each module concatenates four branches: a
1x1 conv, a 1x1 reduction then 3x3 conv, a 1x1 reduction then 5x5 conv, and a 3x3/1 max pool then
a 1x1 projection. Two auxiliary classifiers read the outputs of 4a and 4d during training.

Three registered forms:

* `googlenet`: torchvision's `googlenet` exactly (13,004,888 parameters with its auxiliary heads,
  6,624,904 without). It differs from the paper: BatchNorm (eps 1e-3) after every conv (no conv
  biases), a *3x3* conv in the "5x5" branch (a long-standing torchvision quirk, kept for weight
  compatibility), and a 2x2/2 max pool before stage 3. All max pools use ceil mode, as Caffe did.
* `googlenet_2014`: the paper's network: conv biases, no BatchNorm, real 5x5 branches, local
  response normalization after the first pool and after the 3x3 conv, a 3x3/2 pool before stage
  3, dropout 0.4.
* `bn_inception`: the network of "Batch normalization" (Ioffe & Szegedy 2015, Appendix, Figure 5),
  often called Inception v2: BN after every conv, each 5x5 replaced by two stacked 3x3 convs,
  average or max pooling in the pool branch, and grid reductions (3c, 4e) done inside stride-2
  modules whose pool branch is passed through unprojected. No auxiliary heads, no dropout.

Auxiliary heads exist as parameters whenever `aux_logits` is set (they are built at
initialization even in eval mode, so the parameter tree does not depend on the `train` flag), but
they run, and appear in the intermediates as "aux1"/"aux2", only in training, as in the paper.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from cnnjax.errors import ConfigError, unknown_choice
from cnnjax.layers import BatchNorm, Conv2d, ConvBlock, global_avg_pool
from cnnjax.layers.norm import local_response_norm
from cnnjax.layers.pooling import adaptive_avg_pool2d, avg_pool2d, max_pool2d
from cnnjax.models.convert import TorchReader
from cnnjax.models.registry import register

ModuleDef = Any

# torchvision's BasicConv2d: conv without bias, BatchNorm2d(eps=0.001), ReLU.
TV_BATCH_NORM = functools.partial(BatchNorm, epsilon=1e-3)

# Per module (Table 1): #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj.
GOOGLENET_MODULES = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}
GOOGLENET_STAGES = (("3a", "3b"), ("4a", "4b", "4c", "4d", "4e"), ("5a", "5b"))
# Auxiliary classifiers read these modules' outputs (paper Sec. 5).
GOOGLENET_AUX = {"4a": "aux1", "4d": "aux2"}

# ImageNet statistics torchvision's pretrained Inception weights were trained against: with
# `transform_input`, an input normalised with them is re-normalised to [-1, 1] per channel.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def imagenet_to_unit_range(x: jnp.ndarray) -> jnp.ndarray:
    """`(x * std + mean - 0.5) / 0.5` per channel of NHWC `x` (torchvision's `transform_input`).

    Maps an ImageNet-normalised image back to pixels in [0, 1] and then to [-1, 1], the input
    range of Google's original Inception checkpoints.
    """
    return x * (IMAGENET_STD / 0.5) + (IMAGENET_MEAN - 0.5) / 0.5


def conv_block(module: nn.Module) -> ModuleDef:
    """The conv(-BN)-activation unit of a model with `conv`, `norm` and `act` fields.

    `norm=None` gives conv-act with a conv bias (GoogLeNet 2014); otherwise conv-BN-act without.
    """
    order = "conv-act" if module.norm is None else "conv-bn-act"
    return functools.partial(
        ConvBlock, order=order, conv=module.conv, norm=module.norm or BatchNorm, act=module.act
    )


class InceptionModule(nn.Module):
    """GoogLeNet's Inception module: four branches concatenated along channels.

    `(N, H, W, C) -> (N, H, W, n1x1 + n3x3 + n5x5 + pool_proj)`.

    Attributes:
      widths: `(n1x1, n3x3_reduce, n3x3, n5x5_reduce, n5x5, pool_proj)`.
      block: conv unit constructor (`ConvBlock` partial).
      pool: max pooling function, called as `pool(x, window=, strides=, padding=, ceil_mode=)`.
      wide_kernel: kernel of the "5x5" branch (5 in the paper, 3 in torchvision).
    """

    widths: tuple[int, ...]
    block: ModuleDef
    pool: Callable
    wide_kernel: int = 5

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        n1, r3, n3, r5, n5, proj = self.widths
        b1 = self.block(n1, 1, padding=0, name="branch1")(x, train)
        b2 = self.block(r3, 1, padding=0, name="branch2_reduce")(x, train)
        b2 = self.block(n3, 3, padding=1, name="branch2")(b2, train)
        b3 = self.block(r5, 1, padding=0, name="branch3_reduce")(x, train)
        k = self.wide_kernel
        b3 = self.block(n5, k, padding=k // 2, name="branch3")(b3, train)
        b4 = self.pool(x, window=3, strides=1, padding=1, ceil_mode=True)
        b4 = self.block(proj, 1, padding=0, name="branch4")(b4, train)
        return jnp.concatenate([b1, b2, b3, b4], axis=-1)


class GoogLeNetAux(nn.Module):
    """Auxiliary classifier: 4x4 average pool, 1x1 conv (128), FC 1024, dropout, FC.

    The paper pools 5x5/3, which gives 4x4 on the 14x14 maps of a 224x224 input; the adaptive
    pool (torchvision's) gives 4x4 for any input size.
    """

    num_classes: int
    block: ModuleDef
    act: Callable
    dropout_rate: float

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        x = self.block(128, 1, padding=0, name="conv")(adaptive_avg_pool2d(x, 4), train)
        x = self.act(nn.Dense(1024, name="fc1")(x.reshape(x.shape[0], -1)))
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        return nn.Dense(self.num_classes, name="fc2")(x)


class GoogLeNet(nn.Module):
    """GoogLeNet. Input `(N, 224, 224, 3)` NHWC -> `(logits (N, num_classes), intermediates)`.

    Intermediates: "stem" (28x28x192 at 224 input), "stage1" (3b, 28x28x480), "stage2" (4e,
    14x14x832), "stage3" (5b, 7x7x1024), "pre_logits" (pooled 1024 features) and, in training with
    `aux_logits`, "aux1" and "aux2" logits. Inputs down to 32x32 work (64x64 with
    `last_pool_window=3`): the final pool is global and the auxiliary pools adaptive.

    Attributes:
      num_classes: output units.
      aux_logits: build the two auxiliary classifiers (run in training only).
      transform_input: re-normalise ImageNet-normalised input to [-1, 1] first
        (`imagenet_to_unit_range`; torchvision sets it for its pretrained weights).
      dropout_rate: dropout before the classifier (torchvision 0.2, paper 0.4).
      aux_dropout_rate: dropout in the auxiliary classifiers (0.7).
      conv: convolution constructor.
      norm: normalization after each conv (given `use_running_average`), or None for none.
      act: activation.
      pool: max pooling function, called as `pool(x, window=, strides=, padding=, ceil_mode=)`.
      stem_norm: function applied after the first pool and after the 3x3 stem conv (local
        response normalization in the paper), or None.
      wide_kernel: kernel of the "5x5" branch (odd).
      last_pool_window: window of the stride-2 max pool before stage 3 (2 in torchvision, 3 in
        the paper).
    """

    num_classes: int = 1000
    aux_logits: bool = True
    transform_input: bool = False
    dropout_rate: float = 0.2
    aux_dropout_rate: float = 0.7
    conv: ModuleDef = Conv2d
    norm: ModuleDef | None = TV_BATCH_NORM
    act: Callable = nn.relu
    pool: Callable = max_pool2d
    stem_norm: Callable | None = None
    wide_kernel: int = 3
    last_pool_window: int = 2

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False):
        k = self.wide_kernel
        if not isinstance(k, int) or k < 1 or k % 2 == 0:
            raise ConfigError(
                f"GoogLeNet wide_kernel must be a positive odd int (5 in the paper, 3 in "
                f"torchvision), got {self.wide_kernel!r}"
            )
        block = conv_block(self)
        stem_norm = self.stem_norm or (lambda y: y)
        if self.transform_input:
            x = imagenet_to_unit_range(x)
        x = block(64, 7, strides=2, padding=3, name="conv1")(x, train)
        x = stem_norm(self.pool(x, window=3, strides=2, padding=0, ceil_mode=True))
        x = block(64, 1, padding=0, name="conv2")(x, train)
        x = stem_norm(block(192, 3, padding=1, name="conv3")(x, train))
        x = self.pool(x, window=3, strides=2, padding=0, ceil_mode=True)
        features = {"stem": x}
        for stage, names in enumerate(GOOGLENET_STAGES, start=1):
            if stage > 1:
                window = 3 if stage == 2 else self.last_pool_window
                x = self.pool(x, window=window, strides=2, padding=0, ceil_mode=True)
            for name in names:
                x = InceptionModule(
                    GOOGLENET_MODULES[name],
                    block,
                    self.pool,
                    self.wide_kernel,
                    name=f"inception{name}",
                )(x, train)
                if name in GOOGLENET_AUX and self.aux_logits and (train or self.is_initializing()):
                    aux = GoogLeNetAux(
                        self.num_classes,
                        block,
                        self.act,
                        self.aux_dropout_rate,
                        name=GOOGLENET_AUX[name],
                    )(x, train)
                    if train:
                        features[GOOGLENET_AUX[name]] = aux
            features[f"stage{stage}"] = x
        x = global_avg_pool(x)
        features["pre_logits"] = x
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        return nn.Dense(self.num_classes, name="fc")(x), features


# BN-Inception, Ioffe & Szegedy 2015, Appendix Figure 5, per module: #1x1 (0: none), #3x3 reduce,
# #3x3, double #3x3 reduce, double #3x3, pool ("avg"/"max"), pool proj (0: pass-through), stride.
# The figure's output column says 576 channels after 4c and 4d and 1024 after 4e, but its
# per-branch counts give 608, 608 and 1056; the branch counts are used here, as in the public
# Caffe model ("bn_inception", ported to PyTorch in Cadene's pretrained-models).
BN_INCEPTION_MODULES = {
    "3a": (64, 64, 64, 64, 96, "avg", 32, 1),
    "3b": (64, 64, 96, 64, 96, "avg", 64, 1),
    "3c": (0, 128, 160, 64, 96, "max", 0, 2),
    "4a": (224, 64, 96, 96, 128, "avg", 128, 1),
    "4b": (192, 96, 128, 96, 128, "avg", 128, 1),
    "4c": (160, 128, 160, 128, 160, "avg", 128, 1),
    "4d": (96, 128, 192, 160, 192, "avg", 128, 1),
    "4e": (0, 128, 192, 192, 256, "max", 0, 2),
    "5a": (352, 192, 320, 160, 224, "avg", 128, 1),
    "5b": (352, 192, 320, 192, 224, "max", 128, 1),
}
BN_INCEPTION_STAGES = (("3a", "3b"), ("3c", "4a", "4b", "4c", "4d"), ("4e", "5a", "5b"))
POOL_KINDS = ("avg", "max")


class BNInceptionModule(nn.Module):
    """BN-Inception module: 1x1 | 1x1-3x3 | 1x1-3x3-3x3 | pool(-1x1 projection), concatenated.

    With stride 2 the last conv of each conv branch and the pool are strided (the pool pads 1
    pixel so its output always matches the convs': `ceil(n / 2)`; the Caffe model instead pools
    without padding in ceil mode, the same size for even `n`).

    Attributes:
      spec: a `BN_INCEPTION_MODULES` row.
      block: conv unit constructor.
      pool: max pooling function (for "max" pool branches).
    """

    spec: tuple
    block: ModuleDef
    pool: Callable

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        n1, r3, n3, rd, nd, pool_kind, proj, stride = self.spec
        if pool_kind not in POOL_KINDS:
            raise ConfigError(unknown_choice("BN-Inception pool", pool_kind, POOL_KINDS))
        if stride not in (1, 2):
            raise ConfigError(f"BN-Inception module stride must be 1 or 2, got {stride!r}")
        branches = [self.block(n1, 1, padding=0, name="branch1x1")(x, train)] if n1 else []
        y = self.block(r3, 1, padding=0, name="branch3x3_reduce")(x, train)
        branches.append(self.block(n3, 3, strides=stride, padding=1, name="branch3x3")(y, train))
        y = self.block(rd, 1, padding=0, name="double3x3_reduce")(x, train)
        y = self.block(nd, 3, padding=1, name="double3x3_1")(y, train)
        branches.append(self.block(nd, 3, strides=stride, padding=1, name="double3x3_2")(y, train))
        if pool_kind == "max":
            y = self.pool(x, window=3, strides=stride, padding=1)
        else:
            y = avg_pool2d(x, 3, stride, padding=1)
        branches.append(self.block(proj, 1, padding=0, name="pool_proj")(y, train) if proj else y)
        return jnp.concatenate(branches, axis=-1)


class BNInception(nn.Module):
    """BN-Inception. Input `(N, 224, 224, 3)` NHWC -> `(logits, intermediates)`.

    Stem as GoogLeNet's (7x7/2 conv, 3x3/2 pool, 1x1 and 3x3 convs, 3x3/2 pool; no LRN), then
    stages 3a-3b (28x28), 3c-4d (14x14, 3c reduces), 4e-5b (7x7, 4e reduces), global average
    pooling and a dense layer. Intermediates: "stem", "stage1".."stage3", "pre_logits".

    Attributes:
      num_classes: output units.
      modules: module name -> `BN_INCEPTION_MODULES`-style row, for width ablations (None: the
        paper's table).
      dropout_rate: dropout before the classifier (0: the paper removed dropout).
      conv, norm, act, pool: as in `GoogLeNet` (BN eps 1e-5 as in the Caffe model).
    """

    num_classes: int = 1000
    modules: Mapping[str, tuple] | None = None
    dropout_rate: float = 0.0
    conv: ModuleDef = Conv2d
    norm: ModuleDef | None = BatchNorm
    act: Callable = nn.relu
    pool: Callable = max_pool2d

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False):
        modules = BN_INCEPTION_MODULES if self.modules is None else self.modules
        missing = [n for names in BN_INCEPTION_STAGES for n in names if n not in modules]
        if missing:
            raise ConfigError(
                f"BN-Inception modules lack {missing}; needs rows for {list(BN_INCEPTION_MODULES)}"
            )
        block = conv_block(self)
        x = block(64, 7, strides=2, padding=3, name="conv1")(x, train)
        x = self.pool(x, window=3, strides=2, padding=0, ceil_mode=True)
        x = block(64, 1, padding=0, name="conv2_reduce")(x, train)
        x = block(192, 3, padding=1, name="conv2")(x, train)
        x = self.pool(x, window=3, strides=2, padding=0, ceil_mode=True)
        features = {"stem": x}
        for stage, names in enumerate(BN_INCEPTION_STAGES, start=1):
            for name in names:
                x = BNInceptionModule(
                    tuple(modules[name]), block, self.pool, name=f"inception{name}"
                )(x, train)
            features[f"stage{stage}"] = x
        x = global_avg_pool(x)
        features["pre_logits"] = x
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        return nn.Dense(self.num_classes, name="fc")(x), features


def convert_named_tree(
    reader: TorchReader,
    renames: tuple[tuple[str, str], ...] = (),
    dense_layouts: Mapping[str, tuple[int, int, int]] | None = None,
) -> dict:
    """Variables of a model whose Flax module paths mirror a torchvision module tree.

    Every torch module prefix (e.g. "inception3a.branch2.0.conv") becomes a Flax path after the
    regex `renames` are applied and "." is read as nesting: modules with running statistics are
    BatchNorms, 4-D weights convs, 2-D weights dense layers (`dense_layouts[prefix]` gives the
    `(C, H, W)` of a flattened feature map such a layer reads).
    """
    dense_layouts = dense_layouts or {}
    params: dict = {}
    stats: dict = {}
    for prefix in sorted({key.rsplit(".", 1)[0] for key in reader.tensors}):
        path = prefix
        for pattern, replacement in renames:
            path = re.sub(pattern, replacement, path)
        keys = path.split(".")
        if f"{prefix}.running_mean" in reader.tensors:
            bn_params, bn_stats = reader.batch_norm(prefix)
            _put(params, keys, bn_params)
            _put(stats, keys, bn_stats)
        elif reader.tensors[f"{prefix}.weight"].ndim == 4:
            _put(params, keys, reader.conv(prefix))
        else:
            _put(params, keys, reader.dense(prefix, dense_layouts.get(prefix)))
    return {"params": params, "batch_stats": stats}


def _put(tree: dict, keys: list[str], value: dict) -> None:
    for key in keys[:-1]:
        tree = tree.setdefault(key, {})
    tree[keys[-1]] = value


def _convert_googlenet(reader: TorchReader) -> dict:
    # torchvision's Sequential branches: "branch2.0" is the 1x1 reduction, "branch4.0" the pool.
    renames = ((r"branch([23])\.0\b", r"branch\1_reduce"), (r"branch([234])\.1\b", r"branch\1"))
    layouts = {f"{aux}.fc1": (128, 4, 4) for aux in GOOGLENET_AUX.values()}
    return convert_named_tree(reader, renames, layouts)


# All three read 224x224 crops, like torchvision's `googlenet`.
_register_224 = functools.partial(register, input_shape=(224, 224, 3))
_register_224(
    "googlenet",
    GoogLeNet,
    paper="Szegedy et al. 2015",
    description="GoogLeNet as torchvision builds it: BN (eps 1e-3), 3x3 in the '5x5' branch, "
    "auxiliary heads",
    converter=_convert_googlenet,
)
_register_224(
    "googlenet_2014",
    functools.partial(
        GoogLeNet,
        dropout_rate=0.4,
        conv=functools.partial(Conv2d, kernel_init=nn.initializers.he_normal()),
        norm=None,
        stem_norm=functools.partial(local_response_norm, size=5, alpha=1e-4, beta=0.75, k=1.0),
        wide_kernel=5,
        last_pool_window=3,
    ),
    paper="Szegedy et al. 2015",
    description="GoogLeNet as in the paper: no BN, 5x5 branches, LRN in the stem, auxiliary heads",
)
_register_224(
    "bn_inception",
    BNInception,
    paper="Ioffe & Szegedy 2015",
    description="BN-Inception (Inception v2): BN, double 3x3 instead of 5x5, stride-2 modules",
)
