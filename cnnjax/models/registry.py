"""Model registry: `register`, `create_model`, `list_models`, `model_info`.

Each entry is a constructor (usually a `functools.partial` of a Linen module class) plus metadata
that training and analysis need without building the model: input shape, class count, paper.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import inspect
from collections.abc import Callable
from typing import Any

import flax.linen as nn

from cnnjax.errors import ConfigError, unknown_choice


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """Metadata of a registered model.

    Attributes:
      name: registry key.
      constructor: callable returning the Linen module; keyword arguments override its fields.
      input_shape: `(H, W, C)` of one input image.
      num_classes: default number of classes.
      paper: the publication the architecture comes from.
      description: one line on what this variant is.
    """

    name: str
    constructor: Callable[..., nn.Module]
    input_shape: tuple[int, int, int]
    num_classes: int
    paper: str = ""
    description: str = ""


_REGISTRY: dict[str, ModelInfo] = {}


def register(name: str, constructor: Callable[..., nn.Module], **metadata: Any) -> ModelInfo:
    """Adds a model to the registry; re-registering a name is an error (it hides a bug)."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    info = ModelInfo(name=name, constructor=constructor, **metadata)
    _REGISTRY[name] = info
    return info


def list_models(pattern: str = "*") -> list[str]:
    """Sorted names of registered models matching a shell-style pattern, e.g. 'resnet*'."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def model_info(name: str) -> ModelInfo:
    """Metadata of a registered model.

    Raises:
      ConfigError: for an unknown name, with the closest match and all valid names.
    """
    if name not in _REGISTRY:
        raise ConfigError(unknown_choice("model", name, _REGISTRY))
    return _REGISTRY[name]


def module_fields(constructor: Callable[..., nn.Module]) -> list[str]:
    """Names of the fields a Linen module (or a partial of one) accepts as keyword arguments."""
    cls = getattr(constructor, "func", constructor)
    if dataclasses.is_dataclass(cls):
        return [f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name")]
    return list(inspect.signature(cls).parameters)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Builds a registered model, overriding module fields with `kwargs`.

    Raises:
      ConfigError: for an unknown model name or a field the model does not have.
    """
    info = model_info(name)
    fields = module_fields(info.constructor)
    for key in kwargs:
        if key not in fields:
            raise ConfigError(unknown_choice(f"field of model {name!r}", key, fields))
    return info.constructor(**kwargs)
