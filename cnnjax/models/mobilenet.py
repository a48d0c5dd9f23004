"""MobileNet v1 (Howard et al. 2017) and MobileNet v2 (Sandler et al. 2018).

v1 factorizes every 3x3 convolution after the stem into a depthwise 3x3 conv and a pointwise 1x1
conv, each followed by BN and ReLU (paper, Fig. 3). Table 1 of the paper: a 32-filter stride-2
stem, then separable blocks of 64, 128x2, 256x2, 512x6 and 1024x2 filters, global average pooling
and a 1000-way dense layer; 4.2M parameters and 569M multiply-adds at 224x224. The width
multiplier `alpha` thins every layer to `alpha * c` filters (Table 6: 0.75, 0.5, 0.25); the
resolution multiplier is simply a smaller input (the network is fully convolutional up to the
global pool). Table 1 prints the last depthwise conv as "s2" on a 7x7 map that stays 7x7: a typo,
it has stride 1 here (as in every released implementation). Strided 3x3 convs pad one pixel on
each side (PyTorch style) where TF-slim pads "SAME" (0 before, 1 after): same shapes and MACs.

v2 stacks inverted residual blocks (Sec. 3.3, Table 1): a 1x1 expansion by `t` + BN + ReLU6, a 3x3
depthwise conv + BN + ReLU6, then a *linear* 1x1 projection + BN, with an identity shortcut when
the stride is 1 and the channel count is kept. Table 2 of the paper gives the (t, c, n, s) rows;
channel counts are `alpha * c` rounded to a multiple of 8 (`make_divisible`), the last 1x1 conv
has 1280 channels (more for alpha > 1), then dropout 0.2 and a dense layer. The layout, names,
BN epsilon (1e-5) and rounding follow torchvision's `mobilenet_v2`: 3,504,872 parameters.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.errors import ConfigError
from cnnjax.layers import BatchNorm, Conv2d, DepthwiseConv2d, global_avg_pool
from cnnjax.layers.conv import he_normal_fan_out
from cnnjax.layers.fusion import conv_bn_act
from cnnjax.models.convert import TorchReader
from cnnjax.models.registry import module_fields, register

ModuleDef = Any

# Paper (v1), Table 1: per stage, (filters, stride) of each depthwise-separable block. A stage is
# a run at one resolution (112, 56, 28, 14, 7 at 224x224 input).
V1_STAGES: tuple[tuple[tuple[int, int], ...], ...] = (
    ((64, 1),),
    ((128, 2), (128, 1)),
    ((256, 2), (256, 1)),
    ((512, 2),) + ((512, 1),) * 5,
    ((1024, 2), (1024, 1)),
)
# Paper (v1), Table 6 and 7: (width multiplier, resolution) -> (million mult-adds, million params).
V1_PUBLISHED = {
    (1.0, 224): (569, 4.2),
    (0.75, 224): (325, 2.6),
    (0.5, 224): (149, 1.3),
    (0.25, 224): (41, 0.5),
    (1.0, 192): (418, 4.2),
    (1.0, 160): (290, 4.2),
    (1.0, 128): (186, 4.2),
}

# Paper (v2), Table 2: (expansion t, output channels c, repeats n, first stride s). Each row is a
# stage ("bottleneck sequence").
V2_SPEC: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
# Paper (v2), Table 4: width multiplier -> (million mult-adds, million params) at 224. The 6.9M of
# width 1.4 matches no released implementation (TF-slim and torchvision: 6.1M); its 585M does.
V2_PUBLISHED = {1.0: (300, 3.4), 1.4: (585, 6.9)}

# torchvision's initialization: He normal (fan-out) convs, N(0, 0.01) classifier.
_CONV = functools.partial(Conv2d, use_bias=False, kernel_init=he_normal_fan_out)
_DEPTHWISE = functools.partial(DepthwiseConv2d, use_bias=False, kernel_init=he_normal_fan_out)
_HEAD_INIT = nn.initializers.normal(0.01)


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """`value` rounded to the nearest multiple of `divisor`, never below `min_value` or 90% of it.

    The channel rounding of the MobileNet reference code (TF-slim, torchvision's
    `_make_divisible`): hardware prefers multiples of 8, and rounding down by more than 10% would
    cost too much capacity, so such values are rounded up instead.
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _bind_train(norm: ModuleDef, train: bool) -> ModuleDef:
    """`norm` with `use_running_average` bound if it takes one (BatchNorm), else as is."""
    if "use_running_average" in module_fields(norm):
        return functools.partial(norm, use_running_average=not train)
    return norm


def _check_width(width: float, field: str) -> None:
    if isinstance(width, bool) or not isinstance(width, int | float) or not width > 0:
        raise ConfigError(f"MobileNet {field} must be a positive number, got {width!r}")


class MobileNetV1(nn.Module):
    """MobileNet v1. Input `(N, H, W, 3)` NHWC (224x224 in the paper) -> `(logits, intermediates)`.

    Intermediates: "stem" (`H/2`), "stage1".."stage5" (`H/2`, `H/4`, ..., `H/32`, see
    `V1_STAGES`) and "pre_logits" `(N, 1024 alpha)` (globally pooled).

    Attributes:
      num_classes: output units.
      alpha: width multiplier; layer `c` gets `max(int(alpha c), 8)` filters (TF-slim's rule).
      stages: `(filters, stride)` per block, grouped in stages.
      conv: constructor of the stem and pointwise convs.
      depthwise_conv: constructor of the 3x3 depthwise convs (called with `features = C_in`).
      norm: normalization constructor (`use_running_average` is bound when it takes one).
      act: activation after every BN (ReLU in the paper; `jax.nn.relu6` in TF-slim's code).
      dropout_rate: dropout before the classifier (TF-slim keeps units with p = 0.999).
    """

    num_classes: int = 1000
    alpha: float = 1.0
    stages: Sequence[Sequence[tuple[int, int]]] = V1_STAGES
    conv: ModuleDef = _CONV
    depthwise_conv: ModuleDef = _DEPTHWISE
    norm: ModuleDef = BatchNorm
    act: Callable[[jnp.ndarray], jnp.ndarray] = nn.relu
    dropout_rate: float = 0.001

    def _width(self, channels: int) -> int:
        return max(int(channels * self.alpha), 8)

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False):
        _check_width(self.alpha, "alpha")
        norm = _bind_train(self.norm, train)
        conv = self.conv(
            features=self._width(32), kernel_size=3, strides=2, padding=1, name="stem_conv"
        )
        y = conv_bn_act(conv, norm(name="stem_bn"), x, self.act)
        intermediates = {"stem": y}
        for s, stage in enumerate(self.stages, start=1):
            for b, (filters, stride) in enumerate(stage, start=1):
                prefix = f"stage{s}_block{b}"
                conv = self.depthwise_conv(
                    features=y.shape[-1],
                    kernel_size=3,
                    strides=stride,
                    padding=1,
                    name=f"{prefix}_dw",
                )
                y = conv_bn_act(conv, norm(name=f"{prefix}_dw_bn"), y, self.act)
                conv = self.conv(
                    features=self._width(filters), kernel_size=1, padding=0, name=f"{prefix}_pw"
                )
                y = conv_bn_act(conv, norm(name=f"{prefix}_pw_bn"), y, self.act)
            intermediates[f"stage{s}"] = y
        pre_logits = global_avg_pool(y)
        intermediates["pre_logits"] = pre_logits
        y = nn.Dropout(self.dropout_rate, deterministic=not train)(pre_logits)
        logits = nn.Dense(self.num_classes, kernel_init=_HEAD_INIT, name="head")(y)
        return logits, intermediates


class InvertedResidual(nn.Module):
    """v2 block: 1x1 expand + BN + act (skipped when t = 1), 3x3 depthwise + BN + act, linear
    1x1 projection + BN; adds the input when `strides == 1` and the channel count is kept.

    `(N, H, W, C_in) -> (N, H / strides, W / strides, features)`.
    """

    features: int
    strides: int
    expansion: int
    conv: ModuleDef
    depthwise_conv: ModuleDef
    norm: ModuleDef
    act: Callable

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        norm = _bind_train(self.norm, train)
        hidden = int(round(x.shape[-1] * self.expansion))
        y = x
        if self.expansion != 1:
            conv = self.conv(features=hidden, kernel_size=1, padding=0, name="expand_conv")
            y = conv_bn_act(conv, norm(name="expand_bn"), y, self.act)
        conv = self.depthwise_conv(
            features=hidden, kernel_size=3, strides=self.strides, padding=1, name="dw_conv"
        )
        y = conv_bn_act(conv, norm(name="dw_bn"), y, self.act)
        # Linear bottleneck (Sec. 3.2): a ReLU here would destroy information in the thin layer.
        project = self.conv(features=self.features, kernel_size=1, padding=0, name="project_conv")
        residual = x if self.strides == 1 and x.shape[-1] == self.features else None
        return conv_bn_act(project, norm(name="project_bn"), y, residual=residual)


class MobileNetV2(nn.Module):
    """MobileNet v2. Input `(N, H, W, 3)` NHWC (224x224 in the paper) -> `(logits, intermediates)`.

    Intermediates: "stem" (`H/2`, 32 alpha channels), "stage1".."stage7" (the rows of `spec`;
    `H/2, H/4, H/8, H/16, H/16, H/32, H/32`), "last_conv" (the 1x1 conv to 1280 channels) and
    "pre_logits" `(N, 1280)` (globally pooled, before dropout).

    Attributes:
      num_classes: output units.
      width_mult: width multiplier `alpha` (paper: 0.35 to 1.4).
      round_nearest: channel counts are rounded to multiples of this (1: no rounding).
      spec: `(t, c, n, s)` rows, see `V2_SPEC`.
      last_channel: channels of the last 1x1 conv (scaled up, never down, by `width_mult`).
      conv: constructor of the stem and 1x1 convs.
      depthwise_conv: constructor of the 3x3 depthwise convs.
      norm: normalization constructor (`use_running_average` is bound when it takes one).
      act: activation after every non-projection BN (ReLU6, robust in low precision, Sec. 3).
      dropout_rate: dropout before the classifier.
    """

    num_classes: int = 1000
    width_mult: float = 1.0
    round_nearest: int = 8
    spec: Sequence[tuple[int, int, int, int]] = V2_SPEC
    last_channel: int = 1280
    conv: ModuleDef = _CONV
    depthwise_conv: ModuleDef = _DEPTHWISE
    norm: ModuleDef = BatchNorm
    act: Callable[[jnp.ndarray], jnp.ndarray] = jax.nn.relu6
    dropout_rate: float = 0.2

    def _check_config(self) -> None:
        _check_width(self.width_mult, "width_mult")
        if not isinstance(self.round_nearest, int) or self.round_nearest < 1:
            raise ConfigError(f"round_nearest must be a positive int, got {self.round_nearest!r}")
        if not self.spec:
            raise ConfigError("MobileNetV2 spec must have at least one (t, c, n, s) row")
        for row in self.spec:
            if len(row) != 4 or row[3] not in (1, 2) or min(row) < 1:
                raise ConfigError(
                    f"MobileNetV2 spec rows are (t, c, n, s) with positive ints and stride s in "
                    f"(1, 2), got {tuple(row)!r}"
                )

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False):
        self._check_config()
        norm = _bind_train(self.norm, train)
        width = functools.partial(make_divisible, divisor=self.round_nearest)
        conv = self.conv(
            features=width(32 * self.width_mult),
            kernel_size=3,
            strides=2,
            padding=1,
            name="stem_conv",
        )
        y = conv_bn_act(conv, norm(name="stem_bn"), x, self.act)
        intermediates = {"stem": y}
        for s, (t, c, n, stride) in enumerate(self.spec, start=1):
            for b in range(n):
                y = InvertedResidual(
                    features=width(c * self.width_mult),
                    strides=stride if b == 0 else 1,
                    expansion=t,
                    conv=self.conv,
                    depthwise_conv=self.depthwise_conv,
                    norm=self.norm,
                    act=self.act,
                    name=f"stage{s}_block{b + 1}",
                )(y, train)
            intermediates[f"stage{s}"] = y
        last = width(self.last_channel * max(1.0, self.width_mult))
        conv = self.conv(features=last, kernel_size=1, padding=0, name="last_conv")
        y = conv_bn_act(conv, norm(name="last_bn"), y, self.act)
        intermediates["last_conv"] = y
        pre_logits = global_avg_pool(y)
        intermediates["pre_logits"] = pre_logits
        y = nn.Dropout(self.dropout_rate, deterministic=not train)(pre_logits)
        logits = nn.Dense(self.num_classes, kernel_init=_HEAD_INIT, name="head")(y)
        return logits, intermediates


def _convert_mobilenet_v2(reader: TorchReader) -> dict:
    """torchvision `mobilenet_v2(width_mult=...)` state dict -> `MobileNetV2` variables.

    torchvision numbers the layers `features.0` (stem), `features.1..17` (the blocks in spec
    order; inside a block `conv.<i>` counts expand, depthwise, projection conv and its BN),
    `features.18` (last conv) and `classifier.1` (the dense layer). Channel counts come from the
    state dict; `from_torch` checks them against the model's.
    """
    variables = {"params": {}, "batch_stats": {}}

    def put(scope: str | None, name: str, conv: str, bn: str) -> None:
        params, stats = (
            (
                variables["params"].setdefault(scope, {}),
                variables["batch_stats"].setdefault(scope, {}),
            )
            if scope
            else (variables["params"], variables["batch_stats"])
        )
        params[f"{name}_conv"] = reader.conv(conv)
        params[f"{name}_bn"], stats[f"{name}_bn"] = reader.batch_norm(bn)

    put(None, "stem", "features.0.0", "features.0.1")
    index = 1
    for s, (t, _, n, _) in enumerate(V2_SPEC, start=1):
        for b in range(1, n + 1):
            prefix = f"features.{index}.conv"
            layers = ["expand", "dw"] if t != 1 else ["dw"]
            for i, layer in enumerate(layers):
                put(f"stage{s}_block{b}", layer, f"{prefix}.{i}.0", f"{prefix}.{i}.1")
            j = len(layers)
            put(f"stage{s}_block{b}", "project", f"{prefix}.{j}", f"{prefix}.{j + 1}")
            index += 1
    put(None, "last", f"features.{index}.0", f"features.{index}.1")
    variables["params"]["head"] = reader.dense("classifier.1")
    return variables


def _register_v1(name: str, alpha: float) -> None:
    """Registers MobileNet v1 at width multiplier `alpha` (no torchvision counterpart)."""
    macs, params = V1_PUBLISHED[(alpha, 224)]
    register(
        name,
        functools.partial(MobileNetV1, alpha=alpha),
        input_shape=(224, 224, 3),
        paper=f"Howard et al. 2017 ({params}M params, {macs}M mult-adds)",
        description=f"MobileNet v1, width multiplier {alpha}, depthwise-separable blocks",
    )


# Table 6's other widths (0.75, 0.25) are `alpha=` away; registering them would only add compile
# time to the registry-wide tests.
_register_v1("mobilenet_v1", alpha=1.0)
_register_v1("mobilenet_v1_050", alpha=0.5)


def _register_v2(name: str, width_mult: float) -> None:
    """Registers torchvision's `mobilenet_v2(width_mult=width_mult)`, with its converter."""
    published = V2_PUBLISHED.get(width_mult)
    register(
        name,
        functools.partial(MobileNetV2, width_mult=width_mult),
        input_shape=(224, 224, 3),
        paper="Sandler et al. 2018" + (f" ({published[0]}M mult-adds)" if published else ""),
        description=f"MobileNet v2, width multiplier {width_mult} (torchvision layout)",
        converter=_convert_mobilenet_v2,
    )


_register_v2("mobilenet_v2", width_mult=1.0)
_register_v2("mobilenet_v2_050", width_mult=0.5)
_register_v2("mobilenet_v2_140", width_mult=1.4)
