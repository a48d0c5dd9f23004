"""Weight sharing by k-means (Han et al. 2016, Sec. 3): a layer's weights as `2**bits` centroids.

Each layer's kept (non-pruned) weights are clustered in one dimension; a weight is then stored as
the index of its centroid, and the centroids are fine-tuned by summing the gradients of the
weights in each cluster (Eq. 3 of the paper). Han et al. compare three initializations and find
linear (centroids evenly spaced between the layer's smallest and largest weight) best, because it
keeps the few large weights, which matter most, as their own centroids: it is the default here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.errors import ConfigError

INITS = ("linear", "random", "density")


def initial_centroids(values: np.ndarray, clusters: int, init: str = "linear", seed: int = 0):
    """`clusters` starting centroids for the 1-D `values`.

    Args:
      values: the weights to share (flattened, pruned ones removed).
      clusters: number of centroids (`2**bits`).
      init: "linear" (evenly spaced over [min, max]), "random" (distinct values drawn from the
        weights: Forgy) or "density" (evenly spaced quantiles of the weights' distribution).
      seed: of "random".

    Raises:
      ConfigError: an unknown `init`, fewer than one cluster, or no values.
    """
    values = np.asarray(values, np.float64).reshape(-1)
    if init not in INITS:
        raise ConfigError(f"unknown k-means init {init!r} (valid choices: {', '.join(INITS)})")
    if clusters < 1 or values.size == 0:
        raise ConfigError(f"need clusters >= 1 and weights to share, got {clusters}, {values.size}")
    if init == "linear":
        return np.linspace(values.min(), values.max(), clusters)
    if init == "density":
        return np.quantile(values, (np.arange(clusters) + 0.5) / clusters)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(values, size=min(clusters, values.size), replace=False))


def kmeans_1d(
    values: np.ndarray, centroids: np.ndarray, max_iterations: int = 100
) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's algorithm in one dimension from the given `centroids`.

    Each step assigns every value to its nearest centroid (the lower one on a tie) and moves each
    centroid to the mean of its values; a centroid left without values is moved onto the value
    farthest from its own centroid (as scikit-learn does). Stops when no assignment changes.

    Returns:
      `(centroids, assignments)`: float64 `(k,)` and int `(n,)` indices into them.
    """
    values = np.asarray(values, np.float64).reshape(-1)
    centroids = np.asarray(centroids, np.float64).copy()
    assignments = None
    for _ in range(max_iterations):
        distance = np.abs(values[:, None] - centroids[None, :])
        new = np.argmin(distance, axis=1)
        if assignments is not None and np.array_equal(new, assignments):
            break
        assignments = new
        sums = np.bincount(assignments, weights=values, minlength=len(centroids))
        counts = np.bincount(assignments, minlength=len(centroids)).astype(np.float64)
        empty = np.flatnonzero(counts == 0)
        if empty.size:
            # An empty centroid would waste a code: move it onto the values farthest from their
            # own centroids (scikit-learn's rule), each taken out of its old cluster.
            farthest = np.argsort(-np.abs(values - centroids[assignments]), kind="stable")
            for cluster, point in zip(empty, farthest[: empty.size]):
                old = assignments[point]
                sums[old] -= values[point]
                counts[old] -= 1
                sums[cluster], counts[cluster] = values[point], 1
        centroids = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
    return centroids, assignments


def share_weights(
    weights: np.ndarray, bits: int, mask: np.ndarray | None = None, init: str = "linear"
) -> tuple[np.ndarray, np.ndarray]:
    """k-means weight sharing of one layer: `2**bits` centroids for its kept weights.

    Args:
      weights: the layer's weights, any shape.
      bits: bits per stored index (>= 1).
      mask: True where a weight is kept (default: every nonzero weight); pruned weights stay 0
        and get no cluster.
      init: see `initial_centroids`.

    Returns:
      `(centroids, assignments)`: `(2**bits,)` float32 and an int array of the weights' shape,
      -1 where pruned.

    Raises:
      ConfigError: `bits < 1`, or no weight is kept.
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or bits < 1:
        raise ConfigError(f"bits must be an integer >= 1, got {bits!r}")
    weights = np.asarray(weights)
    mask = weights != 0 if mask is None else np.asarray(mask, bool)
    kept = weights[mask].astype(np.float64)
    if kept.size == 0:
        raise ConfigError("no weight is kept: nothing to share")
    centroids, assigned = kmeans_1d(kept, initial_centroids(kept, 2**bits, init))
    assignments = np.full(weights.shape, -1, np.int64)
    assignments[mask] = assigned
    return centroids.astype(np.float32), assignments


def shared_values(centroids: jnp.ndarray, assignments: jnp.ndarray) -> jnp.ndarray:
    """The layer's weights rebuilt from its codebook (0 where `assignments` is -1)."""
    picked = jnp.take(centroids, jnp.maximum(assignments, 0))
    return jnp.where(assignments >= 0, picked, 0.0)


def centroid_gradients(
    weight_gradients: jnp.ndarray, assignments: jnp.ndarray, clusters: int
) -> jnp.ndarray:
    """Gradient of the loss with respect to each centroid: the sum of its weights' gradients
    (Han et al. 2016, Eq. 3); pruned weights (-1) contribute nothing."""
    kept = assignments >= 0
    return jax.ops.segment_sum(
        jnp.where(kept, weight_gradients, 0.0).reshape(-1),
        jnp.maximum(assignments, 0).reshape(-1),
        num_segments=clusters,
    )
