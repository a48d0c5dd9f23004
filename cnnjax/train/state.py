"""Training state: parameters, BatchNorm statistics, optimizer state, step and RNG in one pytree."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state


class TrainState(train_state.TrainState):
    """Flax `TrainState` plus the model's `batch_stats` and the run's base PRNG key.

    The key never changes; the step's randomness (augmentation, dropout) is
    `fold_in(rng, step)`, so a restored state continues the exact random stream.
    """

    batch_stats: Any
    rng: jax.Array


def init_variables(model: nn.Module, input_shape, seed: int) -> dict:
    """`{"params", "batch_stats"}` of `model` initialized on a dummy `(1, *input_shape)` batch,
    from the init key of `seed` (the one `create_train_state` uses)."""
    init_key, _ = jax.random.split(jax.random.PRNGKey(seed))

    @jax.jit
    def init(key):
        return model.init(key, jnp.zeros((1, *input_shape), jnp.float32), train=False)

    return init(init_key)


def create_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    input_shape,
    seed: int,
    variables: dict | None = None,
) -> TrainState:
    """Initializes the model on a dummy `(1, *input_shape)` batch.

    Args:
      model: Linen module with `__call__(x, train)` returning `(logits, intermediates)`.
      tx: optimizer.
      input_shape: `(H, W, C)` of one image.
      seed: base seed; parameter init and the training stream use independent keys from it.
      variables: start from these `{"params", "batch_stats"}` instead of initializing (e.g. a
        checkpoint's, through `init_from`); the training stream still comes from `seed`.
    """
    _, run_key = jax.random.split(jax.random.PRNGKey(seed))
    if variables is None:
        variables = init_variables(model, input_shape, seed)
    return TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        tx=tx,
        batch_stats=variables.get("batch_stats", {}),
        rng=run_key,
    )
