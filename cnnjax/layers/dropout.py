"""Dropout layers: element-wise and channel dropout, and the noise variants of the ablation.

`dropout` / `Dropout` (Flax's `nn.Dropout`) drop elements, `channel_dropout` / `ChannelDropout`
(`Dropout2d`) whole feature maps. `make_dropout` builds any of the kinds below with one
interface, for the BN-versus-dropout ablation (Li et al. 2019).

Every kind multiplies activations by noise of mean 1 while training and is the identity in
evaluation. Only the variance of the noise differs, and with it the "variance shift" a following
batch normalization suffers (its running variance is collected under noise it will not see at
test time):

  kind          noise `r` (y = r * x)                                 Var(r)
  "bernoulli"   `m / (1 - p)`, `m ~ Bernoulli(1 - p)` (Srivastava 2014)  `p / (1 - p)`
  "channel"     the same, one `m` per example and channel (Tompson 2015)  `p / (1 - p)`
  "gaussian"    `N(1, p / (1 - p))` (Srivastava et al. 2014, Sec. 10)     `p / (1 - p)`
  "uniform"     `1 + U(-beta, beta)`, `beta = rate` ("Uout", Li et al.)    `beta^2 / 3`

For "uniform" the rate is Li et al.'s `beta`: at `beta = 0.1` the noise variance is 0.0033,
against 0.11 for Bernoulli dropout at `p = 0.1` (see `cnnjax.analysis.variance_shift`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.errors import ConfigError, ShapeError, unknown_choice

# Flax's element-wise dropout (Srivastava et al. 2014): rng collection "dropout", inverted scaling.
Dropout = nn.Dropout


def _check_rate(rate: float) -> None:
    # A traced rate cannot be checked; it is the caller's responsibility.
    if isinstance(rate, int | float) and not 0.0 <= rate <= 1.0:
        raise ConfigError(f"dropout rate must be in [0, 1] (the drop probability), got {rate}")


def _drop(key: jax.Array, x: jnp.ndarray, rate: float, mask_shape: tuple[int, ...]):
    _check_rate(rate)
    if isinstance(rate, int | float):
        if rate == 0.0:
            return x
        if rate == 1.0:
            return jnp.zeros_like(x)
    keep = 1.0 - rate
    mask = jax.random.bernoulli(key, keep, mask_shape)
    # Inverted dropout: scaling kept units by 1/(1-p) at training time leaves E[y] = x, so
    # evaluation is the identity.
    return jnp.where(mask, x / keep, jnp.zeros((), x.dtype)).astype(x.dtype)


def dropout(key: jax.Array, x: jnp.ndarray, rate: float) -> jnp.ndarray:
    """Element-wise dropout (Srivastava et al. 2014): `y = m * x / (1 - rate)`, `m ~ Bernoulli`.

    Args:
      key: PRNG key.
      x: any shape.
      rate: drop probability in [0, 1].

    Returns:
      The shape and dtype of `x`; each element zeroed independently with probability `rate`.
    """
    return _drop(key, x, rate, x.shape)


def channel_dropout(key: jax.Array, x: jnp.ndarray, rate: float) -> jnp.ndarray:
    """Spatial dropout (Tompson et al. 2015): drops whole channels of each example.

    `y[n, h, w, c] = m[n, c] * x[n, h, w, c] / (1 - rate)` with one `m[n, c] ~ Bernoulli(1 - rate)`
    per example and channel, i.e. a `(N, 1, 1, C)` mask: neighbouring pixels of a feature map are
    strongly correlated, so element-wise dropout barely regularises convolutional features.
    PyTorch's `Dropout2d` (`Dropout1d` for `(N, L, C)`, `Dropout3d` for 5-D) on NHWC.

    Args:
      key: PRNG key.
      x: `(N, *spatial, C)` with at least one spatial axis.
      rate: drop probability in [0, 1].

    Returns:
      The shape and dtype of `x`.

    Raises:
      ShapeError: for inputs with fewer than 3 axes (use `dropout`).
    """
    if x.ndim < 3:
        raise ShapeError(
            f"channel_dropout: expected (N, *spatial, C) with a spatial axis, got shape {x.shape}"
        )
    mask_shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],)
    return _drop(key, x, rate, mask_shape)


class ChannelDropout(nn.Module):
    """Spatial dropout of whole channels per example; see `channel_dropout`. No parameters.

    Attributes:
      rate: drop probability in [0, 1].
      deterministic: identity when True (eval); may instead be passed to `__call__`.
      rng_collection: rng collection of the mask ("dropout", as for `nn.Dropout`).
    """

    rate: float
    deterministic: bool | None = None
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, x: jnp.ndarray, deterministic: bool | None = None) -> jnp.ndarray:
        """`(N, *spatial, C) -> (N, *spatial, C)`."""
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        _check_rate(self.rate)
        if deterministic or self.rate == 0.0:
            return x
        return channel_dropout(self.make_rng(self.rng_collection), x, self.rate)


# PyTorch's name for the same layer.
Dropout2d = ChannelDropout


DROPOUT_KINDS = ("bernoulli", "channel", "gaussian", "uniform")


def gaussian_dropout(key: jax.Array, x: jnp.ndarray, rate: float) -> jnp.ndarray:
    """`y = x * r`, `r ~ N(1, rate / (1 - rate))`: Bernoulli dropout's mean and variance.

    Args:
      key: PRNG key.
      x: any shape.
      rate: the Bernoulli drop probability whose noise variance to match, in [0, 1).

    Returns:
      The shape and dtype of `x`.
    """
    _check_rate(rate)
    if rate >= 1.0:
        raise ConfigError(f"gaussian dropout needs rate < 1 (variance rate/(1-rate)), got {rate}")
    std = (rate / (1.0 - rate)) ** 0.5
    noise = 1.0 + std * jax.random.normal(key, x.shape, jnp.float32)
    return (x * noise).astype(x.dtype)


def uniform_dropout(key: jax.Array, x: jnp.ndarray, beta: float) -> jnp.ndarray:
    """Li et al.'s "Uout": `y = x * (1 + u)`, `u ~ U(-beta, beta)`.

    Args:
      key: PRNG key.
      x: any shape.
      beta: half-width of the uniform noise, in [0, 1].

    Returns:
      The shape and dtype of `x`.
    """
    _check_rate(beta)
    noise = jax.random.uniform(key, x.shape, jnp.float32, minval=-beta, maxval=beta)
    return (x * (1.0 + noise)).astype(x.dtype)


class NoiseDropout(nn.Module):
    """Multiplicative-noise dropout, `gaussian_dropout` or `uniform_dropout`. No parameters.

    Attributes:
      rate: the Bernoulli-equivalent rate ("gaussian") or the half-width beta ("uniform").
      kind: "gaussian" or "uniform".
      deterministic: identity when True (eval); may instead be passed to `__call__`.
    """

    rate: float
    kind: str = "gaussian"
    deterministic: bool | None = None

    @nn.compact
    def __call__(self, x: jnp.ndarray, deterministic: bool | None = None) -> jnp.ndarray:
        """Same shape as `x`."""
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        if self.kind not in ("gaussian", "uniform"):
            raise ConfigError(
                unknown_choice("noise dropout kind", self.kind, ("gaussian", "uniform"))
            )
        if deterministic or self.rate == 0.0:
            return x
        noise = gaussian_dropout if self.kind == "gaussian" else uniform_dropout
        return noise(self.make_rng("dropout"), x, self.rate)


def make_dropout(kind: str, rate: float, name: str | None = None) -> nn.Module:
    """A dropout module of `kind` (see `DROPOUT_KINDS`), called as `module(x, deterministic)`.

    Raises:
      ConfigError: unknown kind or a rate outside [0, 1].
    """
    if kind not in DROPOUT_KINDS:
        raise ConfigError(unknown_choice("dropout kind", kind, DROPOUT_KINDS))
    _check_rate(rate)
    if kind == "bernoulli":
        return nn.Dropout(rate, name=name)
    if kind == "channel":
        return ChannelDropout(rate, name=name)
    return NoiseDropout(rate, kind, name=name)
