"""Channel-pruned models made smaller: removed filters taken out of the arrays for real.

Structured pruning (`prune.filter_masks`, Li et al. 2017) zeroes whole output filters, which
costs as much to run as the dense model. `make_compact` deletes them: each zero filter of a
producer layer goes, with its bias and the entries of the BatchNorm after it, and so do the
input slices of the layer that reads it; the result is a dense model of the same family with
smaller width fields (`hidden` of the LeNet MLPs, `features`/`hidden` of `LeNetCaffe`, `widths`
and `hidden` of VGG), which `cnnjax.bench` runs faster.

A removed filter still emits a constant in eval mode: `act(BN(bias))` (its bias, or the
BatchNorm's shift of a zero input). That constant is folded into the next layer, into its bias
or, when it has none and a BatchNorm follows, into that BatchNorm's running mean. Through a dense
layer or an unpadded ("valid") convolution the fold is exact, so the compact model computes the
same function; through a zero-padded convolution the constant is not added at the border pixels,
so the fold is exact in the interior only (the report says which links were exact; a short
fine-tuning repairs the border, as Li et al. retrain after pruning).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from cnnjax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Link:
    """One producer -> consumer edge whose channels can be removed together.

    Attributes:
      producer: module whose output units (last kernel axis) may go.
      consumer: module reading them: a dense layer (kernel rows; a flattened `H x W x C` map
        has `H W` rows per channel, channel fastest) or a conv (HWIO axis 2).
      act: activation between them (after the BatchNorm), None for identity.
      norm: BatchNorm module after the producer, or None.
      consumer_norm: BatchNorm after the consumer, for folding when the consumer has no bias.
      padded: the consumer is a zero-padded convolution (folding is exact in the interior only).
    """

    producer: str
    consumer: str
    act: Callable | None = None
    norm: str | None = None
    consumer_norm: str | None = None
    padded: bool = False


def _lenet_mlp(module) -> tuple[list[Link], Callable]:
    names = [f"fc{i + 1}" for i in range(len(module.hidden))] + ["output"]
    links = [Link(a, b, module.act) for a, b in zip(names, names[1:])]
    return links, lambda kept: {"hidden": [kept[n] for n in names[:-1]]}


def _lenet_caffe(module) -> tuple[list[Link], Callable]:
    links = [
        Link("conv1", "conv2", module.conv_act),
        Link("conv2", "ip1", module.conv_act),
        Link("ip1", "ip2", module.act),
    ]
    return links, lambda kept: {"features": [kept["conv1"], kept["conv2"]], "hidden": kept["ip1"]}


def _vgg(module) -> tuple[list[Link], Callable]:
    from cnnjax.models.vgg import block_widths

    blocks = block_widths(module)
    convs = [(b, i) for b, widths in enumerate(blocks, 1) for i in range(1, len(widths) + 1)]
    dense = [f"fc{i}" for i in range(6, 6 + len(module.hidden))] + ["head"]
    has_norm = module.norm is not None
    links = []
    for k, (b, i) in enumerate(convs):
        norm = f"bn{b}_{i}" if has_norm else None
        if k + 1 < len(convs):
            nb, ni = convs[k + 1]
            consumer, consumer_norm, padded = f"conv{nb}_{ni}", f"bn{nb}_{ni}", True
        else:
            consumer, consumer_norm, padded = dense[0], None, False
        links.append(
            Link(
                f"conv{b}_{i}",
                consumer,
                module.act,
                norm,
                consumer_norm if has_norm else None,
                padded,
            )
        )
    links += [Link(a, c, module.act) for a, c in zip(dense, dense[1:])]

    def fields(kept):
        widths, k = [], 0
        for block in blocks:
            widths.append(
                [kept[f"conv{convs[k + j][0]}_{convs[k + j][1]}"] for j in range(len(block))]
            )
            k += len(block)
        return {"widths": widths, "hidden": [kept[n] for n in dense[:-1]]}

    return links, fields


def _plans() -> dict[type, Callable]:
    from cnnjax.models.lenet import LeNetCaffe, LeNetMLP
    from cnnjax.models.vgg import VGG

    return {LeNetMLP: _lenet_mlp, LeNetCaffe: _lenet_caffe, VGG: _vgg}


def links(module) -> list[Link]:
    """The producer -> consumer links of `module`'s family.

    Raises:
      ConfigError: a family without a plan, naming the known ones.
    """
    plans = _plans()
    if type(module) not in plans:
        names = ", ".join(sorted(cls.__name__ for cls in plans))
        raise ConfigError(
            f"cnnjax.compress.compact does not know the family {type(module).__name__} "
            f"(valid: {names})"
        )
    return plans[type(module)](module)[0]


def compactable(module) -> bool:
    return type(module) in _plans()


def producers(module) -> list[str]:
    """The layers of `module` whose output units `make_compact` can remove (every layer another
    one reads; not the classifier)."""
    return [link.producer for link in links(module)]


def _constant(params, stats, link: Link, channels: np.ndarray, epsilon: float) -> np.ndarray:
    """What the removed `channels` of `link.producer` emit in eval mode (their kernel is zero)."""
    producer = params[link.producer]
    z = np.asarray(producer["bias"])[channels] if "bias" in producer else np.zeros(len(channels))
    if link.norm is not None:
        gamma = np.asarray(params[link.norm].get("scale", np.ones_like(z)))[channels]
        beta = np.asarray(params[link.norm].get("bias", np.zeros_like(z)))[channels]
        mean = np.asarray(stats[link.norm]["mean"])[channels]
        var = np.asarray(stats[link.norm]["var"])[channels]
        z = gamma * (z - mean) / np.sqrt(var + epsilon) + beta
    return np.asarray(link.act(z) if link.act is not None else z, np.float64)


def _input_rows(kernel: np.ndarray, channels: int) -> np.ndarray:
    """A consumer's kernel as `(positions, channels, outputs)`: HWIO conv or dense rows."""
    if kernel.ndim == 4:
        return kernel.reshape(-1, kernel.shape[2], kernel.shape[3])
    if kernel.shape[0] % channels:
        raise ConfigError(
            f"a dense kernel of {kernel.shape[0]} rows cannot read {channels} channels"
        )
    return kernel.reshape(kernel.shape[0] // channels, channels, kernel.shape[1])


def make_compact(
    module, variables: Mapping[str, Any], epsilon: float = 1e-5
) -> tuple[dict, dict, list[dict]]:
    """The smaller dense model equivalent to a channel-pruned one.

    Args:
      module: the (pruned) model instance, e.g. `models.create_model("vgg16_cifar")`; its
        family must be one of `LeNetMLP`, `LeNetCaffe`, `VGG`.
      variables: its `{"params", "batch_stats"}`, whole filters of which are zero.
      epsilon: of the BatchNorms (the library's default).

    Returns:
      `(width fields, variables, report)`: the fields to create the compact model with (merged
      over the module's own fields by the caller), its variables, and per link the widths before
      and after and whether the constants of the removed filters were folded exactly.

    Raises:
      ConfigError: a model family without a compaction plan.
    """
    links(module)  # refuses an unknown family
    chain, fields_of = _plans()[type(module)](module)
    tree = jax.tree.map(np.asarray, copy.deepcopy(jax.device_get(dict(variables))))
    params, stats = tree["params"], tree.setdefault("batch_stats", {})
    kept_widths, report = {}, []
    for link in chain:
        kernel = params[link.producer]["kernel"]
        width = kernel.shape[-1]
        alive = np.any(kernel.reshape(-1, width) != 0, axis=0)
        if not alive.any():
            alive[0] = True  # a layer keeps one (zero) unit: widths are at least 1
        removed = np.flatnonzero(~alive)
        constant = _constant(params, stats, link, removed, epsilon)
        consumer = params[link.consumer]
        rows = _input_rows(consumer["kernel"], width)
        shift = np.einsum("pco,c->o", rows[:, removed].astype(np.float64), constant)
        if np.any(shift != 0):
            if "bias" in consumer:
                consumer["bias"] = (consumer["bias"] + shift).astype(consumer["bias"].dtype)
            elif link.consumer_norm is not None:
                mean = stats[link.consumer_norm]["mean"]
                stats[link.consumer_norm]["mean"] = (mean - shift).astype(mean.dtype)
            else:
                raise ConfigError(
                    f"cannot fold the removed filters of {link.producer} into {link.consumer} "
                    "(no bias, no BatchNorm after it)"
                )
        shape = consumer["kernel"].shape
        consumer["kernel"] = rows[:, alive].reshape(*shape[:-2], -1, shape[-1])
        producer = params[link.producer]
        producer["kernel"] = producer["kernel"][..., alive]
        if "bias" in producer:
            producer["bias"] = producer["bias"][alive]
        if link.norm is not None:
            for collection in (params, stats):
                for key, value in collection.get(link.norm, {}).items():
                    collection[link.norm][key] = value[alive]
        kept_widths[link.producer] = int(alive.sum())
        report.append(
            {
                "layer": link.producer,
                "width": int(width),
                "kept": int(alive.sum()),
                "exact": not link.padded or not np.any(constant != 0),
            }
        )
    return fields_of(kept_widths), tree, report
