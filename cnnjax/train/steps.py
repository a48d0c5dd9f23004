"""Pure training and evaluation steps.

`train_step(state, batch) -> (state, metrics)` and `eval_step(state, batch) -> sums` own no I/O;
the loop jits them (donating the state) and handles checkpoints, metrics and progress.
Batches carry raw `uint8` images: scaling to [0, 1], augmentation and per-channel normalization
run here, on the device, with keys derived from `(state.rng, state.step)`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from cnnjax.data.augment import augment
from cnnjax.train.losses import distillation_loss, get_loss
from cnnjax.train.state import TrainState


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """Turns raw examples into float32 model inputs.

    `uint8 (N, H, W, C)` images are scaled to [0, 1]; float inputs (e.g. `(N, L, C)` series) are
    taken as they are. Then augmentation (images only) and per-channel normalization.

    Attributes:
      mean, std: per-channel statistics of the scaled training inputs.
      crop_padding, pad_mode, flip: training augmentation (see `cnnjax.data.augment.augment`).
      normalize: subtract `mean` and divide by `std` (off for models that reconstruct [0, 1]
        pixels, such as the capsule network).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int = 0
    pad_mode: str = "zeros"
    flip: bool = False
    normalize: bool = True

    def __call__(self, images, key=None):
        x = images.astype(jnp.float32)
        if images.dtype == jnp.uint8:
            x = x / 255.0
        if key is not None and (self.crop_padding or self.flip):
            x = augment(key, x, self.crop_padding, self.pad_mode, self.flip)
        if not self.normalize:
            return x
        return (x - jnp.asarray(self.mean, jnp.float32)) / jnp.asarray(self.std, jnp.float32)


@dataclasses.dataclass(frozen=True)
class Distillation:
    """A teacher's soft targets for `train_step` (Hinton et al. 2015).

    Attributes:
      apply: `apply(teacher_variables, images) -> logits (B, K)`, in eval mode.
      temperature: `T` of both softmaxes.
      soft_weight: weight of the `T^2`-scaled soft term (the rest goes to the labels).
    """

    apply: Callable
    temperature: float = 4.0
    soft_weight: float = 0.9


def train_step(
    state: TrainState,
    batch,
    teacher_variables=None,
    *,
    preprocess: Preprocess,
    label_smoothing: float = 0.0,
    loss: str = "cross_entropy",
    distill: Distillation | None = None,
):
    """One optimizer step on a batch.

    Args:
      state: current state (donated by the loop: do not reuse it after the call).
      batch: `{"image": uint8 (B, H, W, C), "label": int32 (B,)}`.
      teacher_variables: the teacher's variables when distilling (an argument, not a constant
        folded into the compiled step).
      preprocess: scaling, augmentation and normalization.
      label_smoothing: label-smoothing factor of the loss.
      loss: name of the objective (a key of `cnnjax.train.losses.LOSSES`).
      distill: when set, the loss is `distillation_loss` against the teacher's logits on the same
        augmented images (the objective must be "cross_entropy").

    Returns:
      `(new_state, {"loss", "accuracy", "grad_norm"})` with scalar float32 metrics.
    """
    step_key = jax.random.fold_in(state.rng, state.step)
    augment_key, dropout_key = jax.random.split(step_key)
    images = preprocess(batch["image"], augment_key)
    objective = get_loss(loss)
    forward_kwargs = {"labels": batch["label"]} if objective.labels_in_forward else {}
    if distill is not None:
        teacher_logits = jax.lax.stop_gradient(distill.apply(teacher_variables, images))

    def loss_fn(params):
        (logits, intermediates), updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats},
            images,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": dropout_key},
            **forward_kwargs,
        )
        if distill is None:
            losses = objective.fn(logits, intermediates, batch["label"], images, label_smoothing)
        else:
            losses = distillation_loss(
                logits, teacher_logits, batch["label"], distill.temperature, distill.soft_weight
            )
        return losses.mean(), (logits, updates)

    (loss_value, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=updates.get("batch_stats", {}))
    metrics = {
        "loss": loss_value,
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
        "grad_norm": optax.global_norm(grads),
    }
    return state, metrics


def eval_step(state: TrainState, batch, *, preprocess: Preprocess, loss: str = "cross_entropy"):
    """Sums over the real (mask = 1) examples of a batch: loss, correct predictions, count.

    Models whose loss needs labels in the forward pass see none here: evaluation predicts first.
    """
    images = preprocess(batch["image"])
    logits, intermediates = state.apply_fn(
        {"params": state.params, "batch_stats": state.batch_stats}, images, train=False
    )
    mask = batch["mask"]
    losses = get_loss(loss).fn(logits, intermediates, batch["label"], images, 0.0)
    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    return {
        "loss_sum": jnp.sum(losses * mask),
        "correct": jnp.sum(correct * mask),
        "count": jnp.sum(mask),
    }


def jit_steps(
    preprocess: Preprocess,
    label_smoothing: float = 0.0,
    loss: str = "cross_entropy",
    distill: Distillation | None = None,
    teacher_variables=None,
):
    """Jitted `(train_step(state, batch), eval_step)`; the train step donates its input state and
    passes `teacher_variables` to a distilling step."""
    train = jax.jit(
        functools.partial(
            train_step,
            preprocess=preprocess,
            label_smoothing=label_smoothing,
            loss=loss,
            distill=distill,
        ),
        donate_argnums=0,
    )
    evaluate = jax.jit(functools.partial(eval_step, preprocess=preprocess, loss=loss))
    if distill is None:
        return train, evaluate
    return (lambda state, batch: train(state, batch, teacher_variables)), evaluate
