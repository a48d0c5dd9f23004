"""Integer post-training quantization (qwix), BatchNorm folding and fixed-point formats.

* `quantize_model`: uniform symmetric integer PTQ of every conv and dense layer through Google's
  `qwix` (int8 or int4 weights, per output channel, absmax-calibrated; the layers' inputs
  quantized to int8 at run time, qwix's dynamic-range mode for XLA). qwix's convolution needs
  equal weight and input widths, and XLA on CPU cannot run int4 convolutions, so int4 (and any
  weights-only quantization, `activation_bits=None`) is done here instead: every kernel
  rounded to its per-channel integer grid and stored dequantized. qwix intercepts
  `lax.conv_general_dilated` and `lax.dot_general` inside the model: a quantized kernel therefore
  always takes the portable XLA convolution (`cnnjax.layers.conv_ops.conv` sends it there), never
  the oneDNN fast path, whose custom call qwix cannot see.
* `fold_batch_norm`: a conv + BatchNorm pair as one conv in eval mode (Jacob et al. 2018's
  folding: `w' = w gamma / sigma`, `b' = beta + (b - mu) gamma / sigma`), so that the integer
  weights are the ones inference really multiplies by; the folded model is the same family with
  `norm=None`.
* `fixed_point` / `fixed_point_params`: signed Qm.n fixed point (`bits` in all, `fraction_bits`
  after the point; rounding to nearest, saturating), with a straight-through gradient, and the
  dynamic fixed point of every kernel with its own point position (Gysel et al.'s Ristretto).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.errors import ConfigError
from cnnjax.layers import conv_impl

WEIGHT_BITS = (8, 4)
_QTYPES = {8: jnp.int8, 4: jnp.int4}


def quantize_model(
    module,
    variables: Mapping[str, Any],
    input_shape,
    weight_bits: int = 8,
    activation_bits: int | None = 8,
    layers: str = ".*",
):
    """`(quantized module, its variables)`: integer PTQ of `module` by qwix.

    Args:
      module: a Linen model taking `(x, train)`.
      variables: its trained `{"params", "batch_stats"}`.
      input_shape: one example's shape (no batch axis), to trace the quantized model.
      weight_bits: 8 or 4 (4: weights only).
      activation_bits: 8 (with 8-bit weights: dynamic-range int8 inputs of every quantized
        layer) or None (weights only: the products run in float on the dequantized integers).
      layers: regex over module paths of the layers quantized (qwix's `module_path`).

    Returns:
      The quantized module (apply it like `module`) and variables whose kernels are qwix
      arrays of int values and float scales; BatchNorm statistics are carried over.
    """
    import qwix  # imported here: the rest of cnnjax.compress does not need it

    if weight_bits not in WEIGHT_BITS:
        raise ConfigError(f"weight_bits must be one of 8, 4, got {weight_bits!r}")
    if activation_bits not in (8, None) or (activation_bits == 8 and weight_bits != 8):
        raise ConfigError(
            f"activation_bits must be 8 with weight_bits 8 (qwix's convolutions quantize inputs "
            f"and weights alike, and XLA on CPU cannot run int4 convolutions) or None (weights "
            f"only), got activation_bits={activation_bits!r} with weight_bits={weight_bits}"
        )
    if activation_bits is None:
        return module, {**variables, "params": quantize_kernels(variables["params"], weight_bits)}
    rule = qwix.QuantizationRule(
        module_path=layers, weight_qtype=_QTYPES[weight_bits], act_qtype=_QTYPES[weight_bits]
    )
    quantized = qwix.quantize_model(module, qwix.PtqProvider([rule]))
    dummy = jnp.zeros((1, *input_shape), jnp.float32)
    # Traced on the XLA convolution: qwix learns which kernels to quantize from the calls it
    # intercepts, and it cannot see the oneDNN custom call.
    with conv_impl("xla", force=True):
        abstract = jax.eval_shape(lambda: quantized.init(jax.random.PRNGKey(0), dummy, train=False))
    params = qwix.quantize_params(
        jax.tree.map(jnp.asarray, variables["params"]), abstract["params"]
    )
    return quantized, {**variables, "params": params}


def quantize_kernels(params, bits: int):
    """Every kernel rounded to `bits`-bit symmetric integers per output channel (scale: the
    channel's largest magnitude over `2^(bits-1) - 1`) and stored dequantized, in float."""
    from cnnjax.compress.prune import is_prunable

    levels = 2 ** (bits - 1) - 1

    def convert(leaf):
        if not is_prunable(leaf):
            return leaf
        axes = tuple(range(leaf.ndim - 1))
        scale = jnp.max(jnp.abs(leaf), axis=axes, keepdims=True) / levels
        scale = jnp.where(scale > 0, scale, 1.0)
        return (jnp.clip(jnp.round(leaf / scale), -levels, levels) * scale).astype(leaf.dtype)

    return jax.tree.map(convert, params)


def fold_batch_norm(module, variables: Mapping[str, Any], epsilon: float = 1e-5):
    """`(fields, variables)` of the model with every conv + BatchNorm pair folded into one conv.

    Works on the families `cnnjax.compress.compact` knows (their conv -> BatchNorm pairs); a
    model without BatchNorm comes back unchanged. Exact in eval mode (running statistics).

    Returns:
      `({"norm": None}, folded variables)`, or `({}, variables)` when nothing was folded.
    """
    from cnnjax.compress.compact import links

    pairs = [(link.producer, link.norm) for link in links(module) if link.norm is not None]
    if not pairs:
        return {}, dict(variables)
    params = jax.tree.map(np.asarray, dict(variables["params"]))
    stats = jax.tree.map(np.asarray, dict(variables.get("batch_stats", {})))
    for conv, norm in pairs:
        kernel = params[conv]["kernel"].astype(np.float64)
        bias = params[conv].get("bias", np.zeros(kernel.shape[-1]))
        gamma = params[norm].get("scale", np.ones(kernel.shape[-1]))
        beta = params[norm].get("bias", np.zeros(kernel.shape[-1]))
        factor = gamma / np.sqrt(stats[norm]["var"].astype(np.float64) + epsilon)
        params[conv] = {
            "kernel": (kernel * factor).astype(np.float32),
            "bias": (beta + (bias - stats[norm]["mean"]) * factor).astype(np.float32),
        }
        del params[norm], stats[norm]
    return {"norm": None}, {"params": params, "batch_stats": stats}


@jax.custom_vjp
def _round_ste(x):
    return jnp.round(x)


def _round_fwd(x):
    return jnp.round(x), None


def _round_bwd(_, g):
    return (g,)  # straight through: rounding counts as the identity for the gradient


_round_ste.defvjp(_round_fwd, _round_bwd)


def fixed_point(x: jnp.ndarray, bits: int, fraction_bits: int) -> jnp.ndarray:
    """`x` in signed fixed point with `bits` bits, `fraction_bits` of them after the point.

    Representable values: `k / 2^fraction_bits` for integers `-2^(bits-1) <= k < 2^(bits-1)`;
    `x` is rounded to the nearest (half to even) and saturated. Gradient: straight through inside
    the range, zero where the value saturated.
    """
    if not (isinstance(bits, int) and 2 <= bits <= 32):
        raise ConfigError(f"fixed-point bits must be an integer in [2, 32], got {bits!r}")
    if not isinstance(fraction_bits, int):
        raise ConfigError(f"fraction_bits must be an integer, got {fraction_bits!r}")
    step = 2.0**-fraction_bits
    low, high = -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
    return jnp.clip(_round_ste(x / step), low, high) * step


def point_position(max_abs: float, bits: int) -> int:
    """Fraction bits of the finest signed `bits`-bit format whose range holds `max_abs`."""
    if max_abs <= 0:
        return bits - 1
    integer_bits = math.floor(math.log2(max_abs)) + 1  # bits left of the point (may be < 0)
    fraction = bits - 1 - integer_bits
    if (2 ** (bits - 1) - 1) * 2.0**-fraction < max_abs:  # e.g. exactly a power of two
        fraction -= 1
    return fraction


def fixed_point_params(params, bits: int) -> tuple[Any, dict[str, int]]:
    """Every kernel (leaf with more than one axis) in dynamic fixed point: `bits` bits with its
    own point position (`point_position` of its largest magnitude); biases and norms stay float.

    Returns:
      `(params, {kernel name: fraction bits})`.
    """
    from cnnjax.compress.prune import is_prunable, leaf_name

    positions = {}

    def convert(path, leaf):
        if not is_prunable(leaf):
            return leaf
        fraction = point_position(float(jnp.max(jnp.abs(leaf))), bits)
        positions[leaf_name(path)] = fraction
        return fixed_point(leaf, bits, fraction)

    return jax.tree_util.tree_map_with_path(convert, params), positions
