import flax.linen as nn
import jax
import numpy as np
import pytest

from cnnjax.analysis import variance_shift as vs
from cnnjax.layers.norm import BatchNorm


@pytest.mark.parametrize(
    "kind, rate, mean, width, corr",
    [
        ("bernoulli", 0.5, 0.0, 1, 0.0),
        ("bernoulli", 0.3, 1.0, 1, 0.0),
        ("uniform", 0.5, 0.5, 1, 0.0),
        ("gaussian", 0.3, 0.0, 1, 0.0),
        ("bernoulli", 0.5, 0.5, 16, 0.5),
    ],
)
def test_toy_shift_measured_with_the_real_layers_matches_the_prediction(
    kind, rate, mean, width, corr
):
    if width == 1:
        predicted = vs.predicted_shift(kind, rate, mean)
    else:
        weights = np.random.default_rng(0).normal(size=(width, 1)).ravel()
        predicted = vs.predicted_linear_shift(kind, rate, weights, mean, 1.0, corr)
    measured = vs.simulate_toy_shift(kind, rate, mean, 1.0, width, corr, steps=200)
    assert measured == pytest.approx(predicted, rel=0.05)


def test_predictions_known_values():
    assert vs.predicted_shift("bernoulli", 0.5) == pytest.approx(2.0)  # 1 / (1 - p)
    assert vs.predicted_shift("uniform", 0.3) == pytest.approx(1.03)  # 1 + beta^2 / 3
    # Perfectly correlated inputs: dropout noise averages out of the diagonal only.
    assert vs.predicted_linear_shift("bernoulli", 0.5, np.ones(4), corr=0.0) == pytest.approx(2.0)
    assert vs.predicted_linear_shift("bernoulli", 0.5, np.ones(4), corr=1.0) == pytest.approx(1.25)


class _Net(nn.Module):
    rate: float = 0.0

    @nn.compact
    def __call__(self, x, train=False):
        x = nn.Dense(8)(x)
        x = nn.Dropout(self.rate)(x, deterministic=not train)
        x = BatchNorm(use_running_average=not train, name="bn")(x)
        return nn.Dense(3)(jax.nn.relu(x)), {}


def _trained(rate, steps=150):
    model = _Net(rate)
    rng = np.random.default_rng(0)
    data = [rng.normal(1.0, 2.0, size=(256, 5)).astype(np.float32) for _ in range(steps)]
    variables = model.init(jax.random.PRNGKey(0), data[0])

    @jax.jit
    def step(variables, x, key):
        _, updates = model.apply(
            variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": key}
        )
        return {**variables, **updates}

    for i, x in enumerate(data):
        variables = step(variables, x, jax.random.PRNGKey(i))
    test = [rng.normal(1.0, 2.0, size=(512, 5)).astype(np.float32) for _ in range(8)]
    return model, variables, data[:20], test


def test_network_shift_is_one_without_dropout_and_large_with_it_until_reestimated():
    model, variables, _, test = _trained(0.0)
    shift = vs.variance_shift(model, variables, test)
    assert list(shift) == ["bn"]
    assert shift["bn"]["mean_ratio"] == pytest.approx(1.0, abs=0.06)

    model, variables, train, test = _trained(0.5)
    before = vs.variance_shift(model, variables, test)["bn"]["mean_ratio"]
    assert before > 1.3  # ~1 / (1 - p) diluted by the dense layer's correlations
    fixed = vs.reestimate_batch_stats(model, variables, train)
    after = vs.variance_shift(model, fixed, test)["bn"]["mean_ratio"]
    assert after == pytest.approx(1.0, abs=0.06)
    assert fixed["params"] is variables["params"]


def test_bn_input_statistics_pool_batches_exactly():
    model = _Net()
    x = np.random.default_rng(1).normal(size=(30, 5)).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(0), x)
    pooled = vs.bn_input_statistics(model, variables, [x[:7], x[7:19], x[19:]])["bn"]
    hidden = np.asarray(nn.Dense(8).apply({"params": variables["params"]["Dense_0"]}, x))
    np.testing.assert_allclose(pooled[0], hidden.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pooled[1], hidden.var(0), rtol=1e-4)
