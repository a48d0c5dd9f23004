"""Weight sharing by k-means (Han et al. 2016, Sec. 3): a layer's weights as `2**bits` centroids.

Each layer's kept (non-pruned) weights are clustered in one dimension; a weight is then stored as
the index of its centroid, and the centroids are fine-tuned by summing the gradients of the
weights in each cluster (Eq. 3 of the paper). Han et al. compare three initializations and find
linear (centroids evenly spaced between the layer's smallest and largest weight) best, because it
keeps the few large weights, which matter most, as their own centroids: it is the default here.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cnnjax.compress.prune import find_state, is_prunable, leaf_name
from cnnjax.errors import ConfigError, unknown_choice

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

    Each step assigns every value to its nearest centroid (the smaller one on a tie) and moves each
    centroid to the mean of its values; a centroid left without values is moved onto the value
    farthest from its own centroid (as scikit-learn does). Stops when no assignment changes.

    Returns:
      `(centroids, assignments)`: float64 `(k,)` and int `(n,)` indices into them.
    """
    values = np.asarray(values, np.float64).reshape(-1)
    centroids = np.asarray(centroids, np.float64).copy()
    assignments = None
    for _ in range(max_iterations):
        new = _nearest(values, centroids)
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


def _nearest(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid of each value (the smaller centroid on a tie), by binary
    search over the sorted centroids: memory O(n), not the O(n k) of a distance matrix."""
    if len(centroids) == 1:
        return np.zeros(values.shape, np.int64)
    order = np.argsort(centroids, kind="stable")
    ordered = centroids[order]
    above = np.clip(np.searchsorted(ordered, values), 1, len(ordered) - 1)
    below = above - 1
    take_below = np.abs(values - ordered[below]) <= np.abs(values - ordered[above])
    return order[np.where(take_below, below, above)]


def share_weights(
    weights: np.ndarray, bits: int, mask: np.ndarray | None = None, init: str = "linear"
) -> tuple[np.ndarray, np.ndarray]:
    """k-means weight sharing of one layer: `2**bits` centroids for its kept weights, or
    `2**bits - 1` when some are pruned.

    `bits` is the width of a stored weight index. A pruned layer needs one code for a zero (the
    filler entries of the sparse format, Han et al. 2016 Fig. 2, and the pruned entries of a dense
    one), so it reserves one of the `2**bits` codes for it: its indices then fit `bits` bits
    exactly, fillers included.

    Args:
      weights: the layer's weights, any shape.
      bits: bits per stored index (>= 1; a pruned layer needs >= 1 and gets 2**bits - 1 >= 1
        clusters).
      mask: True where a weight is kept (default: every nonzero weight); pruned weights stay 0
        and get no cluster.
      init: see `initial_centroids`.

    Returns:
      `(centroids, assignments)`: `(clusters,)` float32 and an int array of the weights' shape,
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
    clusters = 2**bits - (1 if kept.size < weights.size else 0)
    centroids, assigned = kmeans_1d(kept, initial_centroids(kept, clusters, init))
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


def per_layer(name: str, spec, default=None):
    """The value `spec` gives the leaf `name`: `spec` itself, or the value of the first glob in a
    `{glob: value}` mapping that matches `name` or its module (`"fc1/*"` and `"fc1"` both match
    `"fc1/kernel"`); `default` when none does or `spec` is None."""
    if not isinstance(spec, Mapping):
        return default if spec is None else spec
    for pattern, value in spec.items():
        if _matches(name, pattern):
            return value
    return default


def _matches(name: str, pattern: str) -> bool:
    """`pattern` (a glob) matches the leaf `name` or its module."""
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(
        name.rsplit("/", 1)[0], pattern
    )


# `assignments` leaf of a parameter that is not shared (a scalar keeps the tree's structure).
NOT_SHARED = -2


def share_params(params, bits, exclude=(), init: str = "linear"):
    """k-means weight sharing of every kernel of `params` that `bits` gives a width.

    Args:
      params: parameter pytree.
      bits: one int for every kernel or `{glob: bits}` (kernels matching no glob stay float).
      exclude: globs of kernels never shared.
      init: centroid initialization (`initial_centroids`).

    Returns:
      `(shared params, assignments)`: the parameters with each shared kernel rebuilt from its
      codebook, and a pytree of the same structure holding each shared kernel's int32 cluster
      indices (-1 where pruned) and `NOT_SHARED` (a scalar) for every other leaf.

    Raises:
      ConfigError: a glob that matches no kernel, or bits < 1.
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    names = [leaf_name(path) for path, _ in flat]
    kernels = [n for (n, (_, leaf)) in zip(names, flat) if is_prunable(leaf)]
    for pattern in (*(bits if isinstance(bits, Mapping) else ()), *exclude):
        if not any(_matches(n, pattern) for n in kernels):
            raise ConfigError(unknown_choice("weight-sharing layer pattern", pattern, kernels))
    shared, assignments = [], []
    for name, (_, leaf) in zip(names, flat):
        width = per_layer(name, bits) if is_prunable(leaf) else None
        if width is None or any(_matches(name, p) for p in exclude):
            shared.append(leaf)
            assignments.append(jnp.asarray(NOT_SHARED, jnp.int32))
            continue
        centroids, assigned = share_weights(np.asarray(leaf), int(width), init=init)
        assigned = jnp.asarray(assigned, jnp.int32)
        shared.append(shared_values(jnp.asarray(centroids), assigned).astype(leaf.dtype))
        assignments.append(assigned)
    return treedef.unflatten(shared), treedef.unflatten(assignments)


def cluster_means(params, assignments):
    """`params` with every shared kernel set to one value per cluster (0 where pruned): the members'
    common value, or their mean if rounding ever made them drift apart. This is the exact
    codebook form the compressed file stores."""

    def project(leaf, assigned):
        if jnp.ndim(assigned) == 0:
            return leaf
        clusters = int(jnp.max(assigned)) + 1
        kept = assigned >= 0
        index = jnp.maximum(assigned, 0).reshape(-1)
        sums = jax.ops.segment_sum(jnp.where(kept, leaf, 0).reshape(-1), index, clusters)
        counts = jax.ops.segment_sum(kept.reshape(-1).astype(leaf.dtype), index, clusters)
        means = sums / jnp.maximum(counts, 1)
        # A cluster whose members are already one value keeps it bit for bit (a float mean of
        # equal numbers can be an ulp off).
        flat = leaf.reshape(-1)
        low = jax.ops.segment_min(jnp.where(kept.reshape(-1), flat, jnp.inf), index, clusters)
        high = jax.ops.segment_max(jnp.where(kept.reshape(-1), flat, -jnp.inf), index, clusters)
        values = jnp.where(low == high, low, means)
        return shared_values(values, assigned).astype(leaf.dtype)

    return jax.tree.map(project, params, assignments)


class KeepSharedState(NamedTuple):
    """Optimizer state of `keep_shared`: the inner optimizer's and the cluster assignments."""

    inner_state: Any
    assignments: Any


def keep_shared(inner: optax.GradientTransformation, assignments) -> optax.GradientTransformation:
    """Wraps an optimizer so that shared kernels stay shared: centroid fine-tuning (Han et al.
    2016, Eq. 3).

    Every weight of a cluster gets the cluster's summed gradient (`centroid_gradients`) before
    `inner` sees it, so the members of a cluster, equal at the start, receive identical updates
    from any element-wise optimizer (SGD, momentum, Adam, weight decay): the update of the
    centroid. Pruned weights (-1) get zero gradients. The assignments live in the optimizer state,
    so checkpoints carry them. With Adam the summed gradient's scale cancels; with SGD a large
    cluster moves faster, as in the paper.

    Args:
      inner: the optimizer.
      assignments: from `share_params` (the same tree structure as the parameters).
    """

    # Cluster counts are static (segment sums need them at trace time): the restored state holds
    # the same assignments as these.
    clusters = jax.tree.map(lambda a: int(np.max(a)) + 1 if np.ndim(a) else 0, assignments)

    def init(params):
        return KeepSharedState(inner.init(params), assignments)

    def broadcast(grad, assigned, count):
        if count == 0:
            return grad
        sums = centroid_gradients(grad, assigned, count)
        return jnp.where(assigned >= 0, jnp.take(sums, jnp.maximum(assigned, 0)), 0.0)

    def update(updates, state, params=None):
        grads = jax.tree.map(broadcast, updates, state.assignments, clusters)
        inner_updates, inner_state = inner.update(grads, state.inner_state, params)
        return inner_updates, KeepSharedState(inner_state, state.assignments)

    return optax.GradientTransformation(init, update)


def assignments_of(opt_state):
    """The assignments held by a `keep_shared` optimizer state (searched through wrappers)."""
    found = find_state(opt_state, KeepSharedState)
    return None if found is None else found.assignments
