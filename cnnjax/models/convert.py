"""Map torchvision state dicts onto cnnjax variables: `from_torch(name, state_dict)`.

Used by the parity tests (PyTorch is a test-time reference only; nothing here imports torch:
tensors are read through `numpy()`/`np.asarray`). A model's `register(...)` entry names its
converter (`ModelInfo.converter`), which builds the `{"params": ..., "batch_stats": ...}` tree
from a `TorchReader`; the reader hands out tensors by key in the layouts Flax expects and checks
at the end that every tensor was used.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from cnnjax.errors import CheckpointError, ConfigError, unknown_choice
from cnnjax.models.registry import list_models, model_info


def convertible_models() -> list[str]:
    """Names of the models with a torchvision converter (`ModelInfo.converter`)."""
    return [name for name in list_models() if model_info(name).converter is not None]


def _to_numpy(tensor: Any) -> np.ndarray:
    if hasattr(tensor, "detach"):
        tensor = tensor.detach().cpu().numpy()
    # A copy: a view would let later in-place torch updates leak into the converted variables.
    return np.array(tensor, dtype=np.float32, copy=True)


class TorchReader:
    """Hands out the tensors of a torchvision state dict in Flax layouts, tracking use.

    Args:
      state_dict: parameter and buffer tensors by name (torch tensors or arrays).
    """

    def __init__(self, state_dict: Mapping[str, Any]):
        self.tensors = {
            k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")
        }
        self.used: set[str] = set()

    def raw(self, key: str) -> np.ndarray:
        """The tensor `key` as float32 numpy, in PyTorch's layout."""
        if key not in self.tensors:
            raise CheckpointError(unknown_choice("torch state_dict key", key, self.tensors))
        self.used.add(key)
        return _to_numpy(self.tensors[key])

    def conv(self, prefix: str, bias: bool | None = None) -> dict:
        """`{kernel, bias?}` of a conv: OIHW (or OIL for 1-D) -> HWIO."""
        weight = self.raw(f"{prefix}.weight")
        params = {"kernel": np.moveaxis(weight, (0, 1), (-1, -2))}
        if bias or (bias is None and f"{prefix}.bias" in self.tensors):
            params["bias"] = self.raw(f"{prefix}.bias")
        return params

    def dense(self, prefix: str, input_layout: tuple[int, int, int] | None = None) -> dict:
        """`{kernel, bias}` of a linear layer: (out, in) -> (in, out).

        Args:
          prefix: the layer's key prefix.
          input_layout: `(C, H, W)` when the layer reads a flattened NCHW feature map: the rows
            are reordered to the NHWC flattening order cnnjax uses.
        """
        weight = self.raw(f"{prefix}.weight")
        if input_layout is not None:
            channels, height, width = input_layout
            weight = weight.reshape(-1, channels, height, width).transpose(0, 2, 3, 1)
            weight = weight.reshape(weight.shape[0], -1)
        params = {"kernel": weight.T}
        if f"{prefix}.bias" in self.tensors:
            params["bias"] = self.raw(f"{prefix}.bias")
        return params

    def batch_norm(self, prefix: str) -> tuple[dict, dict]:
        """`({scale, bias}, {mean, var})` of a BatchNorm layer."""
        params = {"scale": self.raw(f"{prefix}.weight"), "bias": self.raw(f"{prefix}.bias")}
        stats = {
            "mean": self.raw(f"{prefix}.running_mean"),
            "var": self.raw(f"{prefix}.running_var"),
        }
        return params, stats

    def check_all_used(self) -> None:
        """Raises `CheckpointError` naming any tensor the converter did not consume."""
        unused = sorted(set(self.tensors) - self.used)
        if unused:
            raise CheckpointError(
                f"{len(unused)} torch tensors were not converted: {', '.join(unused[:8])}"
                + (" ..." if len(unused) > 8 else "")
            )


def from_torch(name: str, state_dict: Mapping[str, Any]) -> dict:
    """Variables of cnnjax model `name` holding the weights of a torchvision state dict.

    Raises:
      ConfigError: `name` is not a registered model with a converter.
      CheckpointError: a missing or unused tensor (the architectures do not correspond).
    """
    # Importing this module ran `cnnjax/models/__init__.py` first, so every family is registered.
    convertible = convertible_models()
    if name not in convertible:
        raise ConfigError(unknown_choice("model with a torchvision converter", name, convertible))
    info = model_info(name)
    reader = TorchReader(state_dict)
    variables = info.converter(reader)
    reader.check_all_used()
    _check_shapes(name, variables, info.abstract_variables())
    return variables


def _check_shapes(name: str, got: dict, expected: dict) -> None:
    """Raises `CheckpointError` unless `got` has exactly the variables and shapes of `expected`."""
    got_flat = _flatten(got)
    expected_flat = _flatten(expected)
    problems = [f"missing {k}" for k in sorted(set(expected_flat) - set(got_flat))]
    problems += [f"unexpected {k}" for k in sorted(set(got_flat) - set(expected_flat))]
    problems += [
        f"{k}: {got_flat[k]} != {expected_flat[k]}"
        for k in sorted(set(got_flat) & set(expected_flat))
        if got_flat[k] != expected_flat[k]
    ]
    if problems:
        raise CheckpointError(
            f"converted {name} variables do not fit the model: {'; '.join(problems[:6])}"
        )


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, tuple[int, ...]]:
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(_flatten(value, path))
        else:
            flat[path] = tuple(value.shape)
    return flat
