"""Training objectives, chosen by name: the model's default (`ModelInfo.loss`) or `config.loss`.

Every loss maps a model's output to a per-example loss `(B,)`, so train and eval steps average or
mask it the same way. A loss may need the labels inside the forward pass (the capsule network's
decoder reconstructs from the true class's capsule during training): `LossSpec.labels_in_forward`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from cnnjax.errors import ConfigError, unknown_choice
from cnnjax.models import capsnet


def cross_entropy(logits, labels, label_smoothing: float = 0.0):
    """Per-example softmax cross-entropy with integer labels and optional label smoothing."""
    num_classes = logits.shape[-1]
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def distillation_loss(
    student_logits, teacher_logits, labels, temperature: float = 4.0, soft_weight: float = 0.9
):
    """Knowledge distillation (Hinton et al. 2015): per-example loss `(B,)`.

    `soft_weight * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - soft_weight) *
    cross_entropy(student, labels)`. The `T^2` keeps the soft term's gradients, which scale as
    `1/T^2`, comparable to the hard term's as `T` changes (Sec. 2 of the paper); KL is the
    paper's soft cross-entropy minus the teacher's entropy, a constant, so the gradients agree.

    Args:
      student_logits, teacher_logits: `(B, K)`; the teacher's are held fixed (`stop_gradient`).
      labels: `(B,)` integer classes.
      temperature: `T > 0`.
      soft_weight: in `[0, 1]`; 0 is plain cross-entropy.

    Raises:
      ConfigError: `temperature <= 0` or `soft_weight` outside `[0, 1]`.
    """
    if not temperature > 0:
        raise ConfigError(f"distillation temperature must be > 0, got {temperature!r}")
    if not 0 <= soft_weight <= 1:
        raise ConfigError(f"distillation soft_weight must be in [0, 1], got {soft_weight!r}")
    teacher = jax.nn.log_softmax(jax.lax.stop_gradient(teacher_logits) / temperature)
    student = jax.nn.log_softmax(student_logits / temperature)
    soft = temperature**2 * jnp.sum(jnp.exp(teacher) * (teacher - student), axis=-1)
    return soft_weight * soft + (1 - soft_weight) * cross_entropy(student_logits, labels)


def _cross_entropy(logits, intermediates, labels, inputs, label_smoothing):
    del intermediates, inputs
    return cross_entropy(logits, labels, label_smoothing)


def _capsule(lengths, intermediates, labels, inputs, label_smoothing):
    """Margin loss on capsule lengths + 0.0005 x reconstruction error (Sabour et al. 2017, Eq. 4).

    The reconstruction target is the model input itself, so configs of capsule networks turn
    `data.normalize` off: the decoder's sigmoid output lives in [0, 1] like the pixels.
    """
    del label_smoothing
    loss = capsnet.margin_loss(lengths, labels)
    if "reconstruction" in intermediates:
        target = inputs.reshape(intermediates["reconstruction"].shape)
        error = capsnet.reconstruction_loss(intermediates["reconstruction"], target)
        loss = loss + capsnet.RECONSTRUCTION_WEIGHT * error
    return loss


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """A named objective.

    Attributes:
      fn: `fn(outputs, intermediates, labels, inputs, label_smoothing) -> (B,)` losses.
      labels_in_forward: pass `labels=` to the model when training.
      description: one line for error messages and docs.
    """

    fn: Callable
    labels_in_forward: bool = False
    description: str = ""


LOSSES: dict[str, LossSpec] = {
    "cross_entropy": LossSpec(_cross_entropy, description="softmax cross-entropy on logits"),
    "capsule": LossSpec(
        _capsule,
        labels_in_forward=True,
        description="capsule margin loss + 0.0005 x reconstruction squared error",
    ),
}


def get_loss(name: str) -> LossSpec:
    """Looks up a loss; an unknown name raises `ConfigError` listing the valid ones."""
    if name not in LOSSES:
        raise ConfigError(unknown_choice("loss", name, LOSSES))
    return LOSSES[name]


def per_example_loss(name, outputs, intermediates, labels, inputs, label_smoothing=0.0):
    """Per-example loss `(B,)` of the named objective."""
    return get_loss(name).fn(outputs, intermediates, labels, inputs, label_smoothing)
