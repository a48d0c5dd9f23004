"""Model zoo: every architecture is a Linen module returning `(logits, intermediates)`."""

# Importing a family registers its models (and its torchvision converter, if any).
from cnnjax.models import (  # noqa: F401
    alexnet,
    capsnet,
    convnext,
    densenet,
    googlenet,
    highway,
    inception_v3,
    lenet,
    mobilenet,
    nin,
    resnet,
    resnet_cifar,
    timeseries,
    vgg,
)
from cnnjax.models.registry import (
    ModelInfo,
    create_model,
    input_shape_of,
    list_models,
    model_info,
    register,
)

__all__ = ["ModelInfo", "create_model", "input_shape_of", "list_models", "model_info", "register"]
