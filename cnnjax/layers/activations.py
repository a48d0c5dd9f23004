"""Activations whose backward pass keeps one array instead of autodiff's several.

`jax.nn.gelu` differentiated by JAX keeps several activation-sized intermediates of its
derivative (for the erf form: `exp`, `erfc` and a copy of the input), which in ConvNeXt's
4x-wide MLP are most of a training step's saved activations. `gelu` computes the same values
with a custom JVP whose linearization saves only the slope `gelu'(x)`: one array, like
PyTorch's GELU (which keeps its input).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

_TANH_CUBIC = 0.044715  # the tanh approximation's cubic coefficient (Hendrycks & Gimpel 2016)


def gelu_slope(x: jnp.ndarray, approximate: bool = False) -> jnp.ndarray:
    """The derivative of GELU at `x`, for the erf form or its tanh approximation."""
    if approximate:
        k = math.sqrt(2.0 / math.pi)
        t = jnp.tanh(k * (x + _TANH_CUBIC * x**3))
        return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * _TANH_CUBIC * x * x)
    cdf = 0.5 * lax.erfc(-x / math.sqrt(2.0))
    return cdf + x * jnp.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def gelu(x: jnp.ndarray, approximate: bool = False) -> jnp.ndarray:
    """GELU `x * Phi(x)` (Hendrycks & Gimpel 2016), exactly `jax.nn.gelu`'s values.

    Args:
      x: any shape.
      approximate: the tanh approximation (Flax's and `jax.nn.gelu`'s default) instead of the
        erf form (PyTorch's `nn.GELU()` default, ConvNeXt's). Note the default here is the
        erf form.

    Returns:
      The shape and dtype of `x`.
    """
    return jax.nn.gelu(x, approximate=approximate)


@gelu.defjvp
def _gelu_jvp(approximate, primals, tangents):
    (x,), (dx,) = primals, tangents
    return gelu(x, approximate), dx * gelu_slope(x, approximate)
