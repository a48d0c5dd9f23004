"""Pooling with learned, random or second-order statistics: stochastic, attention, bilinear.

* `stochastic_pool2d` / `StochasticPool2d`: Zeiler & Fergus 2013 ("Stochastic Pooling for
  Regularization of Deep Convolutional Neural Networks").
* `AttentionPool2d` / `GlobalAttentionPool`: a softmax-weighted average whose weights come
  from a learned 1x1 score (zero-initialized, so training starts from average pooling).
* `bilinear_pool` / `BilinearPool`: Lin et al. 2015 ("Bilinear CNN Models for Fine-grained
  Visual Recognition").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from cnnjax.errors import ConfigError, ShapeError
from cnnjax.layers.backend import layer_name
from cnnjax.layers.pooling import PoolWindow, plan_window
from cnnjax.layers.shapes import PaddingSpec

# Stochastic pooling samples from the collection the training step already feeds for dropout.
RNG_COLLECTION = "dropout"


def window_patches(x: jnp.ndarray, plan: PoolWindow, fill: float = 0.0) -> jnp.ndarray:
    """The values under every window: `(N, H, W, C) -> (N, H_out, W_out, k_h k_w, C)`.

    Window positions are ordered row-major (`a k_w + b` for tap `(a, b)`); padding is `fill`.
    """
    padded = jnp.pad(x, plan.pads, constant_values=fill)
    (_, kh, kw, _), (_, sh, sw, _), (_, dh, dw, _) = plan.dims, plan.strides, plan.dilation
    oh, ow = plan.out
    taps = [
        lax.slice(
            padded,
            (0, a * dh, b * dw, 0),
            (x.shape[0], a * dh + (oh - 1) * sh + 1, b * dw + (ow - 1) * sw + 1, x.shape[3]),
            (1, sh, sw, 1),
        )
        for a in range(kh)
        for b in range(kw)
    ]
    return jnp.stack(taps, axis=3)


def stochastic_pool2d(
    x: jnp.ndarray,
    window: int | Sequence[int] = 2,
    strides: int | Sequence[int] | None = None,
    key: jax.Array | None = None,
    train: bool = False,
    *,
    padding: PaddingSpec = "valid",
    layer: str = "stochastic_pool2d",
) -> jnp.ndarray:
    """Stochastic pooling (Zeiler & Fergus 2013).

    Each window's activations `a_i` define probabilities `p_i = a_i / sum_j a_j`. In training
    one activation per window (and channel) is sampled with probability `p_i`; at evaluation
    the output is the probability-weighted average `sum_i p_i a_i = sum_i a_i^2 / sum_j a_j`.
    A window whose activations are all zero gives 0.

    The probabilities need non-negative input: use it after a ReLU. Negative activations get
    probability 0 (as if clipped), and a window without a positive one gives 0.

    Args:
      x: `(N, H, W, C)`, non-negative.
      window: `k` or `(k_h, k_w)`.
      strides: `s` or `(s_h, s_w)`; None: the window.
      key: PRNG key, required when `train`.
      train: sample (True) or take the expectation (False).
      padding: zero padding (padded positions have probability 0).
      layer: name for error messages.

    Returns:
      `(N, H_out, W_out, C)`, sizes as in `max_pool2d`. Gradients flow to the sampled
      activation in training, and through the weighted average at evaluation.

    Raises:
      ConfigError: `train` without a `key`.
    """
    plan = plan_window(x, window, strides, padding, 1, False, layer)
    if train and key is None:
        raise ConfigError(f"{layer}: training mode samples and needs a PRNG key")
    patches = window_patches(x, plan)
    weights = jnp.maximum(patches, 0)
    total = jnp.sum(weights, axis=3)
    positive = total > 0
    if train:
        # log(0) = -inf gives zero probability; the sample is not differentiated.
        logits = jnp.log(lax.stop_gradient(weights))
        choice = jax.random.categorical(key, logits, axis=3)
        picked = jnp.take_along_axis(patches, choice[:, :, :, None, :], axis=3)[:, :, :, 0]
        return jnp.where(positive, picked, 0)
    # The inner where keeps the gradient finite in all-zero windows.
    weighted = jnp.sum(weights * patches, axis=3) / jnp.where(positive, total, 1)
    return jnp.where(positive, weighted, 0)


class StochasticPool2d(nn.Module):
    """Module form of `stochastic_pool2d`, with `nn.Dropout`'s conventions. No parameters.

    Samples unless `deterministic`; the key comes from the "dropout" RNG collection, which the
    training step (`cnnjax.train.steps`) already provides:
    `model.apply(variables, x, train=True, rngs={"dropout": key})`, with the model calling
    `StochasticPool2d()(x, deterministic=not train)`.

    Attributes:
      window, strides, padding: as in `stochastic_pool2d`.
      deterministic: take the expectation (eval) when True; may instead be passed to
        `__call__`.
      rng_collection: RNG collection of the samples.
    """

    window: int | Sequence[int] = 2
    strides: int | Sequence[int] | None = None
    padding: PaddingSpec = "valid"
    deterministic: bool | None = None
    rng_collection: str = RNG_COLLECTION

    def __call__(self, x: jnp.ndarray, deterministic: bool | None = None) -> jnp.ndarray:
        """`(N, H, W, C) -> (N, H_out, W_out, C)`: a sample, or the expectation if deterministic."""
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        key = None if deterministic else self.make_rng(self.rng_collection)
        return stochastic_pool2d(
            x,
            self.window,
            self.strides,
            key,
            not deterministic,
            padding=self.padding,
            layer=layer_name(self),
        )


def _scores(module: nn.Module, x: jnp.ndarray, init: Callable[..., Any]) -> jnp.ndarray:
    # A bias would cancel in the softmax, so the score is w . x_l alone: C parameters.
    weight = module.param("score", init, (x.shape[-1],))
    return jnp.sum(x * weight.astype(x.dtype), axis=-1)


class AttentionPool2d(nn.Module):
    """Attention pooling over windows: a softmax-weighted average within each window.

    A learned 1x1 score `e_l = w . x_l` is computed at every position; in each window the
    weights are `softmax(e)` over its positions and the output is `sum_l softmax(e)_l x_l` (the
    same weights for all channels). With `w = 0` (the default init) this is average pooling
    without counting padding; large scores approach max pooling of the scored feature.

    Attributes:
      window: `k` or `(k_h, k_w)`.
      strides: None: the window.
      padding: padded positions are excluded from the softmax.
      score_init: initializer of the `(C,)` score vector.

    Parameters: `C`.
    """

    window: int | Sequence[int] = 2
    strides: int | Sequence[int] | None = None
    padding: PaddingSpec = "valid"
    score_init: Callable[..., Any] = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """`(N, H, W, C) -> (N, H_out, W_out, C)`, sizes as in `max_pool2d`."""
        plan = plan_window(x, self.window, self.strides, self.padding, 1, False, layer_name(self))
        scores = _scores(self, x, self.score_init)[..., None]
        weights = jax.nn.softmax(window_patches(scores, plan, -jnp.inf), axis=3)
        return jnp.sum(weights * window_patches(x, plan), axis=3)


class GlobalAttentionPool(nn.Module):
    """Attention pooling over all positions: `(N, H, W, C) -> (N, C)`.

    `y = sum_l softmax_l(w . x_l) x_l`; global average pooling at the zero init.

    Attributes:
      score_init: initializer of the `(C,)` score vector.

    Parameters: `C`.
    """

    score_init: Callable[..., Any] = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """Softmax-weighted average of the positions."""
        if x.ndim != 4:
            raise ShapeError(
                f"{layer_name(self)}: expected NHWC input with 4 dims, got shape {x.shape}"
            )
        weights = jax.nn.softmax(_scores(self, x, self.score_init), axis=(1, 2))
        return jnp.sum(weights[..., None] * x, axis=(1, 2))


def bilinear_pool(
    x: jnp.ndarray,
    y: jnp.ndarray | None = None,
    eps: float = 1e-10,
    precision: Any = None,
    *,
    layer: str = "bilinear_pool",
) -> jnp.ndarray:
    """Bilinear pooling (Lin et al. 2015): averaged outer products, signed sqrt, L2 norm.

        B = (1 / HW) sum_l x_l y_lᵀ             (C1 x C2, flattened row-major: c1 C2 + c2)
        z = sign(B) sqrt(|B| + eps)
        out = z / max(||z||_2, eps)

    `eps` keeps the square root's gradient finite near 0 (at most `1 / (2 sqrt(eps))`, and
    exactly 0 at `B = 0` where the sign vanishes) and the normalization defined for an all-zero
    map; it shifts nonzero entries by at most `sqrt(eps)` (1e-5) before normalization.

    Args:
      x: `(N, H, W, C1)`.
      y: `(N, H, W, C2)` from a second stream; None: `x` itself (symmetric B-CNN).
      eps: stabilizer, see above.
      precision: `lax.Precision` of the outer-product contraction.
      layer: name for error messages.

    Returns:
      `(N, C1 * C2)` with unit L2 norm (0 for an all-zero input).
    """
    y = x if y is None else y
    if x.ndim != 4 or y.ndim != 4 or x.shape[:3] != y.shape[:3]:
        raise ShapeError(
            f"{layer}: expected NHWC inputs with the same batch and spatial sizes, got shapes "
            f"{x.shape} and {y.shape}"
        )
    n, h, w = x.shape[:3]
    outer = jnp.einsum("nhwc,nhwd->ncd", x, y, precision=precision) / (h * w)
    z = jnp.sign(outer) * jnp.sqrt(jnp.abs(outer) + eps)
    z = z.reshape(n, -1)
    norm = jnp.sqrt(jnp.maximum(jnp.sum(z * z, axis=-1, keepdims=True), eps * eps))
    return z / norm


class BilinearPool(nn.Module):
    """Module form of `bilinear_pool`: `(x, y=None) -> (N, C1 * C2)`. No parameters."""

    eps: float = 1e-10
    precision: Any = None

    def __call__(self, x: jnp.ndarray, y: jnp.ndarray | None = None) -> jnp.ndarray:
        """Normalized bilinear features of `x` (and `y`)."""
        return bilinear_pool(x, y, self.eps, self.precision, layer=layer_name(self))
