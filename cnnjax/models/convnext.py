"""ConvNeXt (Liu et al. 2022, "A ConvNet for the 2020s").

A ResNet modernized step by step towards a Swin Transformer: a "patchify" stem (4x4 conv, stride
4, + LayerNorm), four stages of blocks at strides 4, 8, 16, 32 with a 1:1:3:1 (T) or 1:1:9:1 (S, B)
block ratio, and between stages a LayerNorm + 2x2 stride-2 conv. A block is an inverted
bottleneck with a large depthwise kernel moved up front:

    x + drop_path(gamma * Linear_{4C->C}(GELU(Linear_{C->4C}(LN(DWConv7x7(x))))))

with one normalization and one activation per block, layer scale `gamma` (initialized to 1e-6)
and stochastic depth whose rate grows linearly from 0 to `drop_path_rate` over all blocks. The
head is global average pooling, LayerNorm and a dense layer. Every LayerNorm is over channels at
each position (channels-last), eps 1e-6. Layout, names and rates follow torchvision's
`convnext_tiny/small/base` (28,589,128 / 50,223,688 / 88,591,464 parameters).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnjax.errors import ConfigError, unknown_choice
from cnnjax.layers import Conv2d, DepthwiseConv2d, LayerNorm, global_avg_pool
from cnnjax.layers.activations import gelu
from cnnjax.models.convert import TorchReader
from cnnjax.models.registry import module_fields, register

ModuleDef = Any

# Paper, Sec. 3 / torchvision: blocks per stage, channels per stage, and the final stochastic
# depth rate of torchvision's recipe (the paper's ImageNet-1K rates: 0.1 / 0.4 / 0.5).
CONVNEXT_SPECS: dict[str, dict[str, Any]] = {
    "tiny": dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), drop_path_rate=0.1),
    "small": dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768), drop_path_rate=0.4),
    "base": dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024), drop_path_rate=0.5),
}
# Paper, Table 1 (ImageNet-1K, 224x224): (million params, GFLOPs as multiply-adds).
PUBLISHED = {"tiny": (28, 4.5), "small": (50, 8.7), "base": (89, 15.4)}

# torchvision's initialization: truncated normal with std 0.02 for every conv and dense layer
# (torch truncates at +-2 absolute, i.e. +-100 std: practically untruncated; Flax at +-2 std).
_INIT = nn.initializers.truncated_normal(stddev=0.02)
_CONV = functools.partial(Conv2d, kernel_init=_INIT)
_DEPTHWISE = functools.partial(DepthwiseConv2d, kernel_init=_INIT)
_GELU = functools.partial(gelu, approximate=False)


def _bind_train(norm: ModuleDef, train: bool) -> ModuleDef:
    """`norm` with `use_running_average` bound if it takes one (a BatchNorm ablation)."""
    if "use_running_average" in module_fields(norm):
        return functools.partial(norm, use_running_average=not train)
    return norm


def drop_path_rates(depths: Sequence[int], drop_path_rate: float) -> list[float]:
    """Stochastic depth rate of every block: linear from 0 (first) to `drop_path_rate` (last)."""
    total = sum(depths)
    return [drop_path_rate * i / max(total - 1, 1) for i in range(total)]


class ConvNeXtBlock(nn.Module):
    """`x + drop_path(gamma * pw2(act(pw1(norm(dw7x7(x))))))`; `(N, H, W, C)` -> same shape.

    Attributes:
      drop_path: probability of skipping the residual branch for a sample (training only; rng
        collection "dropout").
      layer_scale_init: initial value of the per-channel scale `gamma` (None: no layer scale).
      depthwise_conv, norm, act: injected layers, see `ConvNeXt`.
      kernel_size: depthwise kernel (7 in the paper, Sec. 2.5).
      expansion: hidden width of the MLP relative to `C` (4, Sec. 2.4).
    """

    drop_path: float
    layer_scale_init: float | None
    depthwise_conv: ModuleDef
    norm: ModuleDef
    act: Callable
    kernel_size: int = 7
    expansion: int = 4

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        channels = x.shape[-1]
        y = self.depthwise_conv(
            features=channels,
            kernel_size=self.kernel_size,
            padding=self.kernel_size // 2,
            name="dwconv",
        )(x)
        y = _bind_train(self.norm, train)(name="norm")(y)
        y = nn.Dense(self.expansion * channels, kernel_init=_INIT, name="pwconv1")(y)
        y = nn.Dense(channels, kernel_init=_INIT, name="pwconv2")(self.act(y))
        if self.layer_scale_init is not None:
            gamma = self.param(
                "gamma", nn.initializers.constant(self.layer_scale_init), (channels,)
            )
            y = y * gamma
        # Stochastic depth (Huang et al. 2016): one Bernoulli draw per sample, shared over
        # H, W, C; kept branches are scaled by 1 / (1 - p) so evaluation is the identity.
        y = nn.Dropout(self.drop_path, broadcast_dims=(1, 2, 3), deterministic=not train)(y)
        return x + y


class ConvNeXt(nn.Module):
    """ConvNeXt. Input `(N, H, W, 3)` NHWC (224x224; at least 32x32) -> `(logits, intermediates)`.

    Intermediates: "stem" (`H/4`, after the stem LayerNorm), "stage1".."stage4" (`H/4` .. `H/32`,
    each after its blocks; the downsampling layer opens stages 2-4) and "pre_logits"
    `(N, dims[-1])` (pooled and normalized, what the dense layer reads).

    Attributes:
      variant: "tiny", "small" or "base" (see `CONVNEXT_SPECS`).
      num_classes: output units.
      depths: blocks per stage (None: the variant's).
      dims: channels per stage (None: the variant's).
      drop_path_rate: stochastic depth rate of the last block (None: the variant's).
      layer_scale_init: initial layer scale (None disables layer scale).
      conv: constructor of the stem and downsampling convs (with bias, as torchvision).
      depthwise_conv: constructor of the 7x7 depthwise convs (with bias).
      norm: normalization constructor (channels-last LayerNorm, eps 1e-6; `use_running_average`
        is bound for a BatchNorm ablation).
      act: activation in the MLP (exact, erf-based GELU as `torch.nn.GELU()`).
    """

    variant: str = "tiny"
    num_classes: int = 1000
    depths: Sequence[int] | None = None
    dims: Sequence[int] | None = None
    drop_path_rate: float | None = None
    layer_scale_init: float | None = 1e-6
    conv: ModuleDef = _CONV
    depthwise_conv: ModuleDef = _DEPTHWISE
    norm: ModuleDef = LayerNorm
    act: Callable[[jnp.ndarray], jnp.ndarray] = _GELU

    def resolved(self) -> tuple[tuple[int, ...], tuple[int, ...], float]:
        """`(depths, dims, drop_path_rate)` after applying the overrides to the variant.

        Raises:
          ConfigError: unknown variant, mismatched lengths, non-positive sizes or a bad rate.
        """
        if self.variant not in CONVNEXT_SPECS:
            raise ConfigError(unknown_choice("ConvNeXt variant", self.variant, CONVNEXT_SPECS))
        spec = CONVNEXT_SPECS[self.variant]
        depths = tuple(spec["depths"] if self.depths is None else self.depths)
        dims = tuple(spec["dims"] if self.dims is None else self.dims)
        rate = spec["drop_path_rate"] if self.drop_path_rate is None else self.drop_path_rate
        if not depths or len(depths) != len(dims) or min(depths) < 1 or min(dims) < 1:
            raise ConfigError(
                f"ConvNeXt depths and dims need one positive entry per stage, got depths "
                f"{depths} and dims {dims}"
            )
        if not 0.0 <= rate < 1.0:
            raise ConfigError(f"ConvNeXt drop_path_rate must be in [0, 1), got {rate}")
        return depths, dims, rate

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False):
        depths, dims, rate = self.resolved()
        norm = _bind_train(self.norm, train)
        y = self.conv(features=dims[0], kernel_size=4, strides=4, padding=0, name="stem_conv")(x)
        y = norm(name="stem_norm")(y)
        intermediates = {"stem": y}
        rates = iter(drop_path_rates(depths, rate))
        for s, (depth, dim) in enumerate(zip(depths, dims, strict=True), start=1):
            if s > 1:
                y = norm(name=f"stage{s}_downsample_norm")(y)
                y = self.conv(
                    features=dim,
                    kernel_size=2,
                    strides=2,
                    padding=0,
                    name=f"stage{s}_downsample_conv",
                )(y)
            for b in range(1, depth + 1):
                y = ConvNeXtBlock(
                    drop_path=next(rates),
                    layer_scale_init=self.layer_scale_init,
                    depthwise_conv=self.depthwise_conv,
                    norm=self.norm,
                    act=self.act,
                    name=f"stage{s}_block{b}",
                )(y, train)
            intermediates[f"stage{s}"] = y
        pre_logits = norm(name="head_norm")(global_avg_pool(y))
        intermediates["pre_logits"] = pre_logits
        logits = nn.Dense(self.num_classes, kernel_init=_INIT, name="head")(pre_logits)
        return logits, intermediates


def _layer_norm(reader: TorchReader, prefix: str) -> dict:
    return {"scale": reader.raw(f"{prefix}.weight"), "bias": reader.raw(f"{prefix}.bias")}


def _convert_convnext(reader: TorchReader) -> dict:
    """torchvision `convnext_*` state dict -> `ConvNeXt` variables.

    torchvision's `features` alternate stages and downsampling layers: `features.0` is the stem
    (conv, LayerNorm), `features.{2s-1}` stage `s` (blocks `.{b}.block.{0,2,3,5}` = depthwise
    conv, LayerNorm, Linear, Linear, plus `.layer_scale` of shape `(C, 1, 1)`) and
    `features.{2s}` the (LayerNorm, conv) that leads into stage `s + 1`; `classifier.{0,2}` are
    the head's LayerNorm and Linear. The block counts are read from the state dict.
    """
    params = {
        "stem_conv": reader.conv("features.0.0"),
        "stem_norm": _layer_norm(reader, "features.0.1"),
    }
    stage = 1
    while f"features.{2 * stage - 1}.0.layer_scale" in reader.tensors:
        if stage > 1:
            params[f"stage{stage}_downsample_norm"] = _layer_norm(
                reader, f"features.{2 * stage - 2}.0"
            )
            params[f"stage{stage}_downsample_conv"] = reader.conv(f"features.{2 * stage - 2}.1")
        block = 0
        while f"features.{2 * stage - 1}.{block}.layer_scale" in reader.tensors:
            prefix = f"features.{2 * stage - 1}.{block}"
            params[f"stage{stage}_block{block + 1}"] = {
                "dwconv": reader.conv(f"{prefix}.block.0"),
                "norm": _layer_norm(reader, f"{prefix}.block.2"),
                "pwconv1": reader.dense(f"{prefix}.block.3"),
                "pwconv2": reader.dense(f"{prefix}.block.5"),
                "gamma": reader.raw(f"{prefix}.layer_scale").reshape(-1),
            }
            block += 1
        stage += 1
    params["head_norm"] = _layer_norm(reader, "classifier.0")
    params["head"] = reader.dense("classifier.2")
    return {"params": params}


def _register_convnext(name: str, variant: str) -> None:
    """Registers torchvision's `convnext_{variant}`; one converter serves every variant."""
    params, gflops = PUBLISHED[variant]
    spec = CONVNEXT_SPECS[variant]
    description = (
        f"ConvNeXt-{variant[0].upper()}: depths {spec['depths']}, dims {spec['dims']}, "
        f"stochastic depth {spec['drop_path_rate']} (torchvision layout)"
    )
    register(
        name,
        functools.partial(ConvNeXt, variant=variant),
        input_shape=(224, 224, 3),
        paper=f"Liu et al. 2022 ({params}M params, {gflops}G FLOPs)",
        description=description,
        converter=_convert_convnext,
    )


_register_convnext("convnext_tiny", variant="tiny")
_register_convnext("convnext_small", variant="small")
_register_convnext("convnext_base", variant="base")
