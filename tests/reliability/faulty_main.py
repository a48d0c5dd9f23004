"""`python -m cnnjax.main` with faults injected at exact points, for the reliability tests.

  CNNJAX_FAULTS=save-commit@2 python -m tests.reliability.faulty_main --config=... --workdir=...

`CNNJAX_FAULTS` is a comma-separated list of `kind@N` (N is a train step for `step` and `nan`, and
counts events from 1 within this process for the others);
without it the command is `cnnjax.main` unchanged. A kill is a real SIGKILL of this process,
nothing after it runs (no `finally`, no atexit, no flush), as when the OOM killer, a lost node or
`kill -9` ends a job. Kinds (`FAULTS`):

  step@N         SIGKILL once train step N has run, before its metrics and checkpoint.
  save-start@N   SIGKILL inside the N-th checkpoint save (latest or best), just after orbax made
                 its temporary `<step>` folder.
  save-commit@N  SIGKILL inside the N-th save, every item (state, meta) written, before the
                 rename of the `<step>` folder that commits it.
  metrics@N      SIGKILL inside the N-th metrics record write, half of its line on disk.
  rewrite@N      SIGKILL inside the N-th atomic file write (config.json, the metrics rewrite of a
                 resume), half of the temporary file on disk.
  nan@N          train step N starts from NaN parameters (its loss is NaN); no kill.
  enospc@N       the N-th save fails with ENOSPC while orbax writes its commit marker; no kill.

Each fault that fires first prints `fault: kind@N` to stderr, so a test can check it fired.
"""

from __future__ import annotations

import collections
import errno
import functools
import json
import os
import signal
import sys

FAULTS = ("step", "save-start", "save-commit", "metrics", "rewrite", "nan", "enospc")


def parse_faults(text: str) -> dict[str, int]:
    """`"step@3,metrics@2"` -> `{"step": 3, "metrics": 2}`."""
    faults = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        kind, _, count = item.partition("@")
        if kind not in FAULTS or not count.isdigit() or int(count) < 1:
            raise ValueError(f"bad fault {item!r}: want KIND@N, N >= 1, KIND in {FAULTS}")
        faults[kind] = int(count)
    return faults


class _Faults:
    def __init__(self, faults: dict[str, int]):
        self.faults = faults
        self.calls = collections.Counter()

    def due(self, kind: str) -> bool:
        """Counts one event of `kind`; True when it is the one to fail."""
        if kind not in self.faults:
            return False
        self.calls[kind] += 1
        if self.calls[kind] != self.faults[kind]:
            return False
        self.announce(kind)
        return True

    def at_step(self, kind: str, step: int) -> bool:
        """True when `kind` is to fail at train step `step` (N is the step, not a count)."""
        if self.faults.get(kind) != step:
            return False
        self.announce(kind)
        return True

    def announce(self, kind: str) -> None:
        print(f"fault: {kind}@{self.faults[kind]}", file=sys.stderr, flush=True)


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _is_step_folder(temporary_path) -> bool:
    """Whether an orbax temporary path is a whole checkpoint (`<step>`), not one of its items
    (`state`, `meta`), which are written and renamed inside it first."""
    return temporary_path.get_final().name.isdigit()


def _write_half(path: str, text: str, mode: str) -> None:
    with open(path, mode) as f:
        f.write(text[: len(text) // 2])
        f.flush()
        os.fsync(f.fileno())


def install(faults: dict[str, int]) -> None:
    """Patches the training stack so that `faults` fire (see the module docstring)."""
    import jax
    import jax.numpy as jnp
    from orbax.checkpoint._src.path import atomicity

    from cnnjax.train import files, loop, metrics

    state = _Faults(faults)

    original_jit_steps = loop.jit_steps

    def jit_steps(*args, **kwargs):
        train_step, eval_step = original_jit_steps(*args, **kwargs)

        def faulty_train_step(train_state, batch):
            step = int(train_state.step) + 1
            if state.at_step("nan", step):
                nan_params = jax.tree.map(lambda p: p * jnp.nan, train_state.params)
                train_state = train_state.replace(params=nan_params)
            new_state, step_metrics = train_step(train_state, batch)
            if state.at_step("step", step):
                jax.block_until_ready(new_state)
                _kill()
            return new_state, step_metrics

        return faulty_train_step, eval_step

    loop.jit_steps = jit_steps

    temporary_path = atomicity.AtomicRenameTemporaryPath
    original_create, original_finalize = temporary_path.create, temporary_path.finalize

    @functools.wraps(original_create)
    async def create(self):
        path = await original_create(self)
        if _is_step_folder(self) and state.due("save-start"):
            _kill()
        return path

    @functools.wraps(original_finalize)
    async def finalize(self):
        if _is_step_folder(self) and state.due("save-commit"):
            _kill()
        if _is_step_folder(self) and state.due("enospc"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.get()))
        return await original_finalize(self)

    temporary_path.create, temporary_path.finalize = create, finalize

    original_write = metrics.MetricWriter.write

    def write(self, step, split, values):
        if state.due("metrics"):
            record = {"step": int(step), "split": split, **values}
            _write_half(self.path, json.dumps(record, default=float) + "\n", "a")
            _kill()
        original_write(self, step, split, values)

    metrics.MetricWriter.write = write

    original_write_text_atomic = files.write_text_atomic

    def write_text_atomic(path, text):
        if state.due("rewrite"):
            _write_half(path + ".tmp", text, "w")
            _kill()
        original_write_text_atomic(path, text)

    # The writers import these functions by name: patch them where they are used.
    metrics.write_text_atomic = write_text_atomic
    loop.write_json_atomic = lambda path, payload: write_text_atomic(
        path, json.dumps(payload, indent=2)
    )


if __name__ == "__main__":
    from cnnjax import cli, main

    install(parse_faults(os.environ.get("CNNJAX_FAULTS", "")))
    main.define_flags()
    cli.run(main.main, required=["config", "workdir"], on_interrupt=cli.RESUME)
