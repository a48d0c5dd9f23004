"""GELU with a one-array backward pass: jax.nn.gelu's values and derivatives, less memory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax.analysis.memory import saved_residuals
from cnnjax.layers.activations import gelu
from tests.layers.helpers import normal

X = jnp.linspace(-8.0, 8.0, 1601)


@pytest.mark.parametrize("approximate", [False, True], ids=["erf", "tanh"])
def test_gelu_values_and_derivatives_equal_jax_nn_gelu(approximate):
    np.testing.assert_array_equal(gelu(X, approximate), jax.nn.gelu(X, approximate=approximate))
    ours = lambda x: gelu(x, approximate)  # noqa: E731
    theirs = lambda x: jax.nn.gelu(x, approximate=approximate)  # noqa: E731
    for _ in range(2):  # first and second derivatives (JAX differentiates our slope)
        ours, theirs = jax.grad(ours), jax.grad(theirs)
        np.testing.assert_allclose(jax.vmap(ours)(X), jax.vmap(theirs)(X), rtol=2e-5, atol=2e-6)
    _, tangent = jax.jvp(lambda x: gelu(x, approximate), (X,), (jnp.ones_like(X),))
    np.testing.assert_allclose(
        tangent, jax.vmap(jax.grad(gelu), (0, None))(X, approximate), rtol=1e-6
    )


@pytest.mark.parametrize("approximate", [False, True], ids=["erf", "tanh"])
def test_gelu_backward_pass_keeps_one_array_where_autodiff_keeps_several(approximate):
    x = normal(0, 4, 8, 8, 16)

    def count(act):
        residuals = saved_residuals(lambda p, x: jnp.sum(act(x * p) ** 2), jnp.float32(1.0), x)
        return sum(r.kind == "activation" and r.shape == x.shape for r in residuals)

    # ours: the slope, and the activation itself for the squared loss's derivative
    ours = count(lambda y: gelu(y, approximate))
    theirs = count(lambda y: jax.nn.gelu(y, approximate=approximate))
    assert ours < theirs, (ours, theirs)
    assert ours == 2
