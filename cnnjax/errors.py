"""User-facing errors.

Every error a user can cause (a typo in a config key, an unknown model, a kernel larger than its
input, missing data, a corrupt checkpoint, a diverging loss) is raised as a `CnnjaxError`. The
command-line entry point prints such errors as a single line and exits with a non-zero status, so
nothing deep inside jax reaches the user as a bare traceback.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Iterable


class CnnjaxError(Exception):
    """Base class of errors caused by user input; the message alone explains the problem."""


class ConfigError(CnnjaxError, ValueError):
    """An unknown or invalid configuration value."""


class ShapeError(CnnjaxError, ValueError):
    """An input whose shape cannot go through a layer (e.g. kernel larger than padded input)."""


class DataError(CnnjaxError):
    """Missing or unusable data."""


class CheckpointError(CnnjaxError):
    """A checkpoint that cannot be restored: corrupt, or written by an incompatible config."""


class NonFiniteLossError(CnnjaxError):
    """Training produced a NaN or infinite loss and was stopped."""


class Preempted(CnnjaxError):
    """The run got SIGTERM (how clusters preempt a job), saved a checkpoint and stopped.

    Commands exit with `EXIT_STATUS`, the status of a process ended by SIGTERM, which schedulers
    read as "preempted, requeue" rather than as a failure of the job itself.
    """

    EXIT_STATUS = 128 + 15


def unknown_choice(what: str, value: object, choices: Iterable[str]) -> str:
    """Formats "unknown <what> 'x'; did you mean 'y'? valid choices: a, b, c".

    Args:
      what: what kind of value was looked up ("model", "optimizer", ...).
      value: the value the user gave.
      choices: the accepted values.

    Returns:
      A one-line message naming the bad value, the closest match and all valid choices.
    """
    choices = sorted(choices)
    message = f"unknown {what} {value!r}"
    close = difflib.get_close_matches(str(value), choices, n=3)
    if close:
        # Among similar names prefer the longest shared prefix: 'resnet21' -> 'resnet20'.
        best = max(close, key=lambda c: len(os.path.commonprefix([c, str(value)])))
        message += f"; did you mean {best!r}?"
    return f"{message} (valid choices: {', '.join(choices)})"


def fail(message: str, status: int = 2) -> None:
    """Prints one `error: <message>` line to stderr and exits with `status` (command lines)."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(status)
