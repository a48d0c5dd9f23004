"""Normalization layers over channels-last (NHWC) activations; dropout is in `dropout.py`.

Every layer is a pure function (testable against numpy or `torch.nn.functional`) plus a Linen
module or a `functools.partial` of Flax's module with PyTorch's defaults.

Running variance, Flax versus PyTorch. Both normalise a training batch with its *biased* variance
`v_b = mean((x - mean(x))^2)` over the `m = N*H*W` values of a channel, and both update the
running averages as `running = 0.9 * running + 0.1 * batch` (Flax `momentum=0.9` is PyTorch
`momentum=0.1`). They differ in which batch variance enters the running average:

* `flax.linen.BatchNorm` (and `BatchNorm` below, by default) stores the biased `v_b`;
* `torch.nn.BatchNorm2d` (and `TorchBatchNorm`) stores the unbiased `v_b * m / (m - 1)`.

After one step from `var = 1` the two running variances differ by `0.1 * v_b / (m - 1)`, and
after many steps by a relative `1 / (m - 1)`: 8e-6 for a 32x32 CIFAR map with batch 128 (far below
float32 training noise), but 3% for a batch of 32 feature vectors or 1% for a 7x7 map with
batch 2. Only the eval-mode output is affected; train-mode outputs are identical. Both modules
use Flax's variable names (`params/scale`, `params/bias`, `batch_stats/mean`, `batch_stats/var`),
so a checkpoint, a `flax.linen.BatchNorm` model's variables or a set of torchvision weights load
into either.

Backward pass. In training mode `batch_norm` differentiates with the closed form
`dx = gamma / sigma * (dy - mean(dy) - x_hat * mean(dy * x_hat))` (a custom VJP): two reductions
that read `dy` and `x` once, then one element-wise pass. JAX's own derivative of the two-pass
mean/variance graph takes about twice as many passes over the activations, and on CPU batch
norm's memory traffic costs as much as the convolutions of a small CIFAR network. Under
`conv_impl("xla", force=True)` (see `cnnjax.layers.backend`) JAX's rules are used instead,
which forward-mode differentiation (`jax.jvp`) needs.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cnnjax.errors import ConfigError, ShapeError
from cnnjax.layers.backend import portable_autodiff

Initializer = Callable[..., Any]

# Flax's own module with PyTorch's momentum and epsilon: the reference `BatchNorm` is tested
# against (same variables, same running averages).
FlaxBatchNorm = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5)

# ConvNeXt's channels-last LayerNorm (Liu et al. 2022): statistics over C only, eps 1e-6. The
# two-pass variance is what `F.layer_norm` computes; Flax's default E[x^2] - E[x]^2 loses digits
# when |mean| >> std.
LayerNorm = functools.partial(nn.LayerNorm, epsilon=1e-6, use_fast_variance=False)


def _stat_dtype(x: jnp.ndarray) -> Any:
    # Statistics in at least float32 so bfloat16 activations keep their normalisation accurate.
    return jnp.promote_types(x.dtype, jnp.float32)


def _check_momentum_epsilon(momentum: float, epsilon: float) -> None:
    if not 0.0 <= momentum <= 1.0:
        raise ConfigError(
            f"batch norm momentum must be in [0, 1] (Flax convention: the weight kept from the "
            f"old running average; PyTorch's momentum=0.1 is 0.9 here), got {momentum}"
        )
    if not epsilon > 0.0:
        raise ConfigError(f"normalization epsilon must be > 0, got {epsilon}")


# One-pass moments lose about `eps * (mean / std)^2` of the variance to cancellation; past this
# ratio of mean^2 to variance (|mean| > 10 std, a relative error near 1e-5) the batch is measured
# again with the two-pass formula.
_ONE_PASS_LIMIT = 100.0


def _centered_variance(xs, mean):
    return jnp.square(xs - mean).mean(tuple(range(xs.ndim - 1)))


def _moments(xs):
    """Batch mean, biased variance per channel of `(..., C)`, and whether two passes were needed.

    One pass (`E[x^2] - E[x]^2`): both sums read `xs` once, without the per-channel broadcast
    that keeps XLA:CPU's two-pass reduction about 2x slower. Where that formula is ill-conditioned
    (see `_ONE_PASS_LIMIT`) the stable two-pass variance is computed instead, under `lax.cond`,
    so the common case never pays for it.
    """
    axes = tuple(range(xs.ndim - 1))
    mean = xs.mean(axes)
    var = jnp.maximum(jnp.square(xs).mean(axes) - jnp.square(mean), 0.0)
    ill_conditioned = jnp.any(jnp.square(mean) > _ONE_PASS_LIMIT * var)
    var = lax.cond(ill_conditioned, lambda: _centered_variance(xs, mean), lambda: var)
    return mean, var, ill_conditioned


def _normalize_forward(xs, scale, bias, epsilon):
    mean, var, two_pass = _moments(xs)
    inv_std = lax.rsqrt(var + epsilon)
    # `x * gain + shift` rather than `(x - mean) * gain + bias`: no centered copy of the
    # activations for XLA to share between passes (and so write out).
    gain = inv_std * scale
    return xs * gain + (bias - mean * gain), mean, var, inv_std, two_pass


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _normalize_train(xs, scale, bias, epsilon):
    """`(y, batch mean, biased batch variance)` of `xs` `(..., C)` with gain and shift `(C,)`."""
    return _normalize_forward(xs, scale, bias, epsilon)[:3]


def _normalize_train_fwd(xs, scale, bias, epsilon):
    y, mean, var, inv_std, two_pass = _normalize_forward(xs, scale, bias, epsilon)
    return (y, mean, var), (xs, mean, inv_std, scale, two_pass)


def _normalize_train_bwd(epsilon, residuals, cotangents):
    xs, mean, inv_std, scale, two_pass = residuals
    dy, dmean, dvar = cotangents  # dmean, dvar: zero unless the statistics feed the loss
    axes = tuple(range(xs.ndim - 1))
    count = math.prod(xs.shape[:-1])
    dbias = dy.sum(axes)
    # sum(dy * x_hat) from plain sums (no per-channel broadcast inside the reduction, see
    # `_moments`), unless the batch needed two passes there: the cancellation error is about
    # eps |mean| / std.
    dscale = lax.cond(
        two_pass,
        lambda: (dy * (xs * inv_std - mean * inv_std)).sum(axes),
        lambda: ((dy * xs).sum(axes) - mean * dbias) * inv_std,
    )
    # dx = k (count dy - dbias - x_hat dscale), x_hat = (x - mean) inv_std, written in `xs` so that
    # no centered copy of the activations is materialized.
    k = scale * inv_std / count
    slope = k * inv_std * dscale - 2.0 / count * dvar
    dx = (k * count) * dy - xs * slope + (mean * slope - k * dbias + dmean / count)
    return dx, dscale, dbias


_normalize_train.defvjp(_normalize_train_fwd, _normalize_train_bwd)


def _one(scale, xs):
    return jnp.ones(xs.shape[-1:], xs.dtype) if scale is None else scale.astype(xs.dtype)


def _zero(bias, xs):
    return jnp.zeros(xs.shape[-1:], xs.dtype) if bias is None else bias.astype(xs.dtype)


def batch_norm(
    x: jnp.ndarray,
    running_mean: jnp.ndarray,
    running_var: jnp.ndarray,
    scale: jnp.ndarray | None = None,
    bias: jnp.ndarray | None = None,
    *,
    train: bool,
    momentum: float = 0.9,
    epsilon: float = 1e-5,
    unbiased_running_var: bool = True,
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Batch normalization (Ioffe & Szegedy 2015) over all axes but the last, functionally.

    `y = (x - mu) / sqrt(var + epsilon) * scale + bias`, with `(mu, var)` the batch mean and
    biased batch variance when training, else the running averages. Like
    `torch.nn.functional.batch_norm`, but the running averages are returned instead of updated in
    place, and `momentum` follows Flax: `running = momentum * running + (1 - momentum) * batch`.

    Args:
      x: `(N, ..., C)`, e.g. `(N, H, W, C)`.
      running_mean: `(C,)`.
      running_var: `(C,)`.
      scale: `(C,)` learned gain gamma, or None for 1.
      bias: `(C,)` learned shift beta, or None for 0.
      train: normalise with batch statistics and update the running averages.
      momentum: weight of the old running average (PyTorch's `momentum=0.1` is 0.9 here).
      epsilon: added to the variance.
      unbiased_running_var: average the unbiased batch variance `var * m / (m - 1)` (`m` values per
        channel) into `running_var`, as PyTorch does; False averages the biased one, as Flax does.

    Returns:
      `(y, new_running_mean, new_running_var)`: `y` has the shape and dtype of `x`; the running
      averages are `(C,)` and returned unchanged when not training.

    Raises:
      ShapeError: training with a single value per channel and `unbiased_running_var`.
    """
    _check_momentum_epsilon(momentum, epsilon)
    xs = x.astype(_stat_dtype(x))
    if train:
        count = math.prod(x.shape[:-1])
        if unbiased_running_var and count < 2:
            raise ShapeError(
                f"batch_norm: the unbiased variance needs more than one value per channel when "
                f"training, got input shape {x.shape}"
            )
        if portable_autodiff():
            # The two-pass graph for JAX to differentiate (no `lax.cond`, whose linearization
            # would keep both branches' residuals alive). The centered copy is recomputed in the
            # backward pass and `y` is formed from `xs` itself, so that, like the custom VJP,
            # only `xs` is saved (the training-memory analysis counts this program).
            mean = xs.mean(tuple(range(xs.ndim - 1)))
            var = jax.checkpoint(_centered_variance)(xs, mean)
            gain = lax.rsqrt(var + epsilon) * _one(scale, xs)
            y = xs * gain + (_zero(bias, xs) - mean * gain)
        else:
            y, mean, var = _normalize_train(xs, _one(scale, xs), _zero(bias, xs), epsilon)
        correction = count / (count - 1) if unbiased_running_var else 1.0
        running_mean = momentum * running_mean + (1.0 - momentum) * mean
        running_var = momentum * running_var + (1.0 - momentum) * (var * correction)
        return y.astype(x.dtype), running_mean, running_var
    y = (xs - running_mean) * lax.rsqrt(running_var + epsilon)
    if scale is not None:
        y = y * scale
    if bias is not None:
        y = y + bias
    return y.astype(x.dtype), running_mean, running_var


class BatchNorm(nn.Module):
    """Batch normalization over channels-last activations, a drop-in for `flax.linen.BatchNorm`.

    Same fields (those the models use), call signature and variable names as Flax's module, with
    PyTorch's defaults (momentum 0.9 in Flax's convention, epsilon 1e-5) and the fast backward
    pass of `batch_norm`. `unbiased_running_var=True` (`TorchBatchNorm`) averages the unbiased
    batch variance into the running variance, as `torch.nn.BatchNorm2d` does; see the module
    docstring for when that matters. Parameters: `2C` (scale, bias) plus `2C` non-trainable
    statistics.

    Attributes:
      use_running_average: normalise with the running averages (eval) instead of the batch.
      momentum: weight of the old running average (Flax convention; PyTorch's 0.1 is 0.9).
      epsilon: added to the variance.
      unbiased_running_var: True for PyTorch's update, False (default) for Flax's biased one.
      use_bias: learn a shift beta.
      use_scale: learn a gain gamma.
      scale_init: initializer of gamma (ones).
      bias_init: initializer of beta (zeros).
      dtype: output dtype (None: the input's). Statistics are computed in at least float32.
      param_dtype: dtype of gamma and beta.
    """

    use_running_average: bool | None = None
    momentum: float = 0.9
    epsilon: float = 1e-5
    unbiased_running_var: bool = False
    use_bias: bool = True
    use_scale: bool = True
    scale_init: Initializer = nn.initializers.ones_init()
    bias_init: Initializer = nn.initializers.zeros_init()
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, use_running_average: bool | None = None) -> jnp.ndarray:
        """Normalises `x` of shape `(N, ..., C)` per channel; returns the same shape.

        In training mode the `batch_stats` collection must be mutable to keep the updated
        running averages (`apply(..., mutable=["batch_stats"])`); they are left untouched while
        initializing, as in Flax.
        """
        use_running_average = nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        features = (x.shape[-1],)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, features, jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, features, jnp.float32)
        scale = bias = None
        if self.use_scale:
            scale = self.param("scale", self.scale_init, features, self.param_dtype)
        if self.use_bias:
            bias = self.param("bias", self.bias_init, features, self.param_dtype)
        y, mean, var = batch_norm(
            x,
            ra_mean.value,
            ra_var.value,
            scale,
            bias,
            train=not use_running_average,
            momentum=self.momentum,
            epsilon=self.epsilon,
            unbiased_running_var=self.unbiased_running_var,
        )
        if not use_running_average and not self.is_initializing():
            ra_mean.value, ra_var.value = mean, var
        return y.astype(self.dtype or x.dtype)


# PyTorch's BatchNorm2d exactly: the running variance averages the unbiased batch variance.
TorchBatchNorm = functools.partial(BatchNorm, unbiased_running_var=True)


def layer_norm(
    x: jnp.ndarray,
    scale: jnp.ndarray | None = None,
    bias: jnp.ndarray | None = None,
    epsilon: float = 1e-6,
) -> jnp.ndarray:
    """Layer normalization (Ba et al. 2016) over the channel axis only, as in ConvNeXt.

    `y = (x - mean_C(x)) / sqrt(var_C(x) + epsilon) * scale + bias`, with the biased variance over
    the last axis of each position: `F.layer_norm(x, (C,), scale, bias, epsilon)` on NHWC.

    Args:
      x: `(..., C)`, e.g. `(N, H, W, C)`.
      scale: `(C,)` gain, or None for 1.
      bias: `(C,)` shift, or None for 0.
      epsilon: added to the variance (ConvNeXt: 1e-6; PyTorch's default: 1e-5).

    Returns:
      The shape and dtype of `x`.
    """
    if not epsilon > 0.0:
        raise ConfigError(f"normalization epsilon must be > 0, got {epsilon}")

    def normalize(x, scale, bias):
        xs = x.astype(_stat_dtype(x))
        mean = xs.mean(-1, keepdims=True)
        var = jnp.square(xs - mean).mean(-1, keepdims=True)
        y = (xs - mean) * lax.rsqrt(var + epsilon)
        if scale is not None:
            y = y * scale
        if bias is not None:
            y = y + bias
        return y.astype(x.dtype)

    # Recomputed in the backward pass from `x` (a reduction over C per position, cheap), so
    # that only the input is saved instead of the centered and normalized copies.
    return jax.checkpoint(normalize)(x, scale, bias)


def _check_lrn(size: int, alpha: float, beta: float, k: float) -> None:
    if not isinstance(size, int | np.integer) or isinstance(size, bool) or size < 1:
        raise ConfigError(f"local response norm size must be a positive int, got {size!r}")
    for name, value in (("alpha", alpha), ("beta", beta), ("k", k)):
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ConfigError(f"local response norm {name} must be a number, got {value!r}")


def local_response_norm(
    x: jnp.ndarray, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0
) -> jnp.ndarray:
    """Local response normalization across channels (Krizhevsky et al. 2012, AlexNet).

    `b_c = a_c / (k + alpha / size * sum_{c'} a_{c'}^2)^beta`, the sum over the `size` channels
    `c - size//2 <= c' <= c + (size-1)//2`, with zeros beyond the first and last channel.

    This is PyTorch's (and Caffe's) convention, alpha divided by `size`. The AlexNet paper writes
    `(k + alpha * sum)^beta` with `k=2, n=5, alpha=1e-4, beta=0.75`, so the paper's layer is
    `local_response_norm(x, 5, alpha=5e-4, beta=0.75, k=2.0)` here. The default `k=2` is the
    paper's; PyTorch's default is `k=1`.

    Args:
      x: `(..., C)`, e.g. `(N, H, W, C)`.
      size: number of neighbouring channels in the sum (odd in practice).
      alpha: scale of the sum of squares (divided by `size`).
      beta: exponent.
      k: additive constant; `k > 0` keeps the denominator positive.

    Returns:
      The shape and dtype of `x`.
    """
    _check_lrn(size, alpha, beta, k)
    xs = x.astype(_stat_dtype(x))
    squares = jnp.square(xs)
    window = (1,) * (x.ndim - 1) + (size,)
    pads = ((0, 0),) * (x.ndim - 1) + ((size // 2, (size - 1) // 2),)
    # A concrete zero init lets jax recognise a windowed sum, which is differentiable.
    sums = lax.reduce_window(
        squares, np.array(0, squares.dtype), lax.add, window, (1,) * x.ndim, pads
    )
    return (xs / (k + (alpha / size) * sums) ** beta).astype(x.dtype)


class LocalResponseNorm(nn.Module):
    """Local response normalization across channels; see `local_response_norm`. No parameters.

    Attributes:
      size: neighbouring channels in the sum.
      alpha: scale of the sum of squares, divided by `size` (PyTorch's convention).
      beta: exponent.
      k: additive constant (AlexNet's 2; PyTorch's default is 1).
    """

    size: int = 5
    alpha: float = 1e-4
    beta: float = 0.75
    k: float = 2.0

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """`(..., C) -> (..., C)`."""
        return local_response_norm(x, self.size, self.alpha, self.beta, self.k)
