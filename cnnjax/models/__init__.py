"""Model zoo: every architecture is a Linen module returning `(logits, intermediates)`."""

from cnnjax.models import lenet, resnet_cifar  # noqa: F401  (importing registers the models)
from cnnjax.models.registry import ModelInfo, create_model, list_models, model_info, register

__all__ = ["ModelInfo", "create_model", "list_models", "model_info", "register"]
