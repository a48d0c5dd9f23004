"""Optimizers and learning-rate schedules built from config.

  optimizer: name (sgd | adam | adamw), lr, momentum, nesterov, b1, b2, weight_decay,
             decay_mask (all | kernels), grad_clip_norm
  schedule:  name (constant | piecewise | cosine), boundaries, decay_factor, warmup_steps,
             final_lr_fraction

Weight decay for SGD and Adam is the classic L2 term added to the gradient (what PyTorch's
`weight_decay` and He et al. 2016 use); AdamW decouples it (Loshchilov & Hutter 2019).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import optax

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
