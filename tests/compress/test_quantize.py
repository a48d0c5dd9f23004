"""k-means weight sharing against scikit-learn, and the centroid gradients of Han et al. Eq. 3."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.cluster import KMeans

from cnnjax.compress.quantize import (
    centroid_gradients,
    initial_centroids,
    kmeans_1d,
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
    assert centroids.shape == (8,) and assignments.shape == weights.shape
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
