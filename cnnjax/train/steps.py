"""Pure training and evaluation steps.

`train_step(state, batch) -> (state, metrics)` and `eval_step(state, batch) -> sums` own no I/O;
the loop jits them (donating the state) and handles checkpoints, metrics and progress.
Batches carry raw `uint8` images: scaling to [0, 1], augmentation and per-channel normalization
run here, on the device, with keys derived from `(state.rng, state.step)`.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import optax

from cnnjax.data.augment import augment
from cnnjax.train.state import TrainState


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """Turns `uint8 (N, H, W, C)` images into normalized float32 model inputs.

    Attributes:
      mean, std: per-channel statistics of the [0, 1]-scaled training images.
      crop_padding, pad_mode, flip: training augmentation (see `cnnjax.data.augment.augment`).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int = 0
    pad_mode: str = "zeros"
    flip: bool = False

    def __call__(self, images, key=None):
        x = images.astype(jnp.float32) / 255.0
        if key is not None:
            x = augment(key, x, self.crop_padding, self.pad_mode, self.flip)
        return (x - jnp.asarray(self.mean, jnp.float32)) / jnp.asarray(self.std, jnp.float32)


def cross_entropy(logits, labels, label_smoothing: float = 0.0):
    """Per-example softmax cross-entropy with integer labels and optional label smoothing."""
    num_classes = logits.shape[-1]
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def train_step(state: TrainState, batch, *, preprocess: Preprocess, label_smoothing: float = 0.0):
    """One optimizer step on a batch.

    Args:
      state: current state (donated by the loop: do not reuse it after the call).
      batch: `{"image": uint8 (B, H, W, C), "label": int32 (B,)}`.
      preprocess: scaling, augmentation and normalization.
      label_smoothing: label-smoothing factor of the loss.

    Returns:
      `(new_state, {"loss", "accuracy", "grad_norm"})` with scalar float32 metrics.
    """
    step_key = jax.random.fold_in(state.rng, state.step)
    augment_key, dropout_key = jax.random.split(step_key)
    images = preprocess(batch["image"], augment_key)

    def loss_fn(params):
        (logits, _), updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            images,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": dropout_key},
        )
        loss = cross_entropy(logits, batch["label"], label_smoothing).mean()
        return loss, (logits, updates)

    (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=updates.get("batch_stats", {}))
    metrics = {
        "loss": loss,
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
        "grad_norm": optax.global_norm(grads),
    }
    return state, metrics


def eval_step(state: TrainState, batch, *, preprocess: Preprocess):
    """Sums over the real (mask = 1) examples of a batch: loss, correct predictions, count."""
    logits, _ = state.apply_fn(
        {"params": state.params, "batch_stats": state.batch_stats},
        preprocess(batch["image"]),
        train=False,
    )
    mask = batch["mask"]
    loss = cross_entropy(logits, batch["label"])
    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    return {
        "loss_sum": jnp.sum(loss * mask),
        "correct": jnp.sum(correct * mask),
        "count": jnp.sum(mask),
    }


def jit_steps(preprocess: Preprocess, label_smoothing: float = 0.0):
    """Jitted `(train_step, eval_step)`; the train step donates its input state."""
    train = jax.jit(
        functools.partial(train_step, preprocess=preprocess, label_smoothing=label_smoothing),
        donate_argnums=0,
    )
    evaluate = jax.jit(functools.partial(eval_step, preprocess=preprocess))
    return train, evaluate
