"""Highway networks (Srivastava et al. 2015, "Training very deep networks").

A highway layer gates between transforming and carrying its input, as an LSTM cell does over time:

    y = H(x) * T(x) + x * (1 - T(x)),    H(x) = act(W_H x + b_H),    T(x) = sigmoid(W_T x + b_T)

with the same shape in and out (plain layers change widths between highway stacks). With the gate
bias `b_T` initialized negative, `T` starts near 0 and each layer starts close to the identity, so
signals and gradients cross hundreds of layers at initialization; the paper uses -1 to -3, more
negative for deeper networks (`gate_bias`). `HighwayLayer` takes any layer constructor: a conv
for the convolutional form (`x * W` a 3x3 convolution), `nn.Dense` for the fully connected one.

`highway_cifar` is a 19-layer convolutional highway network in the spirit of the paper's CIFAR-10
experiments (which used FitNet-like layouts; this is not their exact layer table): per stage a
plain 3x3 conv sets the width (32, 64, 128) and five 3x3 highway layers follow, with 2x2 max
pools between stages, then global average pooling and a dense classifier: 2,032,138 parameters.
`highway_mlp` is the paper's thin MNIST network at depth 10: a plain 784-50 layer, 8 highway
layers of 50 units and the 10-way output, 80,560 parameters.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cnnjax.errors import ConfigError
from cnnjax.layers import Conv2d, global_avg_pool, max_pool2d
from cnnjax.models.registry import register

ModuleDef = Any


class HighwayLayer(nn.Module):
    """`y = H(x) T(x) + x (1 - T(x))` over the last axis; output shape = input shape.

    The gate's layer has no bias of its own: `b_T` is the separate parameter "gate_bias", so
    that it is initialized to `gate_bias` whatever layer constructor is injected. The gate
    values `T(x)` are sown into the "intermediates" collection as "transform_gate" (read them with
    `apply(..., mutable=["intermediates"])`).

    Attributes:
      layer: constructor of the transform and gate layers, called as `layer(features=,
        use_bias=, name=)`, e.g. `functools.partial(Conv2d, kernel_size=3)` or `nn.Dense`.
      gate_bias: initial `b_T` (negative: start close to carrying the input).
      act: activation of `H`.
      norm: optional normalization of `H` before `act` (None in the paper).
    """

    layer: ModuleDef
    gate_bias: float = -2.0
    act: Callable[[jnp.ndarray], jnp.ndarray] = nn.relu
    norm: ModuleDef | None = None

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        """`(..., C) -> (..., C)`."""
        channels = x.shape[-1]
        h = self.layer(features=channels, name="transform")(x)
        if self.norm is not None:
            h = self.norm(use_running_average=not train, name="transform_bn")(h)
        h = self.act(h)
        b_t = self.param("gate_bias", nn.initializers.constant(self.gate_bias), (channels,))
        t = nn.sigmoid(self.layer(features=channels, use_bias=False, name="gate")(x) + b_t)
        self.sow("intermediates", "transform_gate", t)
        return x + t * (h - x)


class HighwayCifar(nn.Module):
    """Convolutional highway network. `(N, H, W, C)` -> `(logits (N, num_classes), intermediates)`.

    Intermediates: "stem" the first plain conv, "stage1".."stageS" each stage's last highway
    layer, "pre_logits" the globally averaged features `(N, widths[-1])`.

    Attributes:
      num_classes: output units.
      stages: `(width, highway layers)` per stage.
      gate_bias: initial transform-gate bias of every highway layer.
      conv: convolution constructor, called with `features=, kernel_size=3` (+ `use_bias=`).
      norm: optional normalization after the plain convs and inside `H` (None: the paper's).
      act: activation.
      pool: pooling between stages.
    """

    num_classes: int = 10
    stages: Sequence[tuple[int, int]] = ((32, 5), (64, 5), (128, 5))
    gate_bias: float = -2.0
    conv: ModuleDef = Conv2d
    norm: ModuleDef | None = None
    act: Callable[[jnp.ndarray], jnp.ndarray] = nn.relu
    pool: Callable[[jnp.ndarray], jnp.ndarray] = max_pool2d

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False):
        if not self.stages or any(w < 1 or n < 0 for w, n in self.stages):
            raise ConfigError(
                f"highway stages must be (width >= 1, layers >= 0) pairs, got {self.stages!r}"
            )
        layer = functools.partial(self.conv, kernel_size=3)
        intermediates = {}
        for s, (width, depth) in enumerate(self.stages, start=1):
            if s > 1:
                x = self.pool(x)
            x = layer(features=width, name=f"stage{s}_conv")(x)
            if self.norm is not None:
                x = self.norm(use_running_average=not train, name=f"stage{s}_bn")(x)
            x = self.act(x)
            intermediates.setdefault("stem", x)
            for i in range(1, depth + 1):
                x = HighwayLayer(
                    layer, self.gate_bias, self.act, self.norm, name=f"stage{s}_highway{i}"
                )(x, train)
            intermediates[f"stage{s}"] = x
        x = intermediates["pre_logits"] = global_avg_pool(x)
        return nn.Dense(self.num_classes, name="head")(x), intermediates


class HighwayMLP(nn.Module):
    """Fully connected highway network on flattened inputs `(N, ...)` -> `(N, num_classes)`.

    Intermediates: "stem" the plain input layer, "stage1" the last highway layer, "pre_logits"
    the same `(N, width)` features.

    Attributes:
      num_classes: output units.
      width: units of every hidden layer (the paper's thin MNIST nets: 50).
      highway_layers: number of highway layers after the plain input layer.
      gate_bias: initial transform-gate bias.
      dense: dense layer constructor, called as `dense(features=, use_bias=, name=)`.
      act: activation.
    """

    num_classes: int = 10
    width: int = 50
    highway_layers: int = 8
    gate_bias: float = -1.0
    dense: ModuleDef = nn.Dense
    act: Callable[[jnp.ndarray], jnp.ndarray] = nn.relu

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False):
        if self.width < 1 or self.highway_layers < 0:
            raise ConfigError(
                f"highway MLP needs width >= 1 and highway_layers >= 0, got {self.width} and "
                f"{self.highway_layers}"
            )
        x = self.act(self.dense(features=self.width, name="input")(x.reshape(x.shape[0], -1)))
        intermediates = {"stem": x}
        for i in range(1, self.highway_layers + 1):
            x = HighwayLayer(self.dense, self.gate_bias, self.act, name=f"highway{i}")(x, train)
        intermediates["stage1"] = intermediates["pre_logits"] = x
        return self.dense(features=self.num_classes, name="head")(x), intermediates


# Both come from Srivastava et al. 2015.
_register_highway = functools.partial(register, paper="Srivastava et al. 2015")
_register_highway(
    "highway_cifar",
    HighwayCifar,
    input_shape=(32, 32, 3),
    description="19-layer convolutional highway network: 3 stages of a plain conv and 5 highway "
    "layers (32/64/128 channels), gate bias -2",
)
_register_highway(
    "highway_mlp",
    HighwayMLP,
    input_shape=(28, 28, 1),
    description="10-layer thin highway MLP for MNIST: 784-50, 8 highway layers of 50, gate bias -1",
)
