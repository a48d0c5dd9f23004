"""The config schema: every experiment config starts from `base_config()` and overrides fields.

Validation happens before anything heavy runs, so a typo costs a second, not a compile: unknown
keys, unknown names (model, dataset, optimizer, schedule, padding mode) and impossible values each
raise a `ConfigError` naming the key, the value and the valid choices.
"""

from __future__ import annotations

import math

import ml_collections

from cnnjax import models
from cnnjax.compress import prune
from cnnjax.compress.quantize import INITS
from cnnjax.data.augment import PAD_MODES
from cnnjax.data.pipeline import FIT_METHODS
from cnnjax.data.sources import dataset_spec
from cnnjax.errors import ConfigError, unknown_choice
from cnnjax.layers.components import resolve_components
from cnnjax.train.checkpoint import flatten
from cnnjax.train.losses import LOSSES
from cnnjax.train.optim import DECAY_MASKS, OPTIMIZERS, SCHEDULES
from cnnjax.train.transfer import CHECKPOINTS

PRUNE_METHODS = ("none", *prune.METHODS)


def base_config() -> ml_collections.ConfigDict:
    """All fields a training config has, with defaults (LeNet-5 on scikit-learn digits)."""
    c = ml_collections.ConfigDict()
    c.model = "lenet5"
    c.model_kwargs = ml_collections.ConfigDict()  # overrides of the model's module fields
    c.input_shape = ()  # model input (H, W, C) or (L, C); () = the model's default
    c.loss = ""  # objective (cnnjax.train.losses.LOSSES); "" = the model's default
    c.dataset = "digits"
    c.data_dir = ""  # TFDS folder; "" = $TFDS_DATA_DIR, then ~/tensorflow_datasets
    c.data = ml_collections.ConfigDict(
        dict(
            train_split="train",
            eval_split="test",
            # Also evaluated at every evaluation (records of split "test" in metrics.jsonl) when
            # eval_split is a validation split, e.g. "train[55000:]"; "" = none.
            test_split="",
            fit="",  # "pad" | "resize" to the model input; "" = the dataset's default
            normalize=True,  # per-channel standardization of the inputs
            cache=True,  # decode the splits into memory once
            num_workers=0,  # grain worker processes (used when cache is False)
            prefetch=2,
        )
    )
    c.augment = ml_collections.ConfigDict(dict(crop_padding=0, pad_mode="zeros", flip=False))
    c.batch_size = 128
    c.eval_batch_size = 500
    c.num_steps = 0  # > 0 wins over num_epochs
    c.num_epochs = 10.0
    c.optimizer = ml_collections.ConfigDict(
        dict(
            name="adam",
            lr=1e-3,
            momentum=0.9,
            nesterov=False,
            b1=0.9,
            b2=0.999,
            weight_decay=0.0,
            decay_mask="all",  # "all" parameters or only conv/dense "kernels"
            grad_clip_norm=0.0,
        )
    )
    c.schedule = ml_collections.ConfigDict(
        dict(
            name="constant", boundaries=(), decay_factor=0.1, warmup_steps=0, final_lr_fraction=0.0
        )
    )
    c.label_smoothing = 0.0
    c.seed = 0
    c.log_every = 50
    c.eval_every = 0  # steps between evaluations; 0 = only at the end
    c.checkpoint_every = 500
    c.keep_checkpoints = 3
    c.progress = True
    # Start from another run's checkpoint (cnnjax.train.transfer): parameters and BatchNorm
    # statistics come from it, the optimizer and step start fresh.
    c.init_from = ml_collections.ConfigDict(
        dict(
            workdir="",  # run folder; "" = a fresh initialization
            checkpoint="latest",  # "latest" | "best"
            reinit=(),  # globs of parameters left at their fresh init (e.g. a new "output")
        )
    )
    # Knowledge distillation (Hinton et al. 2015; cnnjax.train.losses.distillation_loss): a
    # finished run of the same dataset as the teacher, its logits the soft targets.
    c.distill = ml_collections.ConfigDict(
        dict(
            teacher="",  # run folder of the teacher; "" = no distillation
            checkpoint="latest",  # "latest" | "best"
            temperature=4.0,  # T of the softmax of both nets' logits
            soft_weight=0.9,  # weight of the T^2-scaled soft term; the rest on the labels
        )
    )
    # Parameter groups of the optimizer (cnnjax.train.optim.parameter_groups), globs over names.
    c.param_groups = ml_collections.ConfigDict(
        dict(
            frozen=(),  # not trained
            lr_multipliers=ml_collections.ConfigDict(),  # {glob: factor of optimizer.lr}
        )
    )
    # Pruning (cnnjax.compress.prune): masks in the optimizer state keep pruned weights at zero.
    c.prune = ml_collections.ConfigDict(
        dict(
            method="none",  # none | magnitude | l1_filters | fixed (keep the initial zeros)
            scope="layer",  # layer | global (magnitude only)
            sparsity=0.0,  # final fraction of every kernel pruned
            layer_sparsity=ml_collections.ConfigDict(),  # {glob over kernel names: fraction}
            exclude=(),  # globs of kernels never pruned
            schedule="one_shot",  # one_shot | iterative | gradual
            begin_step=0,
            end_step=0,  # gradual: step of the final sparsity; 0 = num_steps
            frequency=100,  # steps between pruning events (iterative, gradual)
            rounds=1,  # iterative: pruning rounds
            initial_sparsity=0.0,  # gradual: s_i
        )
    )
    # Weight sharing (cnnjax.compress.quantize): the starting kernels are k-means clustered into
    # 2**bits values (pruned zeros excluded) and training fine-tunes the centroids.
    c.share = ml_collections.ConfigDict(
        dict(
            bits=0,  # bits of every kernel; 0 = no sharing
            layer_bits=ml_collections.ConfigDict(),  # {glob over kernel names: bits}
            exclude=(),  # globs of kernels never shared
            init="linear",  # linear | density | random (Han et al. 2016 find linear best)
        )
    )
    # Quantization-aware training (cnnjax.compress.qat): fake-quantized int8 convs and dense
    # layers through qwix, BatchNorm first folded into the convs of the init_from run.
    c.quant = ml_collections.ConfigDict(dict(qat_bits=0, fold_batch_norm=True))  # 0 = off
    return c


def schema_defaults() -> dict:
    """`{dotted key: default}` of every field of `base_config()`, e.g. `{"optimizer.lr": 1e-3}`."""
    return flatten(base_config().to_dict())


def known_keys() -> set[str]:
    """Dotted names of every field of `base_config()`, e.g. "optimizer.lr"."""
    return set(schema_defaults())


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises `ConfigError` for unknown keys or invalid values (see module docstring)."""
    known = known_keys()
    for key in flatten(config.to_dict()):
        free = (
            "model_kwargs.",
            "prune.layer_sparsity.",
            "param_groups.lr_multipliers.",
            "share.layer_bits.",
        )
        if key not in known and not key.startswith(free):
            raise ConfigError(unknown_choice("config key", key, known))
    models.create_model(config.model, **resolve_components(config.model_kwargs.to_dict()))
    if config.loss and config.loss not in LOSSES:
        raise ConfigError(unknown_choice("loss", config.loss, LOSSES))
    if config.input_shape:
        models.input_shape_of(config.model, config.input_shape)
    spec = dataset_spec(config.dataset)
    checks = [
        (config.optimizer.name in OPTIMIZERS, "optimizer.name", config.optimizer.name, OPTIMIZERS),
        (config.schedule.name in SCHEDULES, "schedule.name", config.schedule.name, SCHEDULES),
        (
            config.optimizer.decay_mask in DECAY_MASKS,
            "optimizer.decay_mask",
            config.optimizer.decay_mask,
            DECAY_MASKS,
        ),
        (
            config.augment.pad_mode in PAD_MODES,
            "augment.pad_mode",
            config.augment.pad_mode,
            PAD_MODES,
        ),
        (config.data.fit in ("", *FIT_METHODS), "data.fit", config.data.fit, FIT_METHODS),
        (config.prune.method in PRUNE_METHODS, "prune.method", config.prune.method, PRUNE_METHODS),
        (config.prune.scope in prune.SCOPES, "prune.scope", config.prune.scope, prune.SCOPES),
        (
            config.prune.schedule in prune.SCHEDULES,
            "prune.schedule",
            config.prune.schedule,
            prune.SCHEDULES,
        ),
        (config.share.init in INITS, "share.init", config.share.init, INITS),
        (
            config.init_from.checkpoint in CHECKPOINTS,
            "init_from.checkpoint",
            config.init_from.checkpoint,
            CHECKPOINTS,
        ),
        (
            config.distill.checkpoint in CHECKPOINTS,
            "distill.checkpoint",
            config.distill.checkpoint,
            CHECKPOINTS,
        ),
    ]
    for ok, key, value, choices in checks:
        if not ok:
            raise ConfigError(unknown_choice(key, value, choices))
    for split_key in ("train_split", "eval_split", "test_split"):
        split = config.data[split_key]
        if split_key == "test_split" and not split:
            continue
        if split.split("[")[0] not in spec.splits:
            raise ConfigError(
                unknown_choice(f"data.{split_key} of dataset {spec.name!r}", split, spec.splits)
            )
    positive = {
        "batch_size": config.batch_size,
        "eval_batch_size": config.eval_batch_size,
        "keep_checkpoints": config.keep_checkpoints,
    }
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f"{key} must be >= 1, got {value}")
    _check_ranges(config)
    if config.num_steps == 0 and not config.num_epochs > 0:
        raise ConfigError("set num_steps > 0 or num_epochs > 0 (both are <= 0)")
    if config.augment.crop_padding < 0:
        raise ConfigError(f"augment.crop_padding must be >= 0, got {config.augment.crop_padding}")
    for key in ("log_every", "eval_every", "checkpoint_every"):
        if config[key] < 0:
            raise ConfigError(f"{key} must be >= 0 (0 = only at the end), got {config[key]}")


def _finite(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# (dotted key, test, the rule in words): numeric fields whose bad values would train silently
# (a negative loss from label_smoothing > 1), fall back (a negative num_steps to epochs) or fail
# only after compiling (an infinite learning rate at step 2).
_RANGES = (
    ("num_steps", lambda v: isinstance(v, int) and v >= 0, "an integer >= 0 (0 = use num_epochs)"),
    ("num_epochs", _finite, "a finite number"),
    ("label_smoothing", lambda v: _finite(v) and 0 <= v < 1, "in [0, 1)"),
    ("optimizer.lr", lambda v: _finite(v) and v > 0, "a finite number > 0"),
    ("optimizer.momentum", lambda v: _finite(v) and 0 <= v < 1, "in [0, 1)"),
    ("optimizer.b1", lambda v: _finite(v) and 0 <= v < 1, "in [0, 1)"),
    ("optimizer.b2", lambda v: _finite(v) and 0 <= v < 1, "in [0, 1)"),
    ("optimizer.weight_decay", lambda v: _finite(v) and v >= 0, "a finite number >= 0"),
    ("optimizer.grad_clip_norm", lambda v: _finite(v) and v >= 0, "a finite number >= 0 (0 = off)"),
    ("schedule.decay_factor", lambda v: _finite(v) and v > 0, "a finite number > 0"),
    ("schedule.warmup_steps", lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
    ("schedule.final_lr_fraction", lambda v: _finite(v) and 0 <= v <= 1, "in [0, 1]"),
    ("seed", lambda v: _integer(v) and 0 <= v < 2**32, "an integer in [0, 2**32)"),
    ("data.num_workers", lambda v: _integer(v) and v >= 0, "an integer >= 0 (0 = in-process)"),
    ("data.prefetch", lambda v: _integer(v) and v >= 0, "an integer >= 0"),
    ("prune.sparsity", lambda v: _finite(v) and 0 <= v < 1, "in [0, 1)"),
    ("prune.initial_sparsity", lambda v: _finite(v) and 0 <= v < 1, "in [0, 1)"),
    ("prune.begin_step", lambda v: _integer(v) and v >= 0, "an integer >= 0"),
    ("prune.end_step", lambda v: _integer(v) and v >= 0, "an integer >= 0 (0 = num_steps)"),
    ("prune.frequency", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    ("prune.rounds", lambda v: _integer(v) and v >= 1, "an integer >= 1"),
    ("share.bits", lambda v: _integer(v) and 0 <= v <= 16, "an integer in [0, 16] (0 = off)"),
    ("distill.temperature", lambda v: _finite(v) and v > 0, "a finite number > 0"),
    ("distill.soft_weight", lambda v: _finite(v) and 0 <= v <= 1, "in [0, 1]"),
    ("quant.qat_bits", lambda v: v in (0, 8) and not isinstance(v, bool), "0 (off) or 8"),
)


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_ranges(config: ml_collections.ConfigDict) -> None:
    values = flatten(config.to_dict())
    for key, ok, rule in _RANGES:
        if not ok(values[key]):
            raise ConfigError(f"{key} must be {rule}, got {values[key]!r}")
    for pattern, value in config.prune.layer_sparsity.items():
        if not (_finite(value) and 0 <= value < 1):
            raise ConfigError(f"prune.layer_sparsity[{pattern!r}] must be in [0, 1), got {value!r}")
    for pattern, value in config.share.layer_bits.items():
        if not (_integer(value) and 1 <= value <= 16):
            raise ConfigError(
                f"share.layer_bits[{pattern!r}] must be an integer in [1, 16], got {value!r}"
            )
