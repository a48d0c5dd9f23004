"""Optimizers and learning-rate schedules built from config.

  optimizer: name (sgd | adam | adamw), lr, momentum, nesterov, b1, b2, weight_decay,
             decay_mask (all | kernels), grad_clip_norm
  schedule:  name (constant | piecewise | cosine), boundaries, decay_factor, warmup_steps,
             final_lr_fraction

Weight decay for SGD and Adam is the classic L2 term added to the gradient (what PyTorch's
`weight_decay` and He et al. 2016 use); AdamW decouples it (Loshchilov & Hutter 2019).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping
from typing import Any

import jax
import optax

from cnnjax.compress import prune, quantize
from cnnjax.errors import ConfigError, unknown_choice

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "piecewise", "cosine")
DECAY_MASKS = ("all", "kernels")


def make_schedule(schedule: Mapping[str, Any], base_lr: float, num_steps: int) -> optax.Schedule:
    """Learning rate as a function of the step.

    * constant: `base_lr`.
    * piecewise: `base_lr` multiplied by `decay_factor` at each of `boundaries` (steps), as in
      He et al. 2016 (0.1, divided by 10 at 32k and 48k iterations).
    * cosine: half-cosine from `base_lr` to `final_lr_fraction * base_lr` at `num_steps`.

    A linear warmup from 0 over `warmup_steps` precedes any of them (the main schedule's clock
    starts after the warmup).
    """
    name = schedule["name"]
    warmup = int(schedule.get("warmup_steps", 0))
    if name not in SCHEDULES:
        raise ConfigError(unknown_choice("schedule.name", name, SCHEDULES))
    if not 0 <= warmup < num_steps:
        raise ConfigError(f"schedule.warmup_steps={warmup} must be in [0, num_steps={num_steps})")
    if name == "constant":
        main = optax.constant_schedule(base_lr)
    elif name == "piecewise":
        boundaries = [int(b) for b in schedule.get("boundaries", ())]
        if boundaries != sorted(boundaries) or any(not 0 < b < num_steps for b in boundaries):
            raise ConfigError(
                f"schedule.boundaries={tuple(boundaries)} must increase and lie in (0, "
                f"num_steps={num_steps})"
            )
        factor = float(schedule.get("decay_factor", 0.1))
        # The update after b iterations (optax count b) already uses the decayed rate, as in
        # the paper and PyTorch's MultiStepLR (tests/train/test_optim.py checks the boundary).
        main = optax.piecewise_constant_schedule(base_lr, {b - warmup: factor for b in boundaries})
    else:
        main = optax.cosine_decay_schedule(
            base_lr, num_steps - warmup, alpha=float(schedule.get("final_lr_fraction", 0.0))
        )
    if warmup == 0:
        return main
    ramp = optax.linear_schedule(0.0, base_lr, warmup)
    return optax.join_schedules([ramp, main], [warmup])


def _kernel_mask(params):
    """True for weights with more than one dimension (conv and dense kernels)."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(
    optimizer: Mapping[str, Any], schedule: Mapping[str, Any], num_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Returns `(tx, lr_schedule)` for the config sections `optimizer` and `schedule`."""
    name = optimizer["name"]
    if name not in OPTIMIZERS:
        raise ConfigError(unknown_choice("optimizer.name", name, OPTIMIZERS))
    lr = float(optimizer["lr"])
    if not lr > 0:
        raise ConfigError(f"optimizer.lr must be positive, got {lr}")
    lr_schedule = make_schedule(schedule, lr, num_steps)
    weight_decay = float(optimizer.get("weight_decay", 0.0))
    mask_name = optimizer.get("decay_mask", "all")
    if mask_name not in DECAY_MASKS:
        raise ConfigError(unknown_choice("optimizer.decay_mask", mask_name, DECAY_MASKS))
    mask = _kernel_mask if mask_name == "kernels" else None

    chain = []
    clip = float(optimizer.get("grad_clip_norm", 0.0))
    if clip > 0:
        chain.append(optax.clip_by_global_norm(clip))
    if name == "adamw":
        chain.append(
            optax.adamw(
                lr_schedule,
                b1=optimizer.get("b1", 0.9),
                b2=optimizer.get("b2", 0.999),
                weight_decay=weight_decay,
                mask=mask,
            )
        )
    else:
        if weight_decay > 0:
            chain.append(optax.add_decayed_weights(weight_decay, mask))
        if name == "sgd":
            momentum = float(optimizer.get("momentum", 0.0))
            chain.append(
                optax.sgd(
                    lr_schedule,
                    momentum=momentum or None,
                    nesterov=bool(optimizer.get("nesterov", False)),
                )
            )
        else:
            chain.append(
                optax.adam(lr_schedule, b1=optimizer.get("b1", 0.9), b2=optimizer.get("b2", 0.999))
            )
    return optax.chain(*chain), lr_schedule


def parameter_groups(params, frozen=(), lr_multipliers: Mapping[str, float] | None = None):
    """Labels each parameter "frozen", `"lr*<factor>"` or "default" by glob over its name.

    Names are "/"-joined paths such as "stage1/block0/conv1/kernel"; a pattern also matches a
    parameter when it matches the parameter's module path ("output" matches "output/kernel" and
    "output/bias"). `frozen` wins over `lr_multipliers`; among multipliers the first match wins.

    Raises:
      ConfigError: a pattern that matches no parameter, or a multiplier that is not > 0.
    """
    lr_multipliers = dict(lr_multipliers or {})
    flat = jax.tree_util.tree_flatten_with_path(params)
    names = ["/".join(str(k.key) for k in path) for path, _ in flat[0]]

    def matches(name, pattern):
        module = name.rsplit("/", 1)[0]
        return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(module, pattern)

    for where, patterns in (("frozen", frozen), ("lr_multipliers", lr_multipliers)):
        for pattern in patterns:
            if not any(matches(name, pattern) for name in names):
                raise ConfigError(unknown_choice(f"{where} parameter pattern", pattern, names))
    for pattern, factor in lr_multipliers.items():
        if not (isinstance(factor, int | float) and math.isfinite(factor) and factor > 0):
            raise ConfigError(f"lr_multipliers[{pattern!r}] must be a number > 0, got {factor!r}")

    def label(name):
        if any(matches(name, p) for p in frozen):
            return "frozen"
        for pattern, factor in lr_multipliers.items():
            if matches(name, pattern):
                return f"lr*{float(factor)!r}"
        return "default"

    return jax.tree_util.tree_unflatten(flat[1], [label(name) for name in names])


def make_grouped_optimizer(
    optimizer: Mapping[str, Any],
    schedule: Mapping[str, Any],
    num_steps: int,
    labels=None,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """`make_optimizer`, with per-group learning rates and frozen groups (`parameter_groups`).

    Each labelled group gets its own copy of the optimizer with the learning rate scaled by the
    group's factor (same schedule shape), frozen parameters get zero updates (and no optimizer
    state). Without labels, or with every label "default", this is `make_optimizer`.
    """
    tx, lr_schedule = make_optimizer(optimizer, schedule, num_steps)
    used = set(jax.tree.leaves(labels)) if labels is not None else {"default"}
    if used == {"default"}:
        return tx, lr_schedule
    transforms = {}
    for name in used:
        if name == "frozen":
            transforms[name] = optax.set_to_zero()
        elif name == "default":
            transforms[name] = tx
        else:
            factor = float(name.removeprefix("lr*"))
            scaled = {**optimizer, "lr": float(optimizer["lr"]) * factor}
            transforms[name] = make_optimizer(scaled, schedule, num_steps)[0]
    return optax.multi_transform(transforms, labels), lr_schedule


def pruning_optimizer(
    tx: optax.GradientTransformation, prune_config: Mapping[str, Any], params, num_steps: int
) -> optax.GradientTransformation:
    """`tx` wrapped by `cnnjax.compress.prune.keep_pruned` as the config's `prune` section says
    (unchanged for method "none").

    Raises:
      ConfigError: a layer pattern that matches no kernel, or a schedule whose last pruning
        event falls after the last step (the final sparsity would never be reached).
    """
    method = prune_config["method"]
    if method == "none":
        return tx
    # Layer patterns first; `sparsity` then sets every kernel no pattern names.
    patterns = dict(prune_config.get("layer_sparsity") or {})
    if float(prune_config["sparsity"]) > 0:
        patterns["*"] = float(prune_config["sparsity"])
    if method != "fixed" and not any(v > 0 for v in patterns.values()):
        raise ConfigError(
            f"prune.method={method!r} prunes nothing: set prune.sparsity or prune.layer_sparsity"
        )
    sparsities = prune.layer_sparsities(params, patterns, tuple(prune_config.get("exclude", ())))
    end_step = int(prune_config.get("end_step", 0)) or num_steps - 1
    schedule = prune.PruningSchedule(
        kind=prune_config["schedule"],
        begin_step=int(prune_config.get("begin_step", 0)),
        end_step=end_step,
        frequency=int(prune_config.get("frequency", 100)),
        rounds=int(prune_config.get("rounds", 1)),
        initial_sparsity=float(prune_config.get("initial_sparsity", 0.0)),
    )
    if method != "fixed" and schedule.last_step >= num_steps:
        raise ConfigError(
            f"the last pruning event of prune.schedule={schedule.kind!r} is at update "
            f"{schedule.last_step}, but the run has {num_steps} steps (updates 0..{num_steps - 1})"
        )
    return prune.keep_pruned(tx, sparsities, method, prune_config.get("scope", "layer"), schedule)


def sharing_optimizer(tx: optax.GradientTransformation, share_config: Mapping[str, Any], params):
    """`(tx, params)` for the config's `share` section: unchanged when no kernel is given bits;
    else the parameters' kernels k-means shared (`cnnjax.compress.quantize.share_params`) and `tx`
    wrapped by `keep_shared`, which fine-tunes the centroids.

    Raises:
      ConfigError: a layer pattern that matches no kernel, or an unknown init.
    """
    bits = dict(share_config.get("layer_bits") or {})
    if int(share_config.get("bits", 0)) > 0:
        bits["*"] = int(share_config["bits"])
    if not bits:
        return tx, params
    shared, assignments = quantize.share_params(
        params, bits, tuple(share_config.get("exclude", ())), share_config.get("init", "linear")
    )
    return quantize.keep_shared(tx, assignments), shared
