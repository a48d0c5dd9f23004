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


def create_train_state(
    model: nn.Module, tx: optax.GradientTransformation, input_shape, seed: int
) -> TrainState:
    """Initializes the model on a dummy `(1, *input_shape)` batch.

    Args:
      model: Linen module with `__call__(x, train)` returning `(logits, intermediates)`.
      tx: optimizer.
      input_shape: `(H, W, C)` of one image.
      seed: base seed; parameter init and the training stream use independent keys from it.
    """
    init_key, run_key = jax.random.split(jax.random.PRNGKey(seed))

    @jax.jit
    def init(key):
        return model.init(key, jnp.zeros((1, *input_shape), jnp.float32), train=False)

    variables = init(init_key)
    return TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        tx=tx,
        batch_stats=variables.get("batch_stats", {}),
        rng=run_key,
    )
