"""Variance shift between dropout and batch normalization (Li et al. 2019), predicted and measured.

While training, a BN layer behind a dropout layer sees activations multiplied by noise `r` of
mean 1 and variance `sigma^2`, and averages their variance into its running variance. At test
time the noise is gone, the input variance is smaller, and BN divides by too large a number.
For an input of mean `c` and variance `v` entering BN directly (Li et al., Sec. 3):

    Var_train = E[(r x)^2] - c^2 = (1 + sigma^2)(c^2 + v) - c^2,     Var_test = v,

so `shift = Var_train / Var_test = 1 + sigma^2 (c^2 + v) / v` (Bernoulli dropout: `sigma^2 =
p / (1 - p)`, which gives `1 / (1 - p)` for `c = 0`). Through a linear unit `y = sum_i w_i x_i`
with inputs of pairwise correlation `rho`, the independent noises only inflate the diagonal
terms: `shift = (S2 s1 + rho v (S1^2 - S2)) / (v ((1 - rho) S2 + rho S1^2))`, with `S1 = sum w`,
`S2 = sum w^2` and `s1 = (1 + sigma^2)(c^2 + v) - c^2`: correlated (e.g. neighbouring-pixel)
features dilute the shift, which is why wide convolutional layers suffer less than the toy.

Measured on a trained network, per BN layer and channel: `running_var / test_var`, the running
variance BN uses at test time over the variance of its actual input at test time (eval mode, no
dropout, the whole test set). `reestimate_batch_stats` is the fix Li et al. discuss: recompute the
statistics with dropout switched off.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.errors import ConfigError, unknown_choice
from cnnjax.layers.dropout import DROPOUT_KINDS, ChannelDropout, NoiseDropout, make_dropout
from cnnjax.layers.norm import BatchNorm

_BATCH_NORMS = (BatchNorm, nn.BatchNorm)
_DROPOUTS = (nn.Dropout, ChannelDropout, NoiseDropout)


def noise_variance(kind: str, rate: float) -> float:
    """`Var(r)` of the multiplicative noise of a dropout kind (see `cnnjax.layers.dropout`)."""
    if kind not in DROPOUT_KINDS:
        raise ConfigError(unknown_choice("dropout kind", kind, DROPOUT_KINDS))
    if kind == "uniform":
        return rate**2 / 3.0
    return rate / (1.0 - rate)


def predicted_shift(kind: str, rate: float, mean: float = 0.0, var: float = 1.0) -> float:
    """`Var_train / Var_test` of a dropout output feeding BN directly (module docstring)."""
    train = (1.0 + noise_variance(kind, rate)) * (mean**2 + var) - mean**2
    return train / var


def predicted_linear_shift(
    kind: str, rate: float, weights, mean: float = 0.0, var: float = 1.0, corr: float = 0.0
) -> float:
    """`Var_train / Var_test` of `y = w . dropout(x)` (inputs of pairwise correlation `corr`)."""
    w = np.asarray(weights, np.float64)
    s1, s2 = w.sum() ** 2, np.square(w).sum()
    train_diag = (1.0 + noise_variance(kind, rate)) * (mean**2 + var) - mean**2
    train = s2 * train_diag + corr * var * (s1 - s2)
    test = var * ((1.0 - corr) * s2 + corr * s1)
    return float(train / test)


def _batch_moments(x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    axes = tuple(range(x.ndim - 1))
    mean = x.astype(jnp.float32).mean(axes)
    return mean, jnp.square(x.astype(jnp.float32) - mean).mean(axes)


def _path(context) -> str:
    return "/".join(context.module.path)


def _capture_bn_inputs(model, variables, x, train: bool, keep_dropout: bool, rngs):
    """Runs the model; returns `({bn path: (batch mean, batch var)}, outputs)`."""
    captured = {}

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name == "__call__":
            if isinstance(context.module, _BATCH_NORMS):
                captured[_path(context)] = _batch_moments(args[0])
            elif not keep_dropout and isinstance(context.module, _DROPOUTS):
                return args[0]  # dropout switched off
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        if train:
            out, _ = model.apply(variables, x, train=True, mutable=["batch_stats"], rngs=rngs)
        else:
            out = model.apply(variables, x, train=False)
    return captured, out


def _combine(parts: list[tuple[np.ndarray, np.ndarray, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Pooled mean and (biased) variance of batches given their moments and sizes (Chan et al.)."""
    counts = np.array([n for _, _, n in parts], np.float64)[:, None]
    means = np.stack([m for m, _, _ in parts]).astype(np.float64)
    variances = np.stack([v for _, v, _ in parts]).astype(np.float64)
    total = counts.sum()
    mean = (counts * means).sum(0) / total
    var = (counts * (variances + np.square(means - mean))).sum(0) / total
    return mean, var


def _ordered(model, train: bool, keep_dropout: bool):
    """A jitted `(variables, x) -> [(mean, var) per BN layer]` and the layers' paths in network
    order (filled when it is first traced; a dict output would come back sorted by name)."""
    order: list[str] = []

    def moments(variables, x):
        captured, _ = _capture_bn_inputs(model, variables, x, train, keep_dropout, None)
        order[:] = list(captured)
        return [captured[path] for path in order]

    return jax.jit(moments), order


def bn_input_statistics(model, variables, batches) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Test-time mean and variance of every BN layer's input over `batches` (eval mode).

    Args:
      model: a Flax module called as `model.apply(variables, x, train=...)`.
      variables: its variables (with `batch_stats`).
      batches: iterable of preprocessed float inputs `(N, H, W, C)`.

    Returns:
      `{module path: (mean (C,), var (C,))}` pooled over all batches, in network order.
    """
    forward, order = _ordered(model, train=False, keep_dropout=True)
    parts: dict[str, list] = {}
    for x in batches:
        for path, (mean, var) in zip(order, jax.device_get(forward(variables, x))):
            parts.setdefault(path, []).append((mean, var, int(np.prod(x.shape[:-1]))))
    return {path: _combine(p) for path, p in parts.items()}


def _running(variables, path: str) -> tuple[np.ndarray, np.ndarray]:
    node = variables["batch_stats"]
    for key in path.split("/"):
        node = node[key]
    return np.asarray(node["mean"]), np.asarray(node["var"])


def variance_shift(model, variables, batches) -> dict[str, dict[str, float]]:
    """Per BN layer: running variance over the test-time variance of its input.

    Returns:
      `{path: {"pooled_ratio", "mean_ratio", "median_ratio", "min_ratio", "max_ratio"}}`: summed
      running over summed test variance, and statistics of the per-channel ratios
      (channels with a test variance below 1e-12 of the layer's largest are skipped: dead ReLUs).
    """
    stats = bn_input_statistics(model, variables, batches)
    out = {}
    for path, (_, test_var) in stats.items():
        _, running_var = _running(variables, path)
        alive = test_var > 1e-12 * max(float(test_var.max()), 1e-30)
        ratio = running_var[alive] / test_var[alive]
        out[path] = {
            # Channels weighted by their variance: robust to near-dead channels.
            "pooled_ratio": float(running_var[alive].sum() / test_var[alive].sum()),
            "mean_ratio": float(ratio.mean()),
            "median_ratio": float(np.median(ratio)),
            "min_ratio": float(ratio.min()),
            "max_ratio": float(ratio.max()),
        }
    return out


def reestimate_batch_stats(model, variables, batches) -> dict:
    """Variables whose BN statistics are recomputed with dropout off (train-mode BN).

    Each BN layer's running mean and variance become the averages of its batch means and batch
    (biased) variances over `batches`, the inputs it normalizes with while training, but
    without dropout noise ("precise BN" with dropout off).
    """
    forward, order = _ordered(model, train=True, keep_dropout=False)
    sums: dict[str, list] = {}
    count = 0
    for x in batches:
        for path, (mean, var) in zip(order, jax.device_get(forward(variables, x))):
            acc = sums.setdefault(path, [0.0, 0.0])
            acc[0] = acc[0] + np.asarray(mean, np.float64)
            acc[1] = acc[1] + np.asarray(var, np.float64)
        count += 1
    if not count:
        raise ConfigError("reestimate_batch_stats needs at least one batch")
    batch_stats = jax.tree.map(np.asarray, variables["batch_stats"])
    for path, (mean_sum, var_sum) in sums.items():
        node = batch_stats
        for key in path.split("/"):
            node = node[key]
        node["mean"] = (mean_sum / count).astype(np.float32)
        node["var"] = (var_sum / count).astype(np.float32)
    return {**variables, "batch_stats": batch_stats}


def simulate_toy_shift(
    kind: str,
    rate: float,
    mean: float = 0.0,
    var: float = 1.0,
    width: int = 1,
    corr: float = 0.0,
    steps: int = 400,
    batch: int = 512,
    seed: int = 0,
) -> float:
    """Measures the toy's shift with the real layers: dropout (-> linear unit) -> `BatchNorm`.

    Inputs `x ~ N(mean, var)` with `width` features of pairwise correlation `corr` go through
    `make_dropout(kind, rate)`, then (for `width > 1`) a fixed random linear unit, then a
    `BatchNorm` trained for `steps` batches (momentum 0.9). Returns the BN's running variance
    over the variance of its input at test time (dropout off, fresh samples) -- the quantity
    `predicted_shift` / `predicted_linear_shift` predict (up to the running average's noise).
    """
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(width, 1)).astype(np.float32) if width > 1 else None

    class Toy(nn.Module):
        @nn.compact
        def __call__(self, x, train):
            x = make_dropout(kind, rate)(x, not train)
            if weights is not None:
                x = x @ weights
            return BatchNorm(use_running_average=not train, name="bn")(x)

    def sample(n):
        shared = rng.normal(size=(n, 1))
        own = rng.normal(size=(n, width))
        z = np.sqrt(corr) * shared + np.sqrt(1.0 - corr) * own
        return (mean + np.sqrt(var) * z).astype(np.float32)

    toy = Toy()
    variables = toy.init(jax.random.PRNGKey(seed), sample(2), False)

    @jax.jit
    def train_step(variables, x, key):
        _, updates = toy.apply(variables, x, True, mutable=["batch_stats"], rngs={"dropout": key})
        return {**variables, **updates}

    key = jax.random.PRNGKey(seed + 1)
    for step in range(steps):
        variables = train_step(variables, sample(batch), jax.random.fold_in(key, step))
    test = sample(steps * batch // 4)
    test_in = test @ weights if weights is not None else test
    running_var = float(variables["batch_stats"]["bn"]["var"][0])
    return running_var / float(np.var(test_in.astype(np.float64)))
