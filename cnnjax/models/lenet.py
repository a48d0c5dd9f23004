"""LeNet-5 and LeNet-300-100 (LeCun et al. 1998, "Gradient-based learning applied to document
recognition").

LeNet-5: layers C1 (6@5x5) - S2 (2x2 subsampling) - C3 (16@5x5) - S4 - C5 (120@5x5, a
convolution that sees the whole 5x5 map) - F6 (84) - output, on 32x32 inputs (MNIST's 28x28 digits
padded by 2). With full C3 connections the network has 61,706 parameters.

C3 in the paper is not fully connected: Table I lists which of the 6 S2 maps feed each of the 16
C3 maps (60 of the 96 pairs), "to break the symmetry in the network" and to keep the number of
connections in bounds: 60 * 25 weights + 16 biases = 1,516 parameters instead of 2,416.
`c3_connections="lecun1998"` implements that map as one convolution whose kernel is scattered from
the 60 connected `5x5` filters into a zero `(5, 5, 6, 16)` kernel (`C3_TABLE`), so the parameters
are exactly the paper's and the layer stays a single conv (MAC counts see the dense conv).

`lenet5_caffe` is the network of Caffe's MNIST example (20 and 50 5x5 filters, 500 hidden units,
431,080 parameters), which the pruning and Deep Compression papers call "LeNet-5".

LeNet-300-100 is the paper's fully connected baseline "3-layer NN, 300+100 hidden units" on
28x28 digits: 784-300-100-10, 266,610 parameters.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.errors import ConfigError, unknown_choice
from cnnjax.layers import Conv2d, avg_pool2d, max_pool2d
from cnnjax.models.registry import register

ModuleDef = Any

# Table I of the paper: the S2 maps feeding each C3 map. Maps 0-5 see every contiguous triple
# of S2 maps, 6-11 every contiguous quadruple, 12-14 three non-contiguous quadruples, 15 all six.
C3_TABLE: tuple[tuple[int, ...], ...] = (
    *(tuple((j + i) % 6 for i in range(3)) for j in range(6)),
    *(tuple((j + i) % 6 for i in range(4)) for j in range(6)),
    (0, 1, 3, 4),
    (1, 2, 4, 5),
    (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)
C3_CONNECTIONS = ("full", "lecun1998")


def c3_connection_mask() -> np.ndarray:
    """`(6, 16)` boolean matrix: `mask[i, j]` when S2 map `i` feeds C3 map `j` (Table I)."""
    mask = np.zeros((6, 16), bool)
    for j, inputs in enumerate(C3_TABLE):
        mask[list(inputs), j] = True
    return mask


def scaled_tanh(x: jnp.ndarray) -> jnp.ndarray:
    """The paper's squashing function `1.7159 tanh(2x/3)` (Appendix A).

    Chosen so that `f(1) = 1` and `f(-1) = -1`, with the maximal second derivative at +-1 and a
    gain near 1 around the origin, which keeps unit-variance inputs at unit variance.
    """
    return 1.7159 * jnp.tanh(x * (2.0 / 3.0))


def _connection_map_transforms(mask: np.ndarray, layer: str):
    """`(to_full, to_compact)` variable transforms for `nn.map_variables`.

    Every `kernel` whose last two axes are `mask.shape` is stored as only its connected
    `(in, out)` pairs, `(..., mask.sum())` in the row-major order of `np.nonzero(mask)`, and
    scattered into a zero kernel before the conv sees it. Other variables pass unchanged.
    """
    rows, cols = np.nonzero(mask)

    def is_masked(path, leaf) -> bool:
        return getattr(path[-1], "key", None) == "kernel" and leaf.shape[-2:] == mask.shape

    def to_compact(variables):
        params = variables.get("params")
        if not params:
            return variables  # apply(): the conv wrote nothing
        if not any(is_masked(p, v) for p, v in jax.tree_util.tree_leaves_with_path(params)):
            raise ConfigError(
                f"{layer}: the C3 connection map needs a conv whose kernel ends in "
                f"(in, out) = {mask.shape}, got variables "
                f"{jax.tree.map(lambda v: tuple(v.shape), params)}"
            )
        compact = jax.tree_util.tree_map_with_path(
            lambda p, v: v[..., rows, cols] if is_masked(p, v) else v, params
        )
        return {**variables, "params": compact}

    def to_full(variables):
        params = variables.get("params")
        if not params:
            return variables

        def expand(path, leaf):
            if getattr(path[-1], "key", None) != "kernel" or leaf.shape[-1] != len(rows):
                return leaf
            full = jnp.zeros((*leaf.shape[:-1], *mask.shape), leaf.dtype)
            return full.at[..., rows, cols].set(leaf)

        return {**variables, "params": jax.tree_util.tree_map_with_path(expand, params)}

    return to_full, to_compact


class LeNet5(nn.Module):
    """LeNet-5. Input `(N, 32, 32, C)` NHWC -> `(logits (N, num_classes), intermediates)`.

    Intermediates: "stem" C1 `(N, 28, 28, 6)`, "stage1" S2 `(N, 14, 14, 6)`, "stage2" S4
    `(N, 5, 5, 16)`, "stage3" C5 `(N, 1, 1, 120)`, "pre_logits" F6 `(N, 84)`.

    Attributes:
      num_classes: output units.
      act: activation after every conv and hidden dense layer (the 1998 paper: `scaled_tanh`;
        today: ReLU).
      pool: subsampling function `(x) -> x` (average pooling in 1998, max pooling today).
      conv: convolution constructor, called as `conv(features=, kernel_size=, padding=)`.
      c3_connections: "full" (every S2 map feeds every C3 map) or "lecun1998" (Table I: 60 of
        the 96 pairs, 1,516 C3 parameters instead of 2,416).
    """

    num_classes: int = 10
    act: Callable[[jnp.ndarray], jnp.ndarray] = nn.relu
    pool: Callable[[jnp.ndarray], jnp.ndarray] = max_pool2d
    conv: ModuleDef = Conv2d
    c3_connections: str = "full"

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False):
        del train  # no batch statistics or dropout
        if self.c3_connections not in C3_CONNECTIONS:
            raise ConfigError(
                unknown_choice("LeNet-5 c3_connections", self.c3_connections, C3_CONNECTIONS)
            )
        c1 = self.act(self.conv(features=6, kernel_size=5, padding="valid", name="c1")(x))
        s2 = self.pool(c1)
        c3_conv = self.conv
        if self.c3_connections == "lecun1998":
            if s2.shape[-1] != 6:
                raise ConfigError(f"the C3 connection map needs 6 S2 maps, got {s2.shape[-1]}")
            to_full, to_compact = _connection_map_transforms(c3_connection_mask(), "c3")
            # init=True only while initializing: in apply, Flax would otherwise run the conv on
            # the stored compact kernel whenever any collection (e.g. batch_stats) is mutable.
            c3_conv = nn.map_variables(
                self.conv,
                "params",
                trans_in_fn=to_full,
                trans_out_fn=to_compact,
                init=self.is_initializing(),
            )
        c3 = self.act(c3_conv(features=16, kernel_size=5, padding="valid", name="c3")(s2))
        s4 = self.pool(c3)
        c5 = self.act(self.conv(features=120, kernel_size=5, padding="valid", name="c5")(s4))
        f6 = self.act(nn.Dense(84, name="f6")(c5.reshape(c5.shape[0], -1)))
        logits = nn.Dense(self.num_classes, name="output")(f6)
        return logits, {"stem": c1, "stage1": s2, "stage2": s4, "stage3": c5, "pre_logits": f6}


class LeNetMLP(nn.Module):
    """Fully connected network on flattened images: `(N, H, W, C) -> (N, num_classes)`.

    Intermediates: "stem" is the first hidden layer, "stage1", "stage2", ... the following ones
    and "pre_logits" the last hidden layer, each `(N, width)`.

    Attributes:
      num_classes: output units.
      hidden: widths of the hidden layers (LeNet-300-100: `(300, 100)`).
      act: activation of the hidden layers.
      dense: dense layer constructor, called as `dense(features, name=)`.
    """

    num_classes: int = 10
    hidden: Sequence[int] = (300, 100)
    act: Callable[[jnp.ndarray], jnp.ndarray] = nn.relu
    dense: ModuleDef = nn.Dense

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False):
        del train
        if not self.hidden or any(not isinstance(w, int) or w < 1 for w in self.hidden):
            raise ConfigError(f"hidden widths must be positive ints, got {self.hidden!r}")
        y = x.reshape(x.shape[0], -1)
        intermediates = {}
        for i, width in enumerate(self.hidden):
            y = self.act(self.dense(width, name=f"fc{i + 1}")(y))
            intermediates["stem" if i == 0 else f"stage{i}"] = y
        intermediates["pre_logits"] = y
        return self.dense(self.num_classes, name="output")(y), intermediates


class LeNetCaffe(nn.Module):
    """Caffe's MNIST "LeNet", the network Han et al. 2015/2016 call LeNet-5: `(N, 28, 28, C)`.

    conv1 20@5x5 - max pool 2 - conv2 50@5x5 - max pool 2 - ip1 500 + ReLU - ip2, with no
    activation after the convolutions (as in Caffe's `lenet_train_test.prototxt`): 431,080
    parameters, 0.5K / 25K / 400K / 5K in the four layers of Han et al.'s Table 2.

    Intermediates: "stem" pool1 `(N, 12, 12, 20)`, "stage1" pool2 `(N, 4, 4, 50)`, "pre_logits"
    ip1 `(N, 500)`.

    Attributes:
      num_classes: output units.
      features: output channels of the two convolutions (fields so that channel-pruned models
        shrink into a smaller model of the same family).
      hidden: width of ip1.
      conv_act: activation after each convolution (Caffe: none).
      act: activation after ip1.
      conv: convolution constructor.
    """

    num_classes: int = 10
    features: Sequence[int] = (20, 50)
    hidden: int = 500
    conv_act: Callable[[jnp.ndarray], jnp.ndarray] | None = None
    act: Callable[[jnp.ndarray], jnp.ndarray] = nn.relu
    conv: ModuleDef = Conv2d

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False):
        del train
        if len(self.features) != 2 or any(not isinstance(f, int) or f < 1 for f in self.features):
            raise ConfigError(f"features must be two positive ints, got {self.features!r}")
        if not isinstance(self.hidden, int) or self.hidden < 1:
            raise ConfigError(f"hidden must be a positive int, got {self.hidden!r}")
        conv_act = self.conv_act or (lambda y: y)
        y = x
        intermediates = {}
        for i, features in enumerate(self.features):
            y = self.conv(features=features, kernel_size=5, padding="valid", name=f"conv{i + 1}")(y)
            y = max_pool2d(conv_act(y))
            intermediates["stem" if i == 0 else f"stage{i}"] = y
        y = self.act(nn.Dense(self.hidden, name="ip1")(y.reshape(y.shape[0], -1)))
        intermediates["pre_logits"] = y
        return nn.Dense(self.num_classes, name="ip2")(y), intermediates


# LeNet-5 reads a 32x32 frame (MNIST's 28x28 images padded by 2), the MLP the 28x28 images.
_PADDED_MNIST = (32, 32, 1)
_MNIST = (28, 28, 1)
# All four come from LeCun et al. 1998.
_register_lenet = functools.partial(register, paper="LeCun et al. 1998")
_register_lenet(
    "lenet5",
    LeNet5,
    input_shape=_PADDED_MNIST,
    description="LeNet-5, modern form: ReLU and 2x2 max pooling",
)
_register_lenet(
    "lenet5_classic",
    functools.partial(LeNet5, act=jnp.tanh, pool=avg_pool2d),
    input_shape=_PADDED_MNIST,
    description="LeNet-5 as in 1998: tanh and 2x2 average subsampling (full C3 connections)",
)
_register_lenet(
    "lenet5_1998",
    functools.partial(LeNet5, act=scaled_tanh, pool=avg_pool2d, c3_connections="lecun1998"),
    input_shape=_PADDED_MNIST,
    description="LeNet-5 closer to 1998: 1.7159 tanh(2x/3), average subsampling, the Table I "
    "C3 connection map (1,516 C3 parameters); dense output instead of the RBF layer",
)
_register_lenet(
    "lenet300_100",
    LeNetMLP,
    input_shape=_MNIST,
    description="LeNet-300-100: fully connected 784-300-100-10 with ReLU",
)
register(
    "lenet5_caffe",
    LeNetCaffe,
    input_shape=_MNIST,
    paper="Caffe's MNIST example (Jia et al. 2014), used as LeNet-5 by Han et al. 2015/2016",
    description="Caffe's 20-50-500 LeNet (431K parameters), Deep Compression's 'LeNet-5'",
)
