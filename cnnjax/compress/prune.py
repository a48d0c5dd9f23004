"""Magnitude pruning: masks, schedules, and an optax wrapper that keeps pruned weights at zero.

* Unstructured (Han et al. 2015): the smallest-magnitude weights of each layer ("layer" scope)
  or of all layers together ("global" scope) are removed.
* Structured (Li et al. 2017): whole output filters of a conv (or output units of a dense layer)
  with the smallest L1 norms are removed, layer by layer.
* Schedules: one-shot (everything at `begin_step`), iterative (`rounds` equal fractions of the
  remaining weights, `frequency` steps apart: Han et al.'s prune-retrain cycles and Frankle &
  Carbin's 20% per round) and gradual (Zhu & Gupta 2017: `s_t = s_f + (s_i - s_f)(1 - p)^3`
  with `p` the fraction of `[begin_step, end_step]` elapsed, pruning every `frequency` steps).

Masks are a boolean pytree with the structure of the parameters (all true on leaves that are
not pruned). `keep_pruned` holds them in the optimizer state, so they are saved in every orbax
checkpoint of the train state and come back with it; `masks_of(opt_state)` reads them.
Prunable leaves are the kernels (leaves with more than one axis): biases and BatchNorm
parameters are few and stay dense, as in Han et al. 2015.

Which weights count: pruned weights are those whose mask is false; a mask never turns a weight
back on (each new mask is intersected with the previous one), and ties in magnitude are broken by
position, so exactly `round(s * n)` weights of a layer with `n` go at sparsity `s`.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from cnnjax.errors import ConfigError, unknown_choice

METHODS = ("magnitude", "l1_filters", "fixed")
SCOPES = ("layer", "global")
SCHEDULES = ("one_shot", "iterative", "gradual")


def leaf_name(path) -> str:
    """`"stage1/conv/kernel"` for a `tree_flatten_with_path` key path."""
    return "/".join(str(getattr(key, "key", getattr(key, "idx", key))) for key in path)


def layer_names(params) -> list[str]:
    """Names of the prunable leaves (kernels) of `params`, e.g. `["fc1/kernel", "out/kernel"]`."""
    return [
        leaf_name(path)
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
        if is_prunable(leaf)
    ]


def is_prunable(leaf) -> bool:
    """Kernels of convs and dense layers: leaves with more than one axis."""
    return jnp.ndim(leaf) > 1


def layer_sparsities(params, sparsity: float | Mapping[str, float], exclude=()) -> dict[str, float]:
    """`{kernel name: fraction to prune}` for every prunable leaf.

    Args:
      params: parameter pytree.
      sparsity: one fraction for every layer, or `{pattern: fraction}` where a pattern is a
        shell-style glob over kernel names (`"fc1/*"`, `"*conv*"`); the first pattern that matches
        wins, and a `"*"` entry sets the rest (layers matching no pattern are not pruned).
      exclude: glob patterns of kernels never pruned (e.g. `("output/*",)`).

    Raises:
      ConfigError: a fraction outside `[0, 1)`, or a pattern that matches no kernel.
    """
    names = layer_names(params)
    patterns = dict(sparsity) if isinstance(sparsity, Mapping) else {"*": sparsity}
    for pattern, value in patterns.items():
        if not (isinstance(value, int | float) and 0 <= value < 1):
            raise ConfigError(f"sparsity of {pattern!r} must be in [0, 1), got {value!r}")
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            raise ConfigError(unknown_choice("sparsity layer pattern", pattern, names))
    result = {}
    for name in names:
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in exclude):
            result[name] = 0.0
            continue
        matches = [v for p, v in patterns.items() if fnmatch.fnmatchcase(name, p)]
        result[name] = float(matches[0]) if matches else 0.0
    return result


def _keep_largest(scores: jnp.ndarray, num_pruned) -> jnp.ndarray:
    """Boolean mask over the 1-D `scores` that drops the `num_pruned` smallest (ties by position).

    `num_pruned` may be traced: ranks come from a double argsort rather than a top-k of static size.
    """
    order = jnp.argsort(scores, stable=True)
    ranks = jnp.empty_like(order).at[order].set(jnp.arange(order.size, dtype=order.dtype))
    return ranks >= num_pruned


def _count(fraction, size: int):
    return jnp.round(jnp.asarray(fraction, jnp.float32) * size).astype(jnp.int32)


def magnitude_masks(
    params,
    sparsities: Mapping[str, Any],
    scope: str = "layer",
    previous=None,
):
    """Masks that drop the smallest-magnitude weights.

    Args:
      params: parameter pytree.
      sparsities: `{kernel name: fraction}` from `layer_sparsities` (fractions may be traced).
        With `scope="global"` one threshold is shared by every kernel whose fraction is positive,
        and the number of weights removed is the sum of the per-layer counts.
      scope: "layer" or "global".
      previous: masks to intersect with (pruned weights stay pruned).

    Returns:
      Boolean masks with the structure of `params`.
    """
    if scope not in SCOPES:
        raise ConfigError(unknown_choice("pruning scope", scope, SCOPES))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    old = jax.tree.leaves(previous) if previous is not None else [None] * len(leaves)
    names = [leaf_name(path) for path, _ in leaves]
    # Weights already pruned score -1, below every live weight, so they are counted first.
    scores = [
        jnp.where(o, jnp.abs(leaf), -1.0) if o is not None else jnp.abs(leaf)
        for (_, leaf), o in zip(leaves, old)
    ]
    masks = [jnp.ones(jnp.shape(leaf), bool) for _, leaf in leaves]
    chosen = [i for i, name in enumerate(names) if name in sparsities]
    if scope == "layer":
        for i in chosen:
            flat = scores[i].reshape(-1)
            keep = _keep_largest(flat, _count(sparsities[names[i]], flat.size))
            masks[i] = keep.reshape(scores[i].shape)
    else:
        pooled = [i for i in chosen if not _is_zero(sparsities[names[i]])]
        if pooled:
            flat = jnp.concatenate([scores[i].reshape(-1) for i in pooled])
            total = sum(_count(sparsities[names[i]], scores[i].size) for i in pooled)
            keep = _keep_largest(flat, total)
            offset = 0
            for i in pooled:
                size = scores[i].size
                masks[i] = keep[offset : offset + size].reshape(scores[i].shape)
                offset += size
    if previous is not None:
        masks = [m & o for m, o in zip(masks, old)]
    return jax.tree_util.tree_unflatten(treedef, masks)


def _is_zero(value) -> bool:
    return isinstance(value, int | float) and value == 0


def filter_masks(params, sparsities: Mapping[str, Any], previous=None):
    """Masks that drop whole output filters (last kernel axis) by L1 norm (Li et al. 2017).

    A conv kernel `(H, W, I, O)` or dense kernel `(I, O)` loses `round(s * O)` of its `O` output
    channels: those whose weights have the smallest sum of absolute values. The same channels of
    the layer's bias are dropped with them (a sibling leaf named "bias" of length `O`).

    Args:
      params: parameter pytree.
      sparsities: `{kernel name: fraction of filters}`.
      previous: masks to intersect with.
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    names = [leaf_name(path) for path, _ in flat]
    index = {name: i for i, name in enumerate(names)}
    old = jax.tree.leaves(previous) if previous is not None else None
    masks = [jnp.ones(jnp.shape(leaf), bool) for _, leaf in flat]
    for name, fraction in sparsities.items():
        i = index[name]
        kernel = flat[i][1]
        if old is not None:
            kernel = jnp.where(old[i], kernel, 0.0)
        norms = jnp.sum(jnp.abs(kernel), axis=tuple(range(kernel.ndim - 1)))
        if old is not None:  # filters already removed rank first
            alive = jnp.any(old[i], axis=tuple(range(kernel.ndim - 1)))
            norms = jnp.where(alive, norms, -1.0)
        keep = _keep_largest(norms, _count(fraction, norms.size))
        masks[i] = jnp.broadcast_to(keep, kernel.shape)
        bias = index.get(name.rsplit("/", 1)[0] + "/bias") if "/" in name else index.get("bias")
        if bias is not None and jnp.shape(flat[bias][1]) == keep.shape:
            masks[bias] = keep
    if old is not None:
        masks = [m & o for m, o in zip(masks, old)]
    return jax.tree_util.tree_unflatten(treedef, masks)


def nonzero_masks(params):
    """Masks that freeze the zeros of `params`' kernels (retraining an already pruned model)."""
    return jax.tree.map(lambda p: p != 0 if is_prunable(p) else jnp.ones(p.shape, bool), params)


def apply_masks(params, masks):
    """`params` with every masked-out weight set to exactly zero."""
    return jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros_like(p)), params, masks)


def sparsity_report(params, masks=None) -> dict[str, dict[str, int]]:
    """`{kernel name: {"weights", "kept"}}` (kept = mask true, or nonzero without masks)."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    kept = jax.tree.leaves(masks) if masks is not None else [p != 0 for _, p in leaves]
    return {
        leaf_name(path): {"weights": int(leaf.size), "kept": int(jnp.sum(k))}
        for (path, leaf), k in zip(leaves, kept)
        if is_prunable(leaf)
    }


@dataclasses.dataclass(frozen=True)
class PruningSchedule:
    """When masks are recomputed and to which fraction of each layer's final sparsity.

    Attributes:
      kind: "one_shot", "iterative" or "gradual" (module docstring).
      begin_step: optimizer update count at which the first pruning happens.
      end_step: gradual: the update at which the final sparsity is reached.
      frequency: steps between pruning events (iterative and gradual).
      rounds: iterative: number of pruning rounds.
      initial_sparsity: gradual: `s_i`, the fraction pruned at `begin_step` (per layer, capped at
        the layer's final fraction).
    """

    kind: str = "one_shot"
    begin_step: int = 0
    end_step: int = 0
    frequency: int = 100
    rounds: int = 1
    initial_sparsity: float = 0.0

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise ConfigError(unknown_choice("pruning schedule", self.kind, SCHEDULES))
        if self.begin_step < 0 or self.frequency < 1 or self.rounds < 1:
            raise ConfigError(
                f"pruning needs begin_step >= 0, frequency >= 1 and rounds >= 1, got "
                f"{self.begin_step}, {self.frequency}, {self.rounds}"
            )
        if self.kind == "gradual" and self.end_step <= self.begin_step:
            raise ConfigError(
                f"gradual pruning needs end_step > begin_step, got {self.end_step} <= "
                f"{self.begin_step}"
            )
        if not 0 <= self.initial_sparsity < 1:
            raise ConfigError(f"initial_sparsity must be in [0, 1), got {self.initial_sparsity}")

    @property
    def last_step(self) -> int:
        """The update count of the last pruning event."""
        if self.kind == "one_shot":
            return self.begin_step
        if self.kind == "iterative":
            return self.begin_step + (self.rounds - 1) * self.frequency
        return self.end_step

    def is_pruning_step(self, count) -> jnp.ndarray:
        """Whether update number `count` (0-based) recomputes the masks."""
        offset = count - self.begin_step
        on_grid = (offset >= 0) & (count <= self.last_step)
        if self.kind == "one_shot":
            return count == self.begin_step
        if self.kind == "gradual":
            return on_grid & ((offset % self.frequency == 0) | (count == self.end_step))
        return on_grid & (offset % self.frequency == 0)

    def fraction(self, final: float, count) -> jnp.ndarray:
        """Sparsity of a layer whose final sparsity is `final`, at update `count`."""
        final = jnp.asarray(final, jnp.float32)
        count = jnp.asarray(count, jnp.float32)
        if self.kind == "one_shot":
            return jnp.where(count >= self.begin_step, final, 0.0)
        if self.kind == "iterative":
            done = jnp.clip(
                jnp.floor((count - self.begin_step) / self.frequency) + 1, 0, self.rounds
            )
            return 1.0 - (1.0 - final) ** (done / self.rounds)
        progress = jnp.clip((count - self.begin_step) / (self.end_step - self.begin_step), 0, 1)
        start = jnp.minimum(self.initial_sparsity, final)
        value = final + (start - final) * (1.0 - progress) ** 3
        return jnp.where(count >= self.begin_step, value, 0.0)


class KeepPrunedState(NamedTuple):
    """Optimizer state of `keep_pruned`: the inner optimizer's, the masks, the update count."""

    inner_state: Any
    masks: Any
    count: jnp.ndarray


def keep_pruned(
    inner: optax.GradientTransformation,
    sparsities: Mapping[str, float] | None = None,
    method: str = "magnitude",
    scope: str = "layer",
    schedule: PruningSchedule | None = None,
    initial_masks=None,
) -> optax.GradientTransformation:
    """Wraps an optimizer so that pruned weights are exactly zero after every update.

    Gradients of pruned weights are zeroed before `inner` sees them (its moments stay zero), and
    the update of a pruned weight is `-w`, so `w + update` is exactly 0 in floating point; kept
    weights get `inner`'s update unchanged. On the schedule's pruning steps the masks are
    recomputed from the current weights and intersected with the old ones.

    Args:
      inner: the optimizer.
      sparsities: `{kernel name: final fraction}` (`layer_sparsities`); unused for "fixed".
      method: "magnitude" (unstructured), "l1_filters" (structured) or "fixed" (keep the zeros
        the parameters have when the optimizer is initialized, and prune nothing else).
      scope: "layer" or "global" (magnitude only).
      schedule: when to prune; default one-shot at the first update.
      initial_masks: masks to start from (default: all true, or the nonzeros for "fixed").
    """
    if method not in METHODS:
        raise ConfigError(unknown_choice("pruning method", method, METHODS))
    if method == "l1_filters" and scope != "layer":
        raise ConfigError("structured (l1_filters) pruning is layer by layer: use scope='layer'")
    schedule = schedule or PruningSchedule()
    sparsities = dict(sparsities or {})

    def init(params):
        if initial_masks is not None:
            masks = initial_masks
        elif method == "fixed":
            masks = nonzero_masks(params)
        else:
            masks = jax.tree.map(lambda p: jnp.ones(jnp.shape(p), bool), params)
        return KeepPrunedState(inner.init(params), masks, jnp.zeros([], jnp.int32))

    def recompute(params, masks, count):
        # Layers never pruned stay out (a traced zero would still join the global pool).
        targets = {name: schedule.fraction(s, count) for name, s in sparsities.items() if s > 0}
        if method == "l1_filters":
            return filter_masks(params, targets, previous=masks)
        return magnitude_masks(params, targets, scope, previous=masks)

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("keep_pruned needs the parameters: call update(grads, state, params)")
        masks = state.masks
        if method != "fixed" and sparsities:
            masks = jax.lax.cond(
                schedule.is_pruning_step(state.count),
                lambda: recompute(params, masks, state.count),
                lambda: masks,
            )
        grads = apply_masks(updates, masks)
        inner_updates, inner_state = inner.update(grads, state.inner_state, params)
        updates = jax.tree.map(lambda u, p, m: jnp.where(m, u, -p), inner_updates, params, masks)
        return updates, KeepPrunedState(inner_state, masks, state.count + 1)

    return optax.GradientTransformation(init, update)


def find_state(opt_state, state_type):
    """The first node of type `state_type` in an optimizer state (searched through the tuples,
    lists and mappings optax wrappers build), or None."""
    if isinstance(opt_state, state_type):
        return opt_state
    children = opt_state.values() if isinstance(opt_state, Mapping) else opt_state
    if isinstance(opt_state, tuple | list | Mapping):
        for child in children:
            found = find_state(child, state_type)
            if found is not None:
                return found
    return None


def masks_of(opt_state):
    """The masks held by a `keep_pruned` optimizer state (searched through wrappers), or None."""
    found = find_state(opt_state, KeepPrunedState)
    return None if found is None else found.masks
