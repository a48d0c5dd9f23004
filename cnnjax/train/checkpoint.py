"""Checkpoints in the workdir with orbax: the last N in `checkpoints/`, the best in `best/`.

Each checkpoint holds the whole train state (parameters, BatchNorm statistics, optimizer state,
step, RNG) and, as JSON, the resolved config that produced it, stamped with `SCHEMA_VERSION`.
Restoring compares that config with the current one and refuses to continue a different experiment
in the same workdir. A key one side lacks compares as its default, so a field added to the schema
after a run started (whose default keeps the old behaviour) does not strand that run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import flax.serialization
import orbax.checkpoint as ocp

from cnnjax.errors import CheckpointError

# Version of the config schema a saved config was written with; bump it when a field's meaning
# changes (adding a field whose default keeps the old behaviour needs no bump). Configs saved
# before versions were stamped read as version 0.
SCHEMA_VERSION = 1
SCHEMA_KEY = "schema_version"

# Config keys that only steer logging, I/O or speed: changing them does not change the run.
RUN_CONTROL_KEYS = frozenset(
    {
        "log_every",
        "eval_every",
        "checkpoint_every",
        "keep_checkpoints",
        "progress",
        "data_dir",
        "eval_batch_size",
        "data.num_workers",
        "data.prefetch",
        "data.cache",
    }
)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}} -> {"a.b": 1}`; tuples and lists compare as lists."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple | list) else value
    return flat


def stamped(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config as saved beside a run: its fields plus `schema_version`."""
    return {**config, SCHEMA_KEY: SCHEMA_VERSION}


def config_differences(
    saved: Mapping[str, Any],
    current: Mapping[str, Any],
    defaults: Mapping[str, Any] | None = None,
) -> list[str]:
    """Lines `key: saved -> current` for every key that changes the run.

    Args:
      saved: the config stored with the checkpoint (nested dicts).
      current: the config of this run (nested dicts).
      defaults: flat `{dotted key: default}` of the schema (`flatten(base_config().to_dict())`).
        A key absent from one side compares as its default there, so configs saved before a
        field existed still match; a key without a default compares as `'<absent>'`.
    """
    old, new = flatten(saved), flatten(current)
    defaults = defaults or {}
    absent = "<absent>"

    def value(config: dict[str, Any], key: str) -> Any:
        return config[key] if key in config else defaults.get(key, absent)

    return [
        f"{key}: {value(old, key)!r} -> {value(new, key)!r}"
        for key in sorted(set(old) | set(new))
        if key not in RUN_CONTROL_KEYS and key != SCHEMA_KEY and value(old, key) != value(new, key)
    ]


class Checkpoints:
    """Saves and restores train states for one workdir.

    Args:
      workdir: run folder; checkpoints go to `workdir/checkpoints` and `workdir/best`.
      config: resolved config as plain dicts, stored with every checkpoint (stamped with
        `SCHEMA_VERSION`).
      keep: how many of the latest checkpoints to keep.
      defaults: flat schema defaults for `config_differences` (keys a saved config lacks).
    """

    def __init__(
        self,
        workdir: str,
        config: Mapping[str, Any],
        keep: int = 3,
        defaults: Mapping[str, Any] | None = None,
    ):
        self.config = stamped(config)
        self.defaults = dict(defaults or {})
        self.latest_dir = os.path.abspath(os.path.join(workdir, "checkpoints"))
        self.best_dir = os.path.abspath(os.path.join(workdir, "best"))
        # A save killed midway leaves orbax's temporary folder (never a half checkpoint):
        # the next run's managers delete it.
        sync = dict(create=True, enable_async_checkpointing=False, cleanup_tmp_directories=True)
        self.latest = ocp.CheckpointManager(
            self.latest_dir, options=ocp.CheckpointManagerOptions(max_to_keep=keep, **sync)
        )
        self.best = ocp.CheckpointManager(
            self.best_dir,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=1, best_fn=lambda metrics: metrics["accuracy"], best_mode="max", **sync
            ),
        )

    def _args(self, state):
        return ocp.args.Composite(
            state=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
            meta=ocp.args.JsonSave({"config": self.config}),
        )

    def save(self, step: int, state) -> None:
        """Saves `state` as checkpoint `step` (a no-op when that step is already saved).

        Raises:
          CheckpointError: the write failed (a full disk, a file-size limit, a lost mount). Orbax
            writes into a temporary folder and renames it when complete, so the checkpoints
            saved before stay intact; the message names the latest of them.
        """
        if step not in self.latest.all_steps():
            self._write(self.latest, step, args=self._args(state))

    def save_if_best(self, step: int, state, metrics: Mapping[str, float]) -> None:
        """Keeps `state` in `best/` when `metrics["accuracy"]` beats every earlier evaluation.

        Raises:
          CheckpointError: the write failed, as in `save`.
        """
        if step not in self.best.all_steps():
            self._write(self.best, step, args=self._args(state), metrics=dict(metrics))

    def _write(self, manager: ocp.CheckpointManager, step: int, **save_kwargs) -> None:
        try:
            manager.save(step, **save_kwargs)
        except Exception as error:  # orbax and tensorstore wrap the OS error in their own types
            kept = self.latest.latest_step()
            usable = f"checkpoint {kept} is intact" if kept is not None else "no earlier checkpoint"
            reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            raise CheckpointError(
                f"cannot save checkpoint {step} in {manager.directory} "
                f"({type(error).__name__}: {reason}); {usable} in {self.latest_dir}: free space "
                "and run the same command again to resume"
            ) from error

    @property
    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def restore_latest(self, template):
        """Returns `(state, step)` from the latest checkpoint, or `(template, 0)` if there is none.

        Args:
          template: a freshly initialized state with the expected structure, shapes and dtypes.

        Raises:
          CheckpointError: the checkpoint was written by a different config, or cannot be read.
        """
        step = self.latest.latest_step()
        if step is None:
            return template, 0
        where = os.path.join(self.latest_dir, str(step))
        try:
            meta = self.latest.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
            saved_config = meta.meta["config"]
        except Exception as error:
            raise self._unreadable(where, error) from None
        differences = config_differences(saved_config, self.config, self.defaults)
        if differences:
            raise CheckpointError(
                f"the checkpoint in {where} was written by a different config; refusing to "
                f"resume it ({'; '.join(differences)}). "
                "Use a new --workdir, or restore those values"
            )
        target = flax.serialization.to_state_dict(template)
        try:
            restored = self.latest.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
            )
        except Exception as error:
            raise self._unreadable(where, error) from None
        return flax.serialization.from_state_dict(template, restored.state), step

    def _unreadable(self, where: str, error: Exception) -> CheckpointError:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        earlier = [s for s in self.latest.all_steps() if str(s) != os.path.basename(where)]
        hint = f" (earlier checkpoints: {earlier})" if earlier else ""
        return CheckpointError(
            f"checkpoint {where} is corrupt or unreadable ({type(error).__name__}: {first_line}). "
            f"Move that folder aside to resume from an earlier checkpoint{hint}, or use a new "
            f"--workdir"
        )

    def close(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()
        self.latest.close()
        self.best.close()
