"""Analytic FLOPs (2 x MACs from `costs.py`) against XLA's own cost model.

XLA's `cost_analysis()["flops"]` of a program was probed on jax 0.10.2 (CPU backend) with
single ops; what it counts:

* convolution: 2 FLOPs per multiply-accumulate *of in-bounds taps only*. A VALID conv gives
  exactly 2 x MACs; a SAME 3x3 conv of 3 to 4 channels on 8x8 gives 11,616, not 2 x 6,912 =
  13,824, because taps that fall on the zero padding are skipped (22 of 24 taps per row and per
  column survive). The papers' convention, and `costs.py`'s, counts the padded taps, so SAME
  convs on small maps are where the two disagree (3x3 on 8x8 maps: -16%; on 32x32: -4%).
  Strides, dilations and groups are handled the same way (`unpadded_macs` reproduces XLA).
* dot_general: exactly 2 x M x N x K (dense layers, einsums, batched matmuls).
* elementwise: 1 FLOP per output element for add, subtract, multiply, divide, max (ReLU),
  compare; exp, log, tanh, sqrt, rsqrt count 0 FLOPs and 1 "transcendental" each (reported
  apart); `jax.nn.sigmoid` 3 FLOPs + 1 transcendental, `jax.nn.gelu` (tanh form) 8 + 1.
* reductions and pooling: `n - 1` per reduced output (sum of 35 values: 34); max pool 2x2: 3
  per output; average pool 2x2: 4 per output (3 adds and the divide).
* BatchNorm in eval mode: 3 per element (subtract mean, multiply, add bias) plus 2 per channel
  (`var + eps`, `scale x rsqrt`) and 1 transcendental per channel; softmax over `k` classes:
  about `4k` FLOPs and `k` transcendentals per row.

So XLA's total = 2 x unpadded MACs + elementwise/pooling/normalization work. The elementwise
part is 0.1-3% of the analytic count for VGG, ResNet, DenseNet and LeNet, 4-9% for MobileNet and
ConvNeXt (cheap depthwise convs next to full-size BN/LayerNorm and activations); the padding
deficit (up to 21% for vgg16_cifar's 2x2 maps) is what moves XLA below the analytic count.
`benchmarks/xla_flops_check.py` tabulates both parts for the whole zoo.

`Lowered.cost_analysis()` (the program as written, before XLA's optimization passes) matched
`Compiled.cost_analysis()` exactly for every single op above, and costs ~10 ms instead of a
compile (0.2 s for lenet5, 3 s for densenet_bc_100, far more for ImageNet models on a CPU). For
whole models the compiled count was never lower, and exceeds it in the elementwise part only: the
CPU compiler duplicates cheap producers (BN, ReLU, bias adds) into each fused consumer and
counts every copy (lenet5 +0.05%, resnet20 +1.3%, tcn1d +8.3% of the analytic FLOPs; capsnet,
nin_cifar, densenet_bc_100 +0.00%). The lowered count, what the program asks for, is the
default; `compiled=True` gives what the CPU executable runs.

XLA also drops computations whose results are unused, so the forward here returns the model's
whole output `(logits, intermediates)`: returning only the logits would hide capsnet's decoder
(2.8 MFLOPs) from XLA while `costs.py`, which reads the jaxpr, still counts it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax import models
from cnnjax.layers.backend import conv_impl
from cnnjax.models.counting import dot_macs, jaxpr_macs, sub_jaxprs


def _in_bounds_taps(
    size: int, out: int, window: int, stride: int, pad_lo: int, lhs_dil: int, rhs_dil: int
) -> int:
    """Number of (output position, kernel tap) pairs along one axis that read a real input."""
    index = (
        np.arange(out)[:, None] * stride - pad_lo + np.arange(window)[None, :] * rhs_dil
    )  # position in the (lhs-dilated) padded input
    inside = (index >= 0) & (index <= (size - 1) * lhs_dil) & (index % lhs_dil == 0)
    return int(inside.sum())


def _unpadded_conv(eqn) -> int:
    params, dims = eqn.params, eqn.params["dimension_numbers"]
    lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
    out = eqn.outvars[0].aval.shape
    taps = 1
    for i, (lhs_ax, rhs_ax, out_ax) in enumerate(
        zip(dims.lhs_spec[2:], dims.rhs_spec[2:], dims.out_spec[2:])
    ):
        taps *= _in_bounds_taps(
            lhs[lhs_ax],
            out[out_ax],
            rhs[rhs_ax],
            params["window_strides"][i],
            params["padding"][i][0],
            params["lhs_dilation"][i],
            params["rhs_dilation"][i],
        )
    # Every output element of a (batch, channel) pair reads in_features_per_group per tap.
    return out[dims.out_spec[0]] * out[dims.out_spec[1]] * rhs[dims.rhs_spec[1]] * taps


def unpadded_macs(jaxpr) -> int:
    """MACs of convs and matmuls counting only taps that read real input (XLA's convention)."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            total += _unpadded_conv(eqn)
        elif eqn.primitive.name == "dot_general":
            total += dot_macs(eqn)
        else:
            total += sum(unpadded_macs(inner) * n for inner, n in sub_jaxprs(eqn))
    return total


def xla_cost(fn: Callable[..., Any], *args: Any, compiled: bool = False) -> dict[str, float]:
    """XLA's cost analysis of `jax.jit(fn)(*args)`: "flops", "transcendentals", "bytes accessed".

    Args:
      fn: function of arrays; `args` may be `jax.ShapeDtypeStruct`s.
      compiled: analyse the optimized program (compiles: slow) instead of the lowered one.
    """
    with conv_impl("xla", force=True):  # XLA's own convolutions, which it can cost
        lowered = jax.jit(fn).lower(*args)
    cost = lowered.compile().cost_analysis() if compiled else lowered.cost_analysis()
    if isinstance(cost, list | tuple):  # older jax returned one dict per device
        cost = cost[0]
    keys = ("flops", "transcendentals", "bytes accessed")
    return {key: float(cost.get(key, 0.0)) for key in keys}


@dataclasses.dataclass(frozen=True)
class FlopsCheck:
    """Analytic and XLA FLOPs of one forward pass.

    Attributes:
      name: model (or function) name.
      batch: batch size.
      analytic_flops: 2 x MACs of `costs.count_macs` (padded taps counted).
      unpadded_flops: 2 x MACs without padded taps (XLA's conv convention).
      xla_flops: XLA `cost_analysis()["flops"]`.
      transcendentals: XLA's count of exp/log/rsqrt/... (not in `xla_flops`).
    """

    name: str
    batch: int
    analytic_flops: int
    unpadded_flops: int
    xla_flops: float
    transcendentals: float

    @property
    def rel_diff(self) -> float:
        """(XLA - analytic) / analytic."""
        return (self.xla_flops - self.analytic_flops) / self.analytic_flops

    @property
    def padding_flops(self) -> int:
        """FLOPs the analytic count spends on zero-padding taps (XLA skips them)."""
        return self.analytic_flops - self.unpadded_flops

    @property
    def other_flops(self) -> float:
        """What XLA counts beyond conv/dot: elementwise, BN, pooling, softmax."""
        return self.xla_flops - self.unpadded_flops


def check_fn(
    fn: Callable[..., Any], *args: Any, name: str = "fn", batch: int = 1, compiled: bool = False
) -> FlopsCheck:
    """`FlopsCheck` of an arbitrary function (e.g. a single conv) on arrays or shapes."""
    with conv_impl("xla", force=True):
        jaxpr = jax.make_jaxpr(fn)(*args)
    cost = xla_cost(fn, *args, compiled=compiled)
    return FlopsCheck(
        name=name,
        batch=batch,
        analytic_flops=2 * jaxpr_macs(jaxpr),
        unpadded_flops=2 * unpadded_macs(jaxpr),
        xla_flops=cost["flops"],
        transcendentals=cost["transcendentals"],
    )


def analytic_vs_xla(name: str, batch: int = 1, compiled: bool = False) -> FlopsCheck:
    """Eval-mode forward FLOPs of registry model `name` at `batch`: analytic vs XLA.

    Nothing is computed or allocated: the model is traced and lowered on abstract shapes.

    Args:
      name: registry model.
      batch: batch size (both counts scale linearly with it).
      compiled: use the compiled program's cost analysis (see the module docstring).

    Raises:
      ConfigError: for an unknown model name.
    """
    info = models.model_info(name)
    model = info.constructor()
    variables = info.abstract_variables()
    x = jax.ShapeDtypeStruct((batch, *info.input_shape), jnp.float32)

    def forward(v, images):
        # The whole output, so that XLA keeps every layer (see the module docstring).
        return model.apply(v, images, train=False)

    return check_fn(forward, variables, x, name=name, batch=batch, compiled=compiled)
