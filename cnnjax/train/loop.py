"""The training loop: data, state, checkpoints, evaluation and metrics around pure steps."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from tqdm.auto import tqdm

from cnnjax import models
from cnnjax.compress import qat
from cnnjax.data import dataset_spec, eval_batches, fit_source, load_source, read_all, train_batches
from cnnjax.data.pipeline import check_batch_size
from cnnjax.errors import CheckpointError, ConfigError, NonFiniteLossError, Preempted
from cnnjax.layers import conv_impl
from cnnjax.layers.components import resolve_components
from cnnjax.train.checkpoint import Checkpoints
from cnnjax.train.config import schema_defaults, validate_config
from cnnjax.train.files import write_json_atomic
from cnnjax.train.metrics import MetricWriter
from cnnjax.train.optim import (
    make_grouped_optimizer,
    parameter_groups,
    pruning_optimizer,
    sharing_optimizer,
)
from cnnjax.train.state import create_train_state, init_variables
from cnnjax.train.steps import Distillation, Preprocess, jit_steps
from cnnjax.train.transfer import merge_variables, read_checkpoint

Hook = Callable[[int, object], None]


def prepare_source(config, split: str, input_shape, fit: str):
    """The `split` of `config.dataset` (decoded into memory if `config.data.cache`), fitted to
    `input_shape` by `fit` ("pad" | "resize")."""
    source = load_source(config.dataset, split, config.data_dir or None, seed=config.seed)
    if config.data.cache:
        source = read_all(source, desc=f"reading {config.dataset} {split}")
    return fit_source(source, input_shape, fit)


def _teacher(config, spec, input_shape, loss: str):
    """`(Distillation, teacher variables)` of `config.distill.teacher`, or `(None, None)`.

    The teacher is rebuilt from its run's saved config; it must have learned the same dataset
    on the same inputs (shape and normalization), since it sees the student's batches.
    """
    folder = config.distill.teacher
    if not folder:
        return None, None
    if loss != "cross_entropy":
        raise ConfigError(f"distillation needs the cross_entropy objective, not {loss!r}")
    saved_path = os.path.join(folder, "config.json")
    if not os.path.isfile(saved_path):
        raise CheckpointError(f"distill.teacher: {saved_path} does not exist (a run folder?)")
    with open(saved_path) as f:
        saved = json.load(f)
    teacher_shape = (
        tuple(saved.get("input_shape") or ()) or models.model_info(saved["model"]).input_shape
    )
    ours = (config.dataset, tuple(input_shape), config.data.normalize)
    theirs = (saved["dataset"], teacher_shape, saved.get("data", {}).get("normalize", True))
    if ours != theirs:
        raise ConfigError(
            f"distill.teacher {folder} learned (dataset, input shape, normalize) = {theirs}, "
            f"this run has {ours}"
        )
    teacher = models.create_model(
        saved["model"],
        num_classes=spec.num_classes,
        **resolve_components(saved.get("model_kwargs", {})),
    )
    variables, _ = read_checkpoint(folder, config.distill.checkpoint, field="distill.teacher")
    distill = Distillation(
        lambda v, x: teacher.apply(v, x, train=False)[0],
        config.distill.temperature,
        config.distill.soft_weight,
    )
    return distill, variables


def num_train_steps(config, train_size: int) -> int:
    """`config.num_steps`, or `ceil(num_epochs * train_size / batch_size)`."""
    if config.num_steps > 0:
        return int(config.num_steps)
    return math.ceil(config.num_epochs * train_size / config.batch_size)


def evaluate(eval_step, state, source, batch_size: int) -> dict[str, float]:
    """Loss and accuracy over every example of `source`."""
    totals = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0}
    for batch in eval_batches(source, batch_size):
        sums = jax.device_get(eval_step(state, batch))
        totals = {k: totals[k] + float(sums[k]) for k in totals}
    return {
        "loss": totals["loss_sum"] / totals["count"],
        "accuracy": totals["correct"] / totals["count"],
        "correct": int(totals["correct"]),
        "count": int(totals["count"]),
    }


class _Interval:
    """Buffers per-step device metrics; `flush` averages them and rejects non-finite losses."""

    def __init__(self, batch_size: int):
        self.batch_size = batch_size
        self.pending: list[tuple[int, dict]] = []
        self.start = time.perf_counter()

    def add(self, step: int, metrics) -> None:
        self.pending.append((step, metrics))

    def flush(self, last_good_step: int | None, checkpoint_dir: str) -> dict[str, float] | None:
        if not self.pending:
            return None
        values = jax.device_get([m for _, m in self.pending])
        for (step, _), value in zip(self.pending, values):
            if not np.isfinite(value["loss"]):
                kept = (
                    f"the last good checkpoint (step {last_good_step}) in {checkpoint_dir} is kept"
                    if last_good_step is not None
                    else "no checkpoint had been written yet"
                )
                raise NonFiniteLossError(
                    f"non-finite loss ({float(value['loss'])}) at step {step}; training stopped "
                    f"and {kept}. Try a lower optimizer.lr or schedule.warmup_steps > 0"
                )
        elapsed = time.perf_counter() - self.start
        summary = {k: float(np.mean([v[k] for v in values])) for k in values[0]}
        summary["images_per_sec"] = len(values) * self.batch_size / max(elapsed, 1e-9)
        self.pending, self.start = [], time.perf_counter()
        return summary


def _is_due(step: int, every: int, last: int) -> bool:
    return step == last or (every > 0 and step % every == 0)


@dataclasses.dataclass
class TrainedRun:
    """What `train` leaves for further measurements (the experiments' analyses).

    Attributes:
      result: final test metrics (loss, accuracy, correct, count, step).
      state: the final `TrainState`.
      model: the Flax module trained.
      preprocess: the step's input normalization (and training augmentation).
      eval_source: the evaluation split, fitted to the model's input shape.
      train_source: the training split, likewise.
    """

    result: dict[str, float]
    state: Any
    model: Any
    preprocess: Preprocess
    eval_source: Any
    train_source: Any


class _PreemptionRequests:
    """Once installed, SIGTERM only sets `requested` (the loop then saves and stops at the end
    of the step); `restore` puts the previous handler back. Off the main thread Python cannot
    install handlers, so there it does nothing."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        self.requested = True

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


def check_workdir(workdir: str) -> None:
    """Checks, creating nothing, that `workdir` is or can become a writable folder: the cheap
    check made before any data is read or program compiled (`prepare_workdir` makes it later).

    Raises:
      ConfigError: `workdir` is a file, lies under a file, or under a folder it cannot write.
    """
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"workdir {workdir!r} is a file, not a folder")
    ancestor = os.path.abspath(workdir)
    while not os.path.exists(ancestor):
        ancestor = os.path.dirname(ancestor)
    if not os.path.isdir(ancestor):
        raise ConfigError(f"cannot create workdir {workdir!r}: Not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        what = "is not writable" if ancestor == os.path.abspath(workdir) else "cannot be created"
        raise ConfigError(f"workdir {workdir!r} {what} ({ancestor} is not writable)")


def prepare_workdir(workdir: str) -> None:
    """Creates `workdir` (and its parents) or checks that it is a writable folder.

    Raises:
      ConfigError: `workdir` is a file, cannot be created, or cannot be written.
    """
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"workdir {workdir!r} is a file, not a folder")
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot create workdir {workdir!r}: {error.strerror}") from None
    if not os.access(workdir, os.W_OK | os.X_OK):
        raise ConfigError(f"workdir {workdir!r} is not writable")


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, hooks: Sequence[Hook] = ()
) -> dict[str, float]:
    """Trains `config.model` on `config.dataset`, resuming from `workdir` if it holds a checkpoint.

    Args:
      config: experiment config (see `configs/default.py` for the fields).
      workdir: run folder for `config.json`, `metrics.jsonl`, `checkpoints/` and `best/`.
      hooks: callables `hook(step, state)` run after every step (and after its checkpoint).

    Returns:
      Final test metrics: loss, accuracy, correct, count, step.
    """
    return train(config, workdir, hooks).result


def train(
    config: ml_collections.ConfigDict, workdir: str, hooks: Sequence[Hook] = ()
) -> TrainedRun:
    """`train_and_evaluate`, also returning the final state, model and data (see `TrainedRun`).

    A run whose last checkpoint is already the final step only restores it and evaluates.
    """
    validate_config(config)
    check_workdir(workdir)
    if config.quant.qat_bits:  # qwix sees the convolutions only on the portable XLA path
        with conv_impl("xla", force=True):
            return _train(config, workdir, hooks)
    return _train(config, workdir, hooks)


def _train(config: ml_collections.ConfigDict, workdir: str, hooks: Sequence[Hook]) -> TrainedRun:
    spec = dataset_spec(config.dataset)
    info = models.model_info(config.model)
    model = models.create_model(
        config.model,
        num_classes=spec.num_classes,
        **resolve_components(config.model_kwargs.to_dict()),
    )
    input_shape = tuple(config.input_shape) or info.input_shape
    loss = config.loss or info.loss
    fit = config.data.fit or spec.fit
    train_source = prepare_source(config, config.data.train_split, input_shape, fit)
    check_batch_size(train_source, config.batch_size)  # before compiling or making the workdir
    eval_source = prepare_source(config, config.data.eval_split, input_shape, fit)
    test_split = config.data.test_split
    test_source = prepare_source(config, test_split, input_shape, fit) if test_split else None
    num_steps = num_train_steps(config, len(train_source))
    variables = init_variables(model, input_shape, config.seed)
    if config.init_from.workdir:
        loaded, _ = read_checkpoint(config.init_from.workdir, config.init_from.checkpoint)
        variables = merge_variables(
            variables, loaded, config.init_from.reinit, source=config.init_from.workdir
        )
    model, variables, kwarg_changes = qat.prepare(
        model, variables, config.quant, config.init_from.workdir
    )
    if kwarg_changes:  # the folder's config rebuilds the model that trains (BatchNorm folded)
        config = ml_collections.ConfigDict(config.to_dict())
        with config.model_kwargs.unlocked():
            config.model_kwargs.update(kwarg_changes)
    labels = parameter_groups(
        variables["params"], config.param_groups.frozen, config.param_groups.lr_multipliers
    )
    tx, lr_schedule = make_grouped_optimizer(config.optimizer, config.schedule, num_steps, labels)
    tx, shared = sharing_optimizer(tx, config.share, variables["params"])
    variables = {**variables, "params": shared}
    tx = pruning_optimizer(tx, config.prune, variables["params"], num_steps)
    state = create_train_state(model, tx, input_shape, config.seed, variables)

    mean, std = channel_stats(spec, input_shape[-1])
    preprocess = Preprocess(
        mean,
        std,
        config.augment.crop_padding,
        config.augment.pad_mode,
        config.augment.flip,
        config.data.normalize,
    )
    distill, teacher_variables = _teacher(config, spec, input_shape, loss)
    train_step, eval_step = jit_steps(
        preprocess, config.label_smoothing, loss, distill, teacher_variables
    )

    prepare_workdir(workdir)
    resolved = json.loads(config.to_json())
    checkpoints = Checkpoints(
        workdir, resolved, keep=config.keep_checkpoints, defaults=schema_defaults()
    )
    preemption = _PreemptionRequests()
    try:
        state, start_step = checkpoints.restore_latest(state)
        write_json_atomic(os.path.join(workdir, "config.json"), checkpoints.config)
        writer = MetricWriter(workdir, resume_step=start_step)
        print_progress(
            f"{config.model}: {_count(state.params):,} parameters; "
            f"{len(train_source):,} training examples of {config.dataset}; "
            f"{num_steps} steps of {config.batch_size}"
        )
        if start_step:
            print_progress(f"resumed from step {start_step} ({checkpoints.latest_dir})")

        batches = train_batches(
            train_source,
            config.batch_size,
            config.seed,
            start_step,
            config.data.num_workers,
            config.data.prefetch,
        )
        interval = _Interval(config.batch_size)
        bar = tqdm(
            total=num_steps,
            initial=start_step,
            desc=config.model,
            dynamic_ncols=True,
            disable=None if config.progress else True,
            leave=False,
        )
        last_good = checkpoints.latest_step
        result = None  # the last step is always evaluated in the loop; a finished run is not
        preemption.install()
        for step in range(start_step + 1, num_steps + 1):
            state, metrics = train_step(state, next(batches))
            interval.add(step, metrics)
            bar.update(1)
            if _is_due(step, config.log_every, num_steps):
                summary = interval.flush(last_good, checkpoints.latest_dir)
                summary["lr"] = float(lr_schedule(step - 1))
                writer.write(step, "train", summary)
                bar.set_postfix(
                    loss=f"{summary['loss']:.4f}",
                    acc=f"{summary['accuracy']:.3f}",
                    img_s=f"{summary['images_per_sec']:.0f}",
                )
                print_progress(f"step {step}/{num_steps} train " + _fmt(summary))
            if _is_due(step, config.eval_every, num_steps):
                interval.flush(last_good, checkpoints.latest_dir)
                result = evaluate(eval_step, state, eval_source, config.eval_batch_size)
                writer.write(step, "eval", result)
                print_progress(f"step {step}/{num_steps} eval " + _fmt(result))
                checkpoints.save_if_best(step, state, result)
                if test_source is not None:  # eval_split validates; the test split is reported
                    test = evaluate(eval_step, state, test_source, config.eval_batch_size)
                    writer.write(step, "test", test)
                interval.start = time.perf_counter()  # evaluation is not training time
            if _is_due(step, config.checkpoint_every, num_steps):
                interval.flush(last_good, checkpoints.latest_dir)
                checkpoints.save(step, state)
                last_good = step
                interval.start = time.perf_counter()
            for hook in hooks:
                hook(step, state)
            if preemption.requested:
                if last_good != step:
                    checkpoints.save(step, state)
                raise Preempted(
                    f"preempted (SIGTERM) at step {step}/{num_steps}: checkpoint {step} saved; "
                    "run the same command again to resume"
                )
        bar.close()
        if result is None:  # restored a finished run: nothing ran, evaluate it here
            result = evaluate(eval_step, state, eval_source, config.eval_batch_size)
    finally:
        preemption.restore()
        checkpoints.close()
    result["step"] = num_steps
    note = f" [{spec.note}]" if spec.note else ""
    print_progress(
        f"final {config.data.eval_split} accuracy of {config.model} on {config.dataset}: "
        f"{result['accuracy']:.4f} ({result['correct']}/{result['count']}) after {num_steps} "
        f"steps{note}"
    )
    return TrainedRun(result, state, model, preprocess, eval_source, train_source)


def channel_stats(spec, channels: int):
    """The dataset's per-channel mean and std of scaled inputs, for a model of `channels`."""
    if len(spec.mean) == channels:
        return spec.mean, spec.std
    if len(spec.mean) == 1:
        return spec.mean * channels, spec.std * channels
    raise ConfigError(f"dataset {spec.name} has {len(spec.mean)} channels, model wants {channels}")


def _count(params) -> int:
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


def _fmt(values) -> str:
    return " ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items()
    )


def print_progress(message: str) -> None:
    """Prints a progress line without breaking an active progress bar."""
    tqdm.write(message)
