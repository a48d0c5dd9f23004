"""Launching, killing and inspecting the reliability tests' training runs.

Every run is `python -m tests.reliability.faulty_main` with `run_config.py` in a fresh process, so
a kill is a real SIGKILL and a resume is a new process reading only what reached the disk.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from cnnjax.train.metrics import read_metrics
from tests.cli_harness import error_line as cli_error_line
from tests.conftest import ROOT

CONFIG = "tests/reliability/run_config.py"
NUM_STEPS = 24
TIMEOUT_S = 300


def command(workdir) -> list[str]:
    return [
        sys.executable,
        "-m",
        "tests.reliability.faulty_main",
        f"--config={CONFIG}",
        f"--workdir={workdir}",
    ]


def environment(cache_dir, faults: str = "") -> dict[str, str]:
    """This process's environment, plus `faults` and a compilation cache the runs share (each
    launch would otherwise spend most of its time compiling the same programs again)."""
    env = dict(os.environ, CNNJAX_FAULTS=faults, JAX_COMPILATION_CACHE_DIR=str(cache_dir))
    env.update(JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    env.update(JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
    return env


def launch(workdir, cache_dir, faults: str = "") -> subprocess.CompletedProcess:
    """Runs the command once with `faults` (see `faulty_main`) and returns how it ended."""
    return subprocess.run(
        command(workdir),
        cwd=ROOT,
        env=environment(cache_dir, faults),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


def launch_and_kill_after(workdir, cache_dir, records: int) -> int:
    """Starts the command and SIGKILLs it as soon as `metrics.jsonl` holds `records` lines:
    wherever the loop is at that moment (a step, an evaluation, a save, a write).

    Returns:
      The command's exit status (-9 when the kill landed before it finished).
    """
    process = subprocess.Popen(
        command(workdir),
        cwd=ROOT,
        env=environment(cache_dir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    metrics = pathlib.Path(workdir) / "metrics.jsonl"
    deadline = time.monotonic() + TIMEOUT_S
    while process.poll() is None and time.monotonic() < deadline:
        if metrics.exists() and metrics.read_bytes().count(b"\n") >= records:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    return process.wait(timeout=TIMEOUT_S)


def assert_killed(result: subprocess.CompletedProcess, fault: str) -> None:
    assert result.returncode == -signal.SIGKILL, (result.returncode, result.stderr[-3000:])
    assert f"fault: {fault}" in result.stderr, result.stderr[-3000:]


def assert_finished(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]


def error_line(result: subprocess.CompletedProcess) -> str:
    """The run's one `error:` line (exit status 2, no traceback)."""
    assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
    return cli_error_line(result.stderr)


def committed_steps(workdir, folder: str = "checkpoints") -> list[int]:
    with ocp.CheckpointManager(os.path.join(workdir, folder)) as manager:
        return sorted(manager.all_steps())


def checkpoint_leaves(workdir, step: int, folder: str = "checkpoints") -> list[tuple[str, object]]:
    """`(path, array)` of every leaf of the train state saved as `step`."""
    with ocp.CheckpointManager(os.path.join(workdir, folder)) as manager:
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    leaves = jax.tree_util.tree_flatten_with_path(restored.state)[0]
    return [(jax.tree_util.keystr(path), leaf) for path, leaf in leaves]


def metric_history(workdir) -> list[dict]:
    """The records of `metrics.jsonl` without their wall-clock speed (the only field that may
    differ between two runs of one config)."""
    return [
        {k: v for k, v in record.items() if k != "images_per_sec"}
        for record in read_metrics(str(workdir))
    ]


@dataclasses.dataclass
class RunOutcome:
    """What an ended run left in its workdir, for comparing two runs bit for bit."""

    latest_steps: list[int]
    best_steps: list[int]
    final_state: list[tuple[str, object]]
    best_state: list[tuple[str, object]]
    metrics: list[dict]
    leftovers: list[str]

    @classmethod
    def read(cls, workdir) -> RunOutcome:
        best = committed_steps(workdir, "best")
        return cls(
            latest_steps=committed_steps(workdir),
            best_steps=best,
            final_state=checkpoint_leaves(workdir, NUM_STEPS),
            best_state=checkpoint_leaves(workdir, best[-1], "best"),
            metrics=metric_history(workdir),
            leftovers=sorted(
                str(path.relative_to(workdir))
                for path in pathlib.Path(workdir).rglob("*")
                if path.name.endswith(".tmp") or "orbax-checkpoint-tmp" in path.name
            ),
        )


def assert_same_run(resumed: RunOutcome, straight: RunOutcome) -> None:
    """Bit for bit: every saved array, the checkpoints kept, and the whole metric history."""
    assert resumed.leftovers == [], resumed.leftovers
    assert resumed.latest_steps == straight.latest_steps
    assert resumed.best_steps == straight.best_steps
    pairs = [(resumed.final_state, straight.final_state), (resumed.best_state, straight.best_state)]
    for saved, expected in pairs:
        assert [path for path, _ in saved] == [path for path, _ in expected]
        for (path, x), (_, y) in zip(saved, expected):
            np.testing.assert_array_equal(x, y, err_msg=path)
    assert resumed.metrics == straight.metrics
