"""AlexNet (Krizhevsky et al. 2012) and ZFNet (Zeiler & Fergus 2013).

Five convolutions, three overlapping 3x3/2 max pools, then a 4096-4096 dropout classifier over
the 6x6x256 map. Three layouts share one module (`ALEXNET_SPECS`):

* "torchvision" (`alexnet`): torchvision's single-stream variant (its documentation cites
  Krizhevsky 2014, "One weird trick for parallelizing convolutional neural networks"):
  64-192-384-256-256 filters, no local response normalization, an adaptive 6x6 average pool
  before the classifier; 61,100,840 parameters.
* "krizhevsky2012" (`alexnet_lrn`): the 2012 paper's 96-256-384-384-256 filters, conv-ReLU-LRN-pool
  in layers 1 and 2 (k=2, n=5, alpha=1e-4, beta=0.75 in the paper's notation), on 227x227 inputs
  (the paper says 224, but (224 - 11)/4 + 1 = 54.25 does not give its 55x55 maps; 227 does).
  This is the single-GPU form: every conv sees all input maps, 62,378,344 parameters. With
  `groups=2`, conv2, conv4 and conv5 only see the maps of their own half, as in the paper's
  2-GPU split (conv3 and the dense layers cross over): 60,965,224 parameters, those of the
  reference Caffe model. The single-GPU form is the default because the split was an
  engineering constraint (3 GB GPUs), not a modelling choice.
* "zeiler2013" (`zfnet`): ZFNet (Fig. 3): 7x7/2 first conv with 96 filters and 5x5/2 conv2 (the
  authors' visualizations showed aliasing and dead filters from AlexNet's 11x11/4 first layer);
  dense connections everywhere; pool, then normalization "across feature maps" (here the same
  LRN as AlexNet) in layers 1 and 2. The figure's map sizes 110-55-26-13-13-13-6 need padding 1
  in conv1 and ceil-mode pooling (Caffe's convention), both used here.

The normalization is the injected `norm` (the paper's LRN; None for torchvision's layout); a
constructor taking `use_running_average` (e.g. `BatchNorm`) gets `not train`. Weights use Flax
initializers, not the paper's N(0, 0.01) with unit biases.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnjax.errors import ConfigError, unknown_choice
from cnnjax.layers import Conv2d, LocalResponseNorm, max_pool2d
from cnnjax.layers.pooling import adaptive_avg_pool2d
from cnnjax.models.convert import TorchReader
from cnnjax.models.registry import module_fields, register

ModuleDef = Any


@dataclasses.dataclass(frozen=True)
class ConvLayer:
    """One convolution of an AlexNet-style network.

    Attributes:
      features: output channels.
      kernel: square kernel size.
      stride: stride.
      padding: symmetric zero padding (torchvision's integer padding).
      norm: followed by the network's `norm` (the paper's LRN).
      pool: followed by the network's max pool.
      split: grouped into `groups` halves when the network has `groups > 1` (the 2012 paper's
        GPU split: conv2, conv4, conv5).
    """

    features: int
    kernel: int
    stride: int = 1
    padding: int = 0
    norm: bool = False
    pool: bool = False
    split: bool = False


@dataclasses.dataclass(frozen=True)
class AlexNetSpec:
    """A layout: its conv layers and whether normalization comes before or after pooling."""

    layers: tuple[ConvLayer, ...]
    norm_before_pool: bool = True


ALEXNET_SPECS = {
    "torchvision": AlexNetSpec(
        (
            ConvLayer(64, 11, 4, 2, pool=True),
            ConvLayer(192, 5, 1, 2, pool=True, split=True),
            ConvLayer(384, 3, 1, 1),
            ConvLayer(256, 3, 1, 1, split=True),
            ConvLayer(256, 3, 1, 1, pool=True, split=True),
        )
    ),
    "krizhevsky2012": AlexNetSpec(
        (
            ConvLayer(96, 11, 4, 0, norm=True, pool=True),
            ConvLayer(256, 5, 1, 2, norm=True, pool=True, split=True),
            ConvLayer(384, 3, 1, 1),
            ConvLayer(384, 3, 1, 1, split=True),
            ConvLayer(256, 3, 1, 1, pool=True, split=True),
        )
    ),
    "zeiler2013": AlexNetSpec(
        (
            ConvLayer(96, 7, 2, 1, norm=True, pool=True),
            ConvLayer(256, 5, 2, 0, norm=True, pool=True),
            ConvLayer(384, 3, 1, 1),
            ConvLayer(384, 3, 1, 1),
            ConvLayer(256, 3, 1, 1, pool=True),
        ),
        norm_before_pool=False,
    ),
}

# The paper's response normalization: k=2, n=5, alpha=1e-4, beta=0.75 with alpha multiplying the
# plain sum of squares; `LocalResponseNorm` divides alpha by n (PyTorch's convention), so 5e-4.
PAPER_LRN = functools.partial(LocalResponseNorm, size=5, alpha=5e-4, beta=0.75, k=2.0)
overlapping_max_pool = functools.partial(max_pool2d, window=3, strides=2)


def apply_norm(norm: ModuleDef, x: jnp.ndarray, train: bool, name: str) -> jnp.ndarray:
    """`norm(name=name)(x)`, passing `use_running_average=not train` when `norm` takes it."""
    takes_mode = "use_running_average" in module_fields(norm)
    kwargs = {"use_running_average": not train} if takes_mode else {}
    return norm(name=name, **kwargs)(x)


class AlexNet(nn.Module):
    """AlexNet-style network. `(N, H, W, 3)` NHWC -> `(logits (N, num_classes), intermediates)`.

    Intermediates: "stem" the pooled conv1 block, "stage1" the pooled conv2 block, "stage2" the
    pooled conv3-5 block (6x6 at the default input size), "fc6" and "pre_logits" (fc7, after
    ReLU) `(N, 4096)`.

    Attributes:
      variant: a key of `ALEXNET_SPECS`.
      num_classes: output units.
      groups: channel groups of the layers the 2012 paper split across two GPUs (1: dense).
      hidden: width of the two hidden dense layers.
      dropout_rate: dropout before fc6 and fc7 (torchvision's placement).
      conv: convolution constructor, called as `conv(features=, kernel_size=, strides=,
        padding=)` (and `groups=` when grouped).
      norm: normalization after the layers the spec marks (None: none).
      act: activation.
      pool: the overlapping max pool.
    """

    variant: str = "torchvision"
    num_classes: int = 1000
    groups: int = 1
    hidden: int = 4096
    dropout_rate: float = 0.5
    conv: ModuleDef = Conv2d
    norm: ModuleDef | None = None
    act: Callable[[jnp.ndarray], jnp.ndarray] = nn.relu
    pool: Callable[[jnp.ndarray], jnp.ndarray] = overlapping_max_pool

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False):
        if self.variant not in ALEXNET_SPECS:
            raise ConfigError(unknown_choice("AlexNet variant", self.variant, ALEXNET_SPECS))
        if not isinstance(self.groups, int) or self.groups < 1:
            raise ConfigError(f"AlexNet groups must be a positive int, got {self.groups!r}")
        spec = ALEXNET_SPECS[self.variant]
        intermediates = {}
        stage_names = iter(("stem", "stage1", "stage2"))
        for i, layer in enumerate(spec.layers, start=1):
            grouped = {"groups": self.groups} if layer.split and self.groups > 1 else {}
            x = self.conv(
                features=layer.features,
                kernel_size=layer.kernel,
                strides=layer.stride,
                padding=layer.padding,
                name=f"conv{i}",
                **grouped,
            )(x)
            x = self.act(x)
            normalize = layer.norm and self.norm is not None
            if normalize and spec.norm_before_pool:
                x = apply_norm(self.norm, x, train, f"norm{i}")
            if layer.pool:
                x = self.pool(x)
            if normalize and not spec.norm_before_pool:
                x = apply_norm(self.norm, x, train, f"norm{i}")
            if layer.pool:
                intermediates[next(stage_names)] = x
        # Identity at the default input sizes; lets other sizes reach the 6x6 classifier input.
        x = adaptive_avg_pool2d(x, 6, layer="avgpool")
        x = x.reshape(x.shape[0], -1)
        for name in ("fc6", "fc7"):
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
            x = self.act(nn.Dense(self.hidden, name=name)(x))
            intermediates[name] = x
        intermediates["pre_logits"] = intermediates.pop("fc7")
        return nn.Dense(self.num_classes, name="head")(x), intermediates


def _convert_alexnet(reader: TorchReader) -> dict:
    """torchvision `alexnet`: convs `features.{0,3,6,8,10}`, dense `classifier.{1,4,6}`."""
    params = {f"conv{i}": reader.conv(f"features.{k}") for i, k in enumerate((0, 3, 6, 8, 10), 1)}
    params["fc6"] = reader.dense("classifier.1", input_layout=(256, 6, 6))
    params["fc7"] = reader.dense("classifier.4")
    params["head"] = reader.dense("classifier.6")
    return {"params": params}


# torchvision's layout is credited to the 2012 paper too (its documentation cites the 2014 one).
_KRIZHEVSKY_2012 = "Krizhevsky et al. 2012"
register(
    "alexnet",
    AlexNet,
    input_shape=(224, 224, 3),
    paper=_KRIZHEVSKY_2012 + " (torchvision layout, Krizhevsky 2014)",
    description="AlexNet as in torchvision: 64-192-384-256-256 convs, no LRN",
    converter=_convert_alexnet,
)
register(
    "alexnet_lrn",
    functools.partial(AlexNet, variant="krizhevsky2012", norm=PAPER_LRN),
    input_shape=(227, 227, 3),
    paper=_KRIZHEVSKY_2012,
    description="AlexNet of the 2012 paper, single-GPU form (groups=2 for the 2-GPU split): "
    "96-256-384-384-256 convs, LRN after conv1 and conv2",
)
register(
    "zfnet",
    functools.partial(
        AlexNet,
        variant="zeiler2013",
        norm=PAPER_LRN,
        pool=functools.partial(max_pool2d, window=3, strides=2, ceil_mode=True),
    ),
    input_shape=(224, 224, 3),
    paper="Zeiler & Fergus 2013",
    description="ZFNet: 7x7/2 conv1, 5x5/2 conv2, dense connections, pool-then-LRN",
)
