"""CapsNet of Sabour, Frosst & Hinton 2017 ("Dynamic routing between capsules"), MNIST.

A capsule is a vector whose length is the probability that an entity exists and whose
orientation encodes its pose. On a `28x28x1` digit the network is:

  * Conv1: 256 filters 9x9, stride 1, ReLU, no padding: `20x20x256` (20,992 parameters).
  * PrimaryCaps: a 9x9 stride-2 conv with `32 x 8` channels, no padding: `6x6x256`, read as 32
    capsule types of 8D capsules at each of the 6x6 positions, i.e. 1,152 capsules, each squashed
    (5,308,672 parameters).
  * DigitCaps: one 16D capsule per class. Each primary capsule `u_i` predicts every class
    capsule through its own `8x16` matrix, `u_hat_j|i = W_ij u_i` (1152 x 10 x 8 x 16 =
    1,474,560 weights, no bias), and 3 iterations of routing-by-agreement combine the
    predictions into `v_j` (`dynamic_routing`).
  * The lengths `|v_j|` are the class scores, trained with the margin loss (Eq. 4).
  * Decoder: the class capsules with all but one masked out (the true class in training, the
    longest at test time) go through dense 512 ReLU, 1024 ReLU, 784 sigmoid layers to reconstruct
    the image; the sum of squared errors, scaled by 0.0005, is added to the margin loss as a
    regularizer (82,432 + 525,312 + 803,600 parameters).

8,215,568 parameters in all, the paper's "8.2M", and 6,804,224 without the decoder ("6.8M").
Table 1: 0.25% MNIST test error with 3 routing iterations and the reconstruction loss (inputs
shifted by up to 2 pixels, no other augmentation).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.errors import ConfigError, ShapeError
from cnnjax.layers import Conv2d
from cnnjax.models.registry import register

__all__ = [
    "RECONSTRUCTION_WEIGHT",
    "CapsNet",
    "capsule_length",
    "dynamic_routing",
    "margin_loss",
    "reconstruction_loss",
    "squash",
]

ModuleDef = Any

RECONSTRUCTION_WEIGHT = 0.0005  # Sec. 4.1: keeps the decoder from dominating the margin loss


def squash(s: jnp.ndarray, axis: int = -1, eps: float = 1e-7) -> jnp.ndarray:
    """The capsule nonlinearity (Eq. 1): `v = |s|^2 / (1 + |s|^2) * s / |s|`.

    Short vectors shrink to almost zero length, long ones to just below 1; the direction is kept.

    Args:
      s: capsule inputs, the capsule dimension along `axis`.
      axis: the capsule dimension.
      eps: added under the square root of `|s|`, so that `s = 0` gives `v = 0` with a finite
        (zero) gradient instead of 0/0; it shortens `v` by a relative `eps / (2|s|^2)`.

    Returns:
      `v`, same shape as `s`, with `|v| < 1`.
    """
    squared = jnp.sum(jnp.square(s), axis=axis, keepdims=True)
    return s * (squared / (1.0 + squared) / jnp.sqrt(squared + eps))


def capsule_length(v: jnp.ndarray, axis: int = -1) -> jnp.ndarray:
    """`|v|` along `axis`, with a zero (not NaN) gradient at `v = 0`."""
    squared = jnp.sum(jnp.square(v), axis=axis)
    positive = squared > 0
    # sqrt has an infinite derivative at 0: route zeros through sqrt(1) and select 0 afterwards.
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def dynamic_routing(
    u_hat: jnp.ndarray, num_iterations: int = 3, stop_gradient: bool = False
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Routing-by-agreement (Procedure 1 of the paper).

    The routing logits `b_ij` start at 0 for every example. Each iteration sets the coupling
    coefficients `c_ij = softmax_j(b_ij)` (each child capsule `i` distributes itself over the
    parent capsules `j`), `s_j = sum_i c_ij u_hat_j|i`, `v_j = squash(s_j)`, and raises `b_ij` by
    the agreement `<u_hat_j|i, v_j>`. The update after the last iteration is skipped: nothing
    reads it.

    Args:
      u_hat: predictions `(B, num_in, num_out, dim_out)` of the child capsules for the parents.
      num_iterations: routing iterations (>= 1); 1 averages the predictions with uniform `c`.
      stop_gradient: False (the paper: routing is part of the forward pass and gradients flow
        through every iteration, coupling coefficients included). True: the non-final iterations
        see `stop_gradient(u_hat)`, so the coefficients act as constants in backpropagation and
        gradients reach `u_hat` only through the final `s_j` (a common implementation choice: it
        is cheaper and avoids differentiating through the iterated softmax). The forward values
        are identical.

    Returns:
      `(v, c)`: parent capsules `(B, num_out, dim_out)` and the coupling coefficients
      `(B, num_in, num_out)` of the final iteration (they sum to 1 over `num_out`).
    """
    if num_iterations < 1:
        raise ConfigError(f"routing needs at least 1 iteration, got {num_iterations}")
    if u_hat.ndim != 4:
        raise ShapeError(
            f"dynamic_routing expects u_hat of shape (B, num_in, num_out, dim_out), "
            f"got {u_hat.shape}"
        )
    b = None  # routing logits, all zero at first
    detached = jax.lax.stop_gradient(u_hat) if stop_gradient else u_hat
    for iteration in range(num_iterations):
        last = iteration == num_iterations - 1
        u = u_hat if last else detached
        # softmax of zeros is uniform; written as such, XLA need not constant-fold a softmax
        # over the whole (B, num_in, num_out) array (seconds of compile time at batch 500).
        c = (
            jnp.full(u_hat.shape[:3], 1.0 / u_hat.shape[2], u_hat.dtype)
            if b is None
            else jax.nn.softmax(b, axis=-1)
        )
        v = squash(jnp.einsum("bij,bijd->bjd", c, u))
        if not last:
            agreement = jnp.einsum("bijd,bjd->bij", u, v)
            b = agreement if b is None else b + agreement
    return v, c


def margin_loss(
    lengths: jnp.ndarray,
    labels: jnp.ndarray,
    m_plus: float = 0.9,
    m_minus: float = 0.1,
    down_weight: float = 0.5,
) -> jnp.ndarray:
    """Margin loss (Eq. 4) summed over classes.

    `L_k = T_k max(0, m+ - |v_k|)^2 + lambda (1 - T_k) max(0, |v_k| - m-)^2`, with `T_k = 1` for
    the true class. `lambda` down-weights absent classes so that learning does not shrink every
    capsule at the start.

    Args:
      lengths: capsule lengths `(B, K)`.
      labels: class indices `(B,)` or targets `T` `(B, K)` (one-hot, or multi-hot for several
        digits).
      m_plus, m_minus: the length a present class must exceed, an absent one stay below.
      down_weight: `lambda`, the weight of the absent classes' term.

    Returns:
      Per-example losses `(B,)`.
    """
    targets = labels if labels.ndim == lengths.ndim else jax.nn.one_hot(labels, lengths.shape[-1])
    present = targets * jnp.square(jnp.maximum(0.0, m_plus - lengths))
    absent = down_weight * (1.0 - targets) * jnp.square(jnp.maximum(0.0, lengths - m_minus))
    return jnp.sum(present + absent, axis=-1)


def reconstruction_loss(reconstruction: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
    """Per-example sum of squared errors `(B,)` (add it scaled by `RECONSTRUCTION_WEIGHT`).

    Args:
      reconstruction: decoder output `(B, ...)`.
      target: images with as many values per example, e.g. `(B, H, W, C)` in [0, 1].
    """
    batch = reconstruction.shape[0]
    diff = reconstruction.reshape(batch, -1) - target.reshape(batch, -1)
    return jnp.sum(jnp.square(diff), axis=-1)


class CapsNet(nn.Module):
    """CapsNet. Input `(N, H, W, C)` -> `(lengths (N, num_classes), intermediates)`.

    The first output holds capsule lengths: probabilities in [0, 1] (argmax gives the
    prediction), not unnormalized logits; train them with `margin_loss`, not softmax
    cross-entropy. `intermediates` has "stem" (Conv1 output), "stage1" (PrimaryCaps conv map),
    "primary_caps" `(N, P, primary_dim)`, "class_caps" = "pre_logits" `(N, K, class_dim)`,
    "routing" (coupling coefficients `(N, P, K)`) and, with `reconstruct`, "reconstruction"
    `(N, H, W, C)`, where `P = H' * W' * primary_channels` (1,152 on 28x28).

    Attributes:
      num_classes: class capsules `K`.
      conv: convolution constructor (called with features, kernel_size, strides, padding).
      act: activation of Conv1 and of the decoder's hidden layers.
      conv1_features, conv1_kernel: Conv1's filters and kernel size (valid padding, stride 1).
      primary_channels: capsule types of PrimaryCaps (the paper's 32 "channels").
      primary_dim: dimension of a primary capsule.
      primary_kernel, primary_stride: PrimaryCaps conv kernel and stride (valid padding).
      class_dim: dimension of a class capsule.
      routing_iterations: iterations of `dynamic_routing`.
      routing_stop_gradient: see `dynamic_routing` (False: the paper).
      caps_init: initializer of the `(P, K, primary_dim, class_dim)` transformation matrices.
      decoder_features: hidden widths of the reconstruction decoder.
      reconstruct: build the decoder (False drops its parameters and the "reconstruction").
    """

    num_classes: int = 10
    conv: ModuleDef = Conv2d
    act: Callable = nn.relu
    conv1_features: int = 256
    conv1_kernel: int = 9
    primary_channels: int = 32
    primary_dim: int = 8
    primary_kernel: int = 9
    primary_stride: int = 2
    class_dim: int = 16
    routing_iterations: int = 3
    routing_stop_gradient: bool = False
    # The paper gives no initializer; 0.1 puts initial lengths mid-range on 28x28 (not saturated).
    caps_init: Callable = nn.initializers.normal(stddev=0.1)
    decoder_features: Sequence[int] = (512, 1024)
    reconstruct: bool = True

    def _check_fields(self) -> None:
        for name in (
            "num_classes",
            "conv1_features",
            "conv1_kernel",
            "primary_channels",
            "primary_dim",
            "primary_kernel",
            "primary_stride",
            "class_dim",
            "routing_iterations",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"CapsNet {name} must be a positive integer, got {value!r}")
        if any(not isinstance(f, int) or f < 1 for f in self.decoder_features):
            raise ConfigError(
                f"CapsNet decoder_features must be positive integers, got {self.decoder_features}"
            )

    def _check_input(self, x: jnp.ndarray) -> None:
        if x.ndim != 4:
            raise ShapeError(f"CapsNet expects NHWC images (4 dims), got shape {x.shape}")
        # Both convs are unpadded: the input must cover Conv1's kernel plus PrimaryCaps' kernel.
        minimum = self.conv1_kernel + self.primary_kernel - 1
        height, width = x.shape[1:3]
        if min(height, width) < minimum:
            raise ShapeError(
                f"CapsNet input {height}x{width} is too small for the unpadded {self.conv1_kernel}"
                f"x{self.conv1_kernel} Conv1 and {self.primary_kernel}x{self.primary_kernel} "
                f"PrimaryCaps convs: the minimum is {minimum}x{minimum}"
            )

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False, labels: jnp.ndarray | None = None):
        """Forward pass.

        Args:
          x: images `(N, H, W, C)`; the decoder's sigmoid output suits targets in [0, 1].
          train: accepted for the common model interface; CapsNet has no dropout or batch norm,
            so it changes nothing.
          labels: class indices `(N,)` or one-hot `(N, K)` selecting the capsule the decoder
            sees (the paper trains with the true label). None: the longest capsule.

        Returns:
          `(lengths (N, K), intermediates)`.
        """
        del train
        self._check_fields()
        self._check_input(x)
        stem = self.act(
            self.conv(
                features=self.conv1_features,
                kernel_size=self.conv1_kernel,
                padding="valid",
                name="conv1",
            )(x)
        )
        maps = self.conv(
            features=self.primary_channels * self.primary_dim,
            kernel_size=self.primary_kernel,
            strides=self.primary_stride,
            padding="valid",
            name="primary_caps",
        )(stem)
        # Channels [t*d, (t+1)*d) at one position form the capsule of type t; no ReLU before the
        # squash, which is PrimaryCaps' only nonlinearity.
        primary = squash(maps.reshape(x.shape[0], -1, self.primary_dim))
        weights = self.param(
            "class_caps_kernel",
            self.caps_init,
            (primary.shape[1], self.num_classes, self.primary_dim, self.class_dim),
            x.dtype,
        )
        u_hat = jnp.einsum("nid,ikde->nike", primary, weights)
        class_caps, coupling = dynamic_routing(
            u_hat, self.routing_iterations, self.routing_stop_gradient
        )
        lengths = capsule_length(class_caps)
        intermediates = {
            "stem": stem,
            "stage1": maps,
            "primary_caps": primary,
            "class_caps": class_caps,
            "routing": coupling,
            "pre_logits": class_caps,
        }
        if self.reconstruct:
            intermediates["reconstruction"] = self._decode(x, class_caps, lengths, labels)
        return lengths, intermediates

    def _decode(self, x, class_caps, lengths, labels) -> jnp.ndarray:
        """Reconstructs `x` from the class capsule chosen by `labels` (else the longest)."""
        if labels is None:
            mask = jax.nn.one_hot(jnp.argmax(lengths, axis=-1), self.num_classes)
        elif labels.shape == lengths.shape:
            mask = labels.astype(class_caps.dtype)
        elif labels.shape == lengths.shape[:1]:
            mask = jax.nn.one_hot(labels, self.num_classes, dtype=class_caps.dtype)
        else:
            raise ShapeError(
                f"CapsNet labels must be class indices {lengths.shape[:1]} or one-hot "
                f"{lengths.shape}, got shape {labels.shape}"
            )
        # Masking keeps the pose of one capsule only: the decoder must read the class from
        # which 16 of the 160 inputs are non-zero and the instantiation from their values.
        y = (class_caps * mask[..., None]).reshape(x.shape[0], -1)
        for i, features in enumerate(self.decoder_features):
            y = self.act(nn.Dense(features, name=f"decoder{i + 1}")(y))
        out = nn.Dense(x[0].size, name=f"decoder{len(self.decoder_features) + 1}")(y)
        return nn.sigmoid(out).reshape(x.shape)


register(
    "capsnet",
    functools.partial(CapsNet),
    input_shape=(28, 28, 1),
    paper="Sabour et al. 2017 (MNIST test error 0.25% with 3 routing iterations + reconstruction)",
    description="CapsNet: Conv1, 1152 primary capsules, 3 routing iterations, decoder",
    loss="capsule",
)
