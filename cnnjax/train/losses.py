"""Training objectives, chosen by name: the model's default (`ModelInfo.loss`) or `config.loss`.

Every loss maps a model's output to a per-example loss `(B,)`, so train and eval steps average or
mask it the same way. A loss may need the labels inside the forward pass (the capsule network's
decoder reconstructs from the true class's capsule during training): `LossSpec.labels_in_forward`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import optax

from cnnjax.errors import ConfigError, unknown_choice
from cnnjax.models import capsnet


def cross_entropy(logits, labels, label_smoothing: float = 0.0):
    """Per-example softmax cross-entropy with integer labels and optional label smoothing."""
    num_classes = logits.shape[-1]
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


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
