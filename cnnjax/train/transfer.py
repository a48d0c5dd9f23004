"""Starting a run from another run's checkpoint (`init_from`): fine-tuning, retraining, transfer.

`init_from.workdir` names a finished (or interrupted) run folder; its latest or best checkpoint
gives the new run's parameters and BatchNorm statistics, while the optimizer state, step and RNG
start fresh. Parameters matching `init_from.reinit` (e.g. a new classifier head for another class
count) keep their fresh initialization. Every other parameter must exist in the source with the
same shape: a checkpoint of another model is refused with the names that differ.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
from collections.abc import Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp

from cnnjax.errors import CheckpointError, ConfigError

CHECKPOINTS = ("latest", "best")


def _names(tree) -> dict[str, np.ndarray]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(k.key) for k in path): leaf for path, leaf in flat}


def read_checkpoint(
    workdir: str, checkpoint: str = "latest", field: str = "init_from"
) -> tuple[dict, int]:
    """`({"params", "batch_stats"}, step)` of a run folder's latest or best checkpoint.

    `field` is the config field that named the folder, for the error messages.

    Raises:
      ConfigError: an unknown `checkpoint` kind.
      CheckpointError: no such folder, no checkpoint in it, or an unreadable one.
    """
    if checkpoint not in CHECKPOINTS:
        raise ConfigError(
            f"{field}.checkpoint must be one of {', '.join(CHECKPOINTS)}, got {checkpoint!r}"
        )
    folder = os.path.abspath(
        os.path.join(workdir, "checkpoints" if checkpoint == "latest" else "best")
    )
    if not os.path.isdir(folder):
        raise CheckpointError(f"{field}: {folder} does not exist (is {workdir!r} a run folder?)")
    manager = ocp.CheckpointManager(folder, options=ocp.CheckpointManagerOptions(create=False))
    try:
        step = manager.latest_step()
        if step is None:
            raise CheckpointError(f"{field}: no checkpoint in {folder}")
        try:
            restored = manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore())
            )
        except CheckpointError:
            raise
        except Exception as error:
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise CheckpointError(
                f"{field}: cannot read checkpoint {step} in {folder} ({first})"
            ) from None
    finally:
        manager.close()
    state = restored.state
    return {"params": state["params"], "batch_stats": state.get("batch_stats") or {}}, int(step)


def merge_variables(
    fresh: dict, loaded: dict, reinit: Sequence[str] = (), source: str = ""
) -> dict:
    """`fresh` with every leaf replaced by the same-named leaf of `loaded`, except `reinit` ones.

    Args:
      fresh: `{"params", "batch_stats"}` of the newly initialized model.
      loaded: the same from `read_checkpoint`.
      reinit: glob patterns over "/"-joined names (a pattern also matches by module path, so
        "output" keeps the fresh "output/kernel" and "output/bias").
      source: where `loaded` came from, for messages.

    Raises:
      ConfigError: a `reinit` pattern that matches nothing.
      CheckpointError: a parameter missing from the source or with another shape.
    """

    def reinitialized(name):
        module = name.rsplit("/", 1)[0]
        return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(module, p) for p in reinit)

    all_names = [f"{c}/{n}" for c in ("params", "batch_stats") for n in _names(fresh.get(c, {}))]
    for pattern in reinit:
        if not any(reinitialized(name.split("/", 1)[1]) for name in all_names):
            raise ConfigError(
                f"init_from.reinit pattern {pattern!r} matches no parameter; names: "
                + ", ".join(sorted({n.split("/", 1)[1].rsplit("/", 1)[0] for n in all_names}))
            )
    merged, problems = {}, []
    for collection in ("params", "batch_stats"):
        new = fresh.get(collection, {})
        old = _names(loaded.get(collection, {}))
        flat, treedef = jax.tree_util.tree_flatten_with_path(new)
        leaves = []
        for path, leaf in flat:
            name = "/".join(str(k.key) for k in path)
            if reinitialized(name):
                leaves.append(leaf)
            elif name not in old:
                problems.append(f"{collection}/{name} missing")
                leaves.append(leaf)
            elif tuple(np.shape(old[name])) != tuple(np.shape(leaf)):
                problems.append(
                    f"{collection}/{name} is {tuple(np.shape(old[name]))}, "
                    f"the model wants {tuple(np.shape(leaf))}"
                )
                leaves.append(leaf)
            else:
                leaves.append(jax.numpy.asarray(old[name], leaf.dtype))
        merged[collection] = jax.tree_util.tree_unflatten(treedef, leaves)
    if problems:
        shown = "; ".join(problems[:4]) + (
            f"; and {len(problems) - 4} more" if len(problems) > 4 else ""
        )
        raise CheckpointError(
            f"init_from: the checkpoint {source} does not fit this model ({shown}); is it a "
            "checkpoint of another model? Name new layers in init_from.reinit"
        )
    return merged


def write_checkpoint(workdir: str, variables: dict, step: int = 0) -> str:
    """Writes `{"params", "batch_stats"}` as a checkpoint that `read_checkpoint` (and so
    `init_from.workdir`) reads: a made-up starting point such as a lottery ticket (an early
    iterate times a mask) or a compacted model.

    The folder appears whole or not at all (written beside it, then renamed); an existing
    `workdir` is refused rather than overwritten.

    Returns:
      The absolute path of `workdir`.
    """
    workdir = os.path.abspath(workdir)
    if os.path.exists(workdir):
        raise CheckpointError(f"{workdir} exists already; not overwriting it")
    partial = workdir + ".partial"
    if os.path.exists(partial):
        shutil.rmtree(partial)  # a write that was interrupted
    os.makedirs(os.path.dirname(workdir), exist_ok=True)
    state = {
        "params": jax.device_get(variables["params"]),
        "batch_stats": jax.device_get(variables.get("batch_stats") or {}),
    }
    manager = ocp.CheckpointManager(os.path.join(partial, "checkpoints"))
    try:
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
        manager.wait_until_finished()
    finally:
        manager.close()
    os.rename(partial, workdir)
    return workdir
