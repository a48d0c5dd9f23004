"""k-means weight sharing against scikit-learn, the centroid gradients of Han et al. Eq. 3, and the
optimizer wrapper that fine-tunes shared kernels."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.cluster import KMeans

from cnnjax.compress.quantize import (
    NOT_SHARED,
    assignments_of,
    centroid_gradients,
    cluster_means,
    initial_centroids,
    keep_shared,
    kmeans_1d,
    share_params,
    share_weights,
    shared_values,
)
from cnnjax.errors import ConfigError


@pytest.mark.parametrize("init", ["linear", "density", "random"])
def test_kmeans_equals_scikit_learn_from_the_same_start(init):
    values = np.random.default_rng(0).standard_t(df=4, size=2000) * 0.05  # heavy-tailed, as weights
    start = initial_centroids(values, 16, init, seed=1)
    centroids, assignments = kmeans_1d(values, start, max_iterations=300)
    reference = KMeans(16, init=start.reshape(-1, 1), n_init=1, max_iter=300, tol=0.0).fit(
        values.reshape(-1, 1)
    )
    np.testing.assert_allclose(centroids, reference.cluster_centers_[:, 0], rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(assignments, reference.labels_)


def test_linear_init_spans_the_weights_and_keeps_the_extremes_as_centroids():
    values = np.array([-1.0, -0.01, 0.0, 0.02, 0.03, 2.0])
    np.testing.assert_allclose(initial_centroids(values, 4), [-1.0, 0.0, 1.0, 2.0])
    centroids, _ = kmeans_1d(values, initial_centroids(values, 4))
    assert centroids.min() == -1.0 and centroids.max() == 2.0


def test_sharing_keeps_pruned_weights_at_zero_and_rebuilds_the_layer():
    rng = np.random.default_rng(3)
    weights = rng.normal(size=(3, 3, 4, 8)).astype(np.float32)
    weights[np.abs(weights) < 0.7] = 0.0  # pruned
    centroids, assignments = share_weights(weights, bits=3)
    # One of the 8 codes is the zero's: 7 centroids for the kept weights, 8 for a dense layer.
    assert centroids.shape == (7,) and assignments.shape == weights.shape
    assert share_weights(weights + 10, bits=3)[0].shape == (8,)
    np.testing.assert_array_equal(assignments == -1, weights == 0)
    rebuilt = np.asarray(shared_values(jnp.asarray(centroids), jnp.asarray(assignments)))
    assert np.all(rebuilt[weights == 0] == 0)
    kept = weights != 0
    assert np.abs(rebuilt[kept] - weights[kept]).max() < np.ptp(weights[kept]) / 8


def test_centroid_gradient_is_the_sum_of_its_weights_gradients():
    assignments = jnp.array([[0, 1, -1], [1, 1, 2]])
    grads = jnp.array([[0.5, -1.0, 9.0], [2.0, 0.25, 3.0]])
    np.testing.assert_allclose(centroid_gradients(grads, assignments, 4), [0.5, 1.25, 3.0, 0.0])
    # The same as differentiating a loss through the rebuilt weights (an independent route).
    target = jnp.arange(6.0).reshape(2, 3)

    def loss(centroids):
        return jnp.sum((shared_values(centroids, assignments) - target) ** 2)

    centroids = jnp.array([0.1, -0.2, 0.3, 0.4])
    weight_grads = jax.grad(lambda w: jnp.sum((w - target) ** 2))(
        shared_values(centroids, assignments)
    )
    np.testing.assert_allclose(
        jax.grad(loss)(centroids), centroid_gradients(weight_grads, assignments, 4), rtol=1e-6
    )


def test_bad_bits_inits_and_empty_layers_are_refused():
    with pytest.raises(ConfigError, match="bits must be an integer >= 1, got 0"):
        share_weights(np.ones(4), bits=0)
    with pytest.raises(ConfigError, match="unknown k-means init 'kpp'"):
        initial_centroids(np.ones(4), 2, "kpp")
    with pytest.raises(ConfigError, match="no weight is kept"):
        share_weights(np.zeros(4), bits=2)


def toy_params():
    keys = jax.random.split(jax.random.PRNGKey(3), 2)
    kernel = jax.random.normal(keys[0], (6, 5))
    return {
        "fc": {"kernel": kernel.at[0].set(0.0), "bias": jnp.ones(5)},
        "out": {"kernel": jax.random.normal(keys[1], (5, 3)), "bias": jnp.zeros(3)},
    }


def test_share_params_clusters_the_named_kernels_and_leaves_the_rest():
    params = toy_params()
    shared, assignments = share_params(params, {"fc": 2})
    assert int(assignments["out"]["kernel"]) == NOT_SHARED == int(assignments["fc"]["bias"])
    np.testing.assert_array_equal(shared["out"]["kernel"], params["out"]["kernel"])
    fc = np.asarray(shared["fc"]["kernel"])
    assert len(np.unique(fc[fc != 0])) <= 4
    np.testing.assert_array_equal(fc == 0, params["fc"]["kernel"] == 0)  # zeros stay pruned
    assert (np.asarray(assignments["fc"]["kernel"])[0] == -1).all()
    centroids, expected = share_weights(np.asarray(params["fc"]["kernel"]), 2)
    np.testing.assert_array_equal(assignments["fc"]["kernel"], expected)
    with pytest.raises(ConfigError, match=r"'fcc'.*fc/kernel"):
        share_params(params, {"fcc": 2})


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_keep_shared_fine_tunes_centroids_and_keeps_each_cluster_one_value(optimizer):
    params = toy_params()
    shared, assignments = share_params(params, 2)
    inner = optax.sgd(0.1) if optimizer == "sgd" else optax.adamw(0.05, weight_decay=0.1)
    tx = keep_shared(inner, assignments)
    state = tx.init(shared)
    target = jax.tree.map(lambda p: 2.0 + p[::-1] if p.ndim == 1 else p[::-1, ::-1] + 1, params)

    def grads_of(p):
        return jax.grad(
            lambda q: sum(
                jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(q), jax.tree.leaves(target))
            )
        )(p)

    start = shared
    for _ in range(6):
        grads = grads_of(shared)
        updates, state = tx.update(grads, state, shared)
        if optimizer == "sgd" and shared is start:  # Eq. 3: a centroid moves by lr * sum
            kernel, assigned = grads["fc"]["kernel"], assignments["fc"]["kernel"]
            summed = centroid_gradients(kernel, assigned, 4)
            expected = jnp.where(assigned >= 0, -0.1 * summed[jnp.maximum(assigned, 0)], 0.0)
            np.testing.assert_allclose(updates["fc"]["kernel"], expected, rtol=1e-6)
        shared = optax.apply_updates(shared, updates)
    for name in ("fc", "out"):
        kernel, assigned = (
            np.asarray(shared[name]["kernel"]),
            np.asarray(assignments[name]["kernel"]),
        )
        for cluster in np.unique(assigned[assigned >= 0]):
            assert len(np.unique(kernel[assigned == cluster])) == 1  # bitwise one value
        assert (kernel[assigned == -1] == 0).all()
        assert not np.array_equal(kernel, np.asarray(start[name]["kernel"]))  # centroids moved
    assert not np.array_equal(shared["fc"]["bias"], start["fc"]["bias"])  # biases train freely
    np.testing.assert_array_equal(
        cluster_means(shared, assignments)["fc"]["kernel"], shared["fc"]["kernel"]
    )
    assert assignments_of((state, optax.EmptyState())) is assignments
