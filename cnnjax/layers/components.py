"""Layers by name, so that configs and command lines can swap a model's injected components.

Model fields such as `pool`, `act` and `norm` take callables, which a config file or a
`--config.model_kwargs.pool=max_blur:3` override cannot hold. `resolve_components` turns the
names below into the callables; `train_and_evaluate` applies it to `config.model_kwargs`.

  pool:  "max", "avg" (window 2, stride 2 when called with the input only, as VGG does),
         "max_blur:M" (Zhang 2019's MaxBlurPool, binomial filter size M), "blur_avg:M";
         blur pools take a border mode as a third part, e.g. "max_blur:3:replicate" (default
         "reflect", Zhang's; reflection needs maps wider than M // 2)
  act:   "relu", "relu6", "gelu" (tanh approximation, Flax's default), "gelu_erf" (the exact
         form, PyTorch's default), "silu", "elu", "leaky_relu", "tanh", "sigmoid"
  norm:  "batch" (`BatchNorm`), "torch_batch" (`TorchBatchNorm`), "none"
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn

from cnnjax.errors import ConfigError, unknown_choice
from cnnjax.layers.activations import gelu
from cnnjax.layers.blurpool import blur_avg_pool2d, max_blur_pool2d
from cnnjax.layers.norm import BatchNorm, TorchBatchNorm
from cnnjax.layers.padding import check_pad_mode
from cnnjax.layers.pooling import avg_pool2d, max_pool2d

# name -> (constructor, whether it takes a ":M" filter size)
_POOLS: dict[str, tuple[Callable[..., Any], bool]] = {
    "max": (max_pool2d, False),
    "avg": (avg_pool2d, False),
    "max_blur": (max_blur_pool2d, True),
    "blur_avg": (blur_avg_pool2d, True),
}
_ACTS: dict[str, Callable[..., Any]] = {
    "relu": nn.relu,
    "relu6": nn.relu6,
    "gelu": functools.partial(gelu, approximate=True),
    "gelu_erf": functools.partial(gelu, approximate=False),
    "silu": nn.silu,
    "elu": nn.elu,
    "leaky_relu": nn.leaky_relu,
    "tanh": nn.tanh,
    "sigmoid": nn.sigmoid,
}
_NORMS: dict[str, Any] = {"batch": BatchNorm, "torch_batch": TorchBatchNorm, "none": None}
COMPONENT_FIELDS = ("pool", "act", "norm")


def resolve_component(field: str, name: str) -> Any:
    """The callable that `name` stands for in model field `field` (see the module docstring).

    Raises:
      ConfigError: unknown field or name, or a bad filter size, naming the valid choices.
    """
    if field == "act":
        if name not in _ACTS:
            raise ConfigError(unknown_choice("act", name, _ACTS))
        return _ACTS[name]
    if field == "norm":
        if name not in _NORMS:
            raise ConfigError(unknown_choice("norm", name, _NORMS))
        return _NORMS[name]
    if field != "pool":
        raise ConfigError(unknown_choice("component field", field, COMPONENT_FIELDS))
    base, size, pad_mode, *rest = [*name.split(":"), "", ""]
    if any(rest):
        raise ConfigError(f"pool {name!r}: expected 'name', 'name:M' or 'name:M:pad_mode'")
    if base not in _POOLS:
        names = [f"{k}:M" if sized else k for k, (_, sized) in _POOLS.items()]
        raise ConfigError(unknown_choice("pool", base, names))
    constructor, takes_size = _POOLS[base]
    if not takes_size:
        if size or pad_mode:
            raise ConfigError(f"pool {base!r} takes no filter size, got {name!r}")
        return constructor
    if not size.isdigit():
        raise ConfigError(f"pool {name!r}: give the blur filter size, e.g. '{base}:3'")
    if pad_mode:
        check_pad_mode(pad_mode)
        return functools.partial(constructor, filter_size=int(size), pad_mode=pad_mode)
    return functools.partial(constructor, filter_size=int(size))


def resolve_components(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """`kwargs` with string values of the fields in `COMPONENT_FIELDS` resolved."""
    return {
        key: resolve_component(key, value)
        if key in COMPONENT_FIELDS and isinstance(value, str)
        else value
        for key, value in kwargs.items()
    }
