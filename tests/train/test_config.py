"""Numeric config fields outside their range are refused before anything compiles."""

import math

import pytest

from cnnjax.errors import ConfigError
from cnnjax.train.config import base_config, validate_config

BAD_VALUES = [
    ("label_smoothing", 5.0, r"label_smoothing must be in \[0, 1\), got 5.0"),
    ("label_smoothing", -0.1, r"label_smoothing must be in \[0, 1\)"),
    ("num_steps", -5, r"num_steps must be an integer >= 0 \(0 = use num_epochs\), got -5"),
    ("num_epochs", math.nan, "num_epochs must be a finite number, got nan"),
    ("optimizer.lr", math.inf, "optimizer.lr must be a finite number > 0, got inf"),
    ("optimizer.lr", 0.0, "optimizer.lr must be a finite number > 0, got 0.0"),
    ("optimizer.momentum", 1.0, r"optimizer.momentum must be in \[0, 1\)"),
    ("optimizer.b2", 1.5, r"optimizer.b2 must be in \[0, 1\)"),
    ("optimizer.weight_decay", -1e-4, "optimizer.weight_decay must be a finite number >= 0"),
    ("optimizer.grad_clip_norm", -1.0, "optimizer.grad_clip_norm must be a finite number >= 0"),
    ("schedule.decay_factor", 0.0, "schedule.decay_factor must be a finite number > 0"),
    ("schedule.warmup_steps", -1, "schedule.warmup_steps must be an integer >= 0"),
    ("schedule.final_lr_fraction", 2.0, r"schedule.final_lr_fraction must be in \[0, 1\]"),
    ("seed", -1, r"seed must be an integer in \[0, 2\*\*32\), got -1"),
    ("seed", 2**32, r"seed must be an integer in \[0, 2\*\*32\)"),
    ("data.num_workers", -1, "data.num_workers must be an integer >= 0"),
    ("data.prefetch", -1, "data.prefetch must be an integer >= 0, got -1"),
    ("input_shape", (0, 0, 1), r"input shape \(0, 0, 1\) must be positive integers, e.g."),
    ("input_shape", (32, 32), r"input shape \(32, 32\) has 2 dimensions; model .lenet5. takes 3"),
]


def with_value(key, value):
    config = base_config()
    *parents, leaf = key.split(".")
    target = config
    for parent in parents:
        target = target[parent]
    target[leaf] = value
    return config


@pytest.mark.parametrize("key, value, message", BAD_VALUES)
def test_out_of_range_values_are_config_errors(key, value, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(with_value(key, value))


@pytest.mark.parametrize(
    "key, value",
    [
        ("label_smoothing", 0.1),
        ("num_steps", 0),
        ("optimizer.lr", 1),
        ("optimizer.b2", 0.999),
        ("seed", 2**32 - 1),
        ("data.prefetch", 0),
        ("input_shape", (16, 16, 1)),
    ],
)
def test_values_at_and_inside_the_limits_are_accepted(key, value):
    validate_config(with_value(key, value))
