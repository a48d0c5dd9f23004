"""Schedules and optimizers against their definitions."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnnjax.errors import ConfigError
from cnnjax.train.optim import make_optimizer, make_schedule


def test_piecewise_divides_by_ten_after_32k_and_48k_iterations():
    lr = make_schedule({"name": "piecewise", "boundaries": (32000, 48000)}, 0.1, 64000)
    # optax counts updates from 0: count 31999 is the 32,000th update, count 32000 comes after it.
    values = [float(lr(s)) for s in (0, 31999, 32000, 47999, 48000, 63999)]
    np.testing.assert_allclose(values, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-6)


def test_warmup_ramps_linearly_then_hands_over():
    lr = make_schedule({"name": "cosine", "warmup_steps": 10}, 1.0, 110)
    np.testing.assert_allclose([float(lr(s)) for s in (0, 5, 10)], [0.0, 0.5, 1.0], rtol=1e-6)
    assert float(lr(60)) == pytest.approx(0.5, abs=1e-6)  # half-way through the cosine
    assert float(lr(110)) == pytest.approx(0.0, abs=1e-6)


def test_cosine_ends_at_the_final_fraction():
    lr = make_schedule({"name": "cosine", "final_lr_fraction": 0.1}, 2.0, 100)
    assert float(lr(0)) == pytest.approx(2.0) and float(lr(100)) == pytest.approx(0.2)


@pytest.mark.parametrize(
    "schedule, match",
    [
        ({"name": "cosin"}, "did you mean .cosine."),
        ({"name": "piecewise", "boundaries": (50, 10)}, "must increase"),
        ({"name": "piecewise", "boundaries": (100,)}, "num_steps=100"),
        ({"name": "constant", "warmup_steps": 100}, "warmup_steps"),
    ],
)
def test_bad_schedules_are_config_errors(schedule, match):
    with pytest.raises(ConfigError, match=match):
        make_schedule(schedule, 0.1, 100)


def params_and_grads():
    params = {"dense": {"kernel": jnp.array([[1.0, -2.0]]), "bias": jnp.array([0.5, 0.5])}}
    grads = {"dense": {"kernel": jnp.array([[0.1, 0.2]]), "bias": jnp.array([1.0, -1.0])}}
    return params, grads


def apply_twice(tx, params, grads):
    state = tx.init(params)
    for _ in range(2):
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params


def test_sgd_weight_decay_is_l2_added_to_the_gradient_before_momentum():
    params, grads = params_and_grads()
    opt = {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}
    tx, _ = make_optimizer(opt, {"name": "constant"}, 10)
    got = apply_twice(tx, params, grads)

    def reference(p, g):  # PyTorch SGD: d = g + wd p; v = m v + d; p -= lr v
        v = np.zeros_like(p)
        for _ in range(2):
            v = 0.9 * v + (g + 0.01 * p)
            p = p - 0.1 * v
        return p

    expected = jax.tree.map(lambda p, g: reference(np.asarray(p), np.asarray(g)), params, grads)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), got, expected)


def test_kernel_mask_leaves_biases_undecayed():
    params, _ = params_and_grads()
    zero = jax.tree.map(jnp.zeros_like, params)
    opt = {"name": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.5, "decay_mask": "kernels"}
    tx, _ = make_optimizer(opt, {"name": "constant"}, 10)
    got = apply_twice(tx, params, zero)
    np.testing.assert_allclose(got["dense"]["bias"], params["dense"]["bias"])
    np.testing.assert_allclose(got["dense"]["kernel"], params["dense"]["kernel"] * 0.95**2)


def test_adamw_decay_is_decoupled():
    params, _ = params_and_grads()
    zero = jax.tree.map(jnp.zeros_like, params)
    tx, _ = make_optimizer(
        {"name": "adamw", "lr": 0.1, "weight_decay": 0.5}, {"name": "constant"}, 5
    )
    got = apply_twice(tx, params, zero)  # zero gradients: only p <- p - lr * wd * p remains
    jax.tree.map(lambda a, p: np.testing.assert_allclose(a, p * 0.95**2, rtol=1e-6), got, params)


def test_unknown_optimizer_suggests():
    with pytest.raises(ConfigError, match="did you mean 'adam'"):
        make_optimizer({"name": "adm", "lr": 0.1}, {"name": "constant"}, 10)
