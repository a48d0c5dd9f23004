"""What the config files share: one way to read a variant, and the training recipes they repeat.

A config file's `get_config(arg)` receives the text after the colon of
`--config=configs/<file>.py:<arg>` (None without a colon). Every config reads it with `variant`,
so that a typo is an error naming the valid variants instead of silently another config.

Config files import this module as `configs.common`: `configs/` is a package, and the command
line (`cnnjax.cli.load_config`) and the tests load config files with the repository root on
`sys.path`.
"""

from __future__ import annotations

from collections.abc import Iterable

import ml_collections

from cnnjax.errors import ConfigError, unknown_choice
from cnnjax.train.config import base_config


def variant(arg: str | None, choices: Iterable[str] = (), default: str | None = None):
    """The variant `arg` names: `default` when there is none (no colon, or nothing after it).

    Args:
      arg: `get_config`'s argument.
      choices: the config's variants; none for a config without variants.
      default: the variant without an argument.

    Returns:
      `arg`, or `default` for None and "".

    Raises:
      ConfigError: `arg` is not one of `choices` (the message names the closest and all of them).
    """
    if arg is None or arg == "":
        return default
    choices = list(choices)
    if not choices:
        raise ConfigError(f"this config has no variants; drop ':{arg}'")
    if arg not in choices:
        raise ConfigError(unknown_choice("variant", arg, choices))
    return arg


def adam_cosine_config(lr: float, warmup_steps: int = 0) -> ml_collections.ConfigDict:
    """`base_config()` trained with Adam at `lr`, decayed by a cosine after a linear warmup."""
    c = base_config()
    c.optimizer.name = "adam"
    c.optimizer.lr = lr
    c.schedule.name = "cosine"
    c.schedule.warmup_steps = warmup_steps
    return c


def cifar_sgd_config(
    num_steps: int,
    batch_size: int = 128,
    dataset: str = "cifar10_jpeg",
    lr: float = 0.1,
    paper_schedule: bool = False,
) -> ml_collections.ConfigDict:
    """The CIFAR SGD recipe: SGD 0.9, weight decay 5e-4 on kernels, 4-pixel zero padding + crop
    + flip (the ablations'; configs/resnet20_cifar10.py puts He et al.'s 1e-4 on every parameter).

    The schedule is cosine with a 1/16 warmup, or with `paper_schedule` He et al.'s lr / 10 at
    50% and 75% of `num_steps` (32k and 48k of 64k). Logs 8 times and checkpoints 4 times a run,
    evaluates only at the end; the model and its fields are the caller's to set.
    """
    c = base_config()
    c.dataset = dataset
    c.batch_size = batch_size
    c.num_steps = num_steps
    c.optimizer.update(name="sgd", lr=lr, momentum=0.9, weight_decay=5e-4, decay_mask="kernels")
    if paper_schedule:
        c.schedule.update(name="piecewise", boundaries=(num_steps // 2, num_steps * 3 // 4))
    else:
        c.schedule.update(name="cosine", warmup_steps=max(1, num_steps // 16))
    c.augment.update(crop_padding=4, flip=True)
    c.log_every = max(1, num_steps // 8)
    c.eval_every = 0
    c.checkpoint_every = max(1, num_steps // 4)
    return c
