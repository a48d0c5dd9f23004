"""Model registry: `register`, `create_model`, `list_models`, `model_info`.

Each entry is a constructor (usually a `functools.partial` of a Linen module class) plus everything
training, analysis and the parity tests need without building the model: input shape, paper, loss
and the torchvision converter. The default class count is the constructor's own `num_classes`
(a keyword of the partial, else the module field's default), so it is stated once.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import inspect
import re
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.errors import ConfigError, unknown_choice
from cnnjax.models.counting import count_macs, count_params


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """Metadata of a registered model.

    Attributes:
      name: registry key.
      constructor: callable returning the Linen module; keyword arguments override its fields.
      input_shape: `(H, W, C)` of one input image.
      paper: the publication the architecture comes from.
      description: one line on what this variant is.
      loss: training objective, a key of `cnnjax.train.losses.LOSSES`.
      converter: `converter(reader) -> variables` mapping a torchvision state dict (through a
        `cnnjax.models.convert.TorchReader`) onto this model; None without a torchvision
        counterpart. Called by `cnnjax.models.convert.from_torch`.

    `num_classes` (the default class count) is read from the constructor. `params` and `macs`
    (multiply-accumulates of one image at `input_shape`, eval mode) are computed on first use by
    tracing the model on abstract shapes: no weights are allocated.
    """

    name: str
    constructor: Callable[..., nn.Module]
    input_shape: tuple[int, ...]
    paper: str = ""
    description: str = ""
    loss: str = "cross_entropy"
    converter: Callable[[Any], dict] | None = None

    def __post_init__(self):
        default_num_classes(self.constructor)  # fails at registration, not at first use

    @property
    def num_classes(self) -> int:
        """Default number of classes: the constructor's `num_classes`."""
        return default_num_classes(self.constructor)

    def abstract_variables(self) -> dict:
        """Shapes and dtypes of the model's variables for one input image."""
        x = jax.ShapeDtypeStruct((1, *self.input_shape), jnp.float32)
        return jax.eval_shape(
            lambda: self.constructor().init(jax.random.key(0), jnp.zeros(x.shape), train=False)
        )

    @functools.cached_property
    def params(self) -> int:
        """Number of trainable parameters at the default class count."""
        return count_params(self.abstract_variables().get("params", {}))

    @functools.cached_property
    def macs(self) -> int:
        """Multiply-accumulates of convolutions and dense layers for one input image."""
        model = self.constructor()
        x = jax.ShapeDtypeStruct((1, *self.input_shape), jnp.float32)
        return count_macs(
            lambda v, images: model.apply(v, images, train=False), self.abstract_variables(), x
        )


_REGISTRY: dict[str, ModelInfo] = {}


def register(name: str, constructor: Callable[..., nn.Module], **metadata: Any) -> ModelInfo:
    """Adds a model to the registry; re-registering a name is an error (it hides a bug)."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    info = ModelInfo(name=name, constructor=constructor, **metadata)
    _REGISTRY[name] = info
    return info


def natural_key(name: str) -> tuple:
    """Sort key comparing digit runs as numbers: resnet18 < resnet34 < resnet101."""
    # re.split with a capture group alternates text and digits, text first, so the parts of any
    # two keys compare str with str and int with int; the name itself breaks ties ("05" vs "5").
    parts = re.split(r"(\d+)", name)
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name


def list_models(pattern: str = "*") -> list[str]:
    """Names of registered models matching a shell-style pattern, e.g. 'resnet*'.

    Sorted naturally (numbers by value): resnet18, resnet34, resnet50, resnet101, resnet152.
    """
    return sorted((n for n in _REGISTRY if fnmatch.fnmatch(n, pattern)), key=natural_key)


def model_info(name: str) -> ModelInfo:
    """Metadata of a registered model.

    Raises:
      ConfigError: for an unknown name, with the closest match and all valid names.
    """
    if name not in _REGISTRY:
        raise ConfigError(unknown_choice("model", name, _REGISTRY))
    return _REGISTRY[name]


def default_num_classes(constructor: Callable[..., nn.Module]) -> int:
    """The `num_classes` a constructor builds with: the partial's keyword, else the field default.

    Raises:
      ValueError: the module has no `num_classes` field with a default (a registration bug).
    """
    keywords = getattr(constructor, "keywords", {})
    if "num_classes" in keywords:
        return keywords["num_classes"]
    cls = getattr(constructor, "func", constructor)
    fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
    if "num_classes" not in fields or fields["num_classes"].default is dataclasses.MISSING:
        raise ValueError(f"{constructor!r} has no default num_classes")
    return fields["num_classes"].default


def module_fields(constructor: Callable[..., nn.Module]) -> list[str]:
    """Names of the fields a Linen module (or a partial of one) accepts as keyword arguments."""
    cls = getattr(constructor, "func", constructor)
    if dataclasses.is_dataclass(cls):
        return [f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name")]
    return list(inspect.signature(cls).parameters)


def create_model(name: str, num_classes: int | None = None, **kwargs: Any) -> nn.Module:
    """Builds a registered model, overriding module fields with `kwargs`.

    Args:
      name: registry key (see `list_models`).
      num_classes: output classes (default: the model's).
      **kwargs: module fields to override, e.g. `conv=make_conv("separable")`, `act=nn.gelu`.

    Raises:
      ConfigError: for an unknown model name or a field the model does not have.
    """
    info = model_info(name)
    if num_classes is not None:
        if not _positive_int(num_classes):
            raise ConfigError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        kwargs["num_classes"] = num_classes
    fields = module_fields(info.constructor)
    for key in kwargs:
        if key not in fields:
            raise ConfigError(unknown_choice(f"field of model {name!r}", key, fields))
    return info.constructor(**kwargs)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def input_shape_of(name: str, input_shape: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """`input_shape` checked against model `name` (its default `model_info(name).input_shape`
    when None): one example's shape of the model's rank, in positive sizes.

    Raises:
      ConfigError: an unknown model, a shape of the wrong rank (which the first layer would
        report as "too small") or a size that is not a positive integer.
    """
    default = model_info(name).input_shape
    shape = tuple(default if input_shape is None else input_shape)
    if len(shape) != len(default):
        raise ConfigError(
            f"input shape {shape} has {len(shape)} dimensions; model {name!r} takes "
            f"{len(default)} (default {default})"
        )
    if not all(_positive_int(size) for size in shape):
        raise ConfigError(f"input shape {shape} must be positive integers, e.g. {default}")
    return shape
