"""Real SIGKILLs at chosen and random points of a training run; the resume is bit-identical.

Each case kills the run (`harness.launch` with `faulty_main` faults, or a SIGKILL from outside),
runs the same command again without faults, and compares the finished workdir with an
uninterrupted run's: every array of the final and best checkpoints, the checkpoints kept, and the
whole metric history. CI runs three kill points (inside a checkpoint save, inside a metrics write,
across an epoch boundary); `-m slow` adds the NaN and full-disk stops in a real process and 20
more kill points, drawn at random (with a fixed seed, so a failure names a reproducible point)
from every kind of point.
"""

import json
import os
import random
import signal

import numpy as np
import pytest

from tests.reliability.harness import (
    RunOutcome,
    assert_finished,
    assert_killed,
    assert_same_run,
    checkpoint_leaves,
    committed_steps,
    error_line,
    launch,
    launch_and_kill_after,
)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("xla_cache")


@pytest.fixture(scope="module")
def straight(tmp_path_factory, cache_dir):
    """The uninterrupted run every resumed one must equal."""
    workdir = tmp_path_factory.mktemp("straight")
    assert_finished(launch(workdir, cache_dir))
    return RunOutcome.read(workdir)


@pytest.mark.slow  # CI has the SIGTERM and failing-write tests of tests/train/test_loop.py
def test_kills_inside_a_save_inside_a_metrics_write_and_across_an_epoch(
    tmp_path, cache_dir, straight
):
    # Inside the save of checkpoint 10: its files are written, orbax's committing rename is not.
    assert_killed(launch(tmp_path, cache_dir, "save-commit@2"), "save-commit@2")
    assert committed_steps(tmp_path) == [5]
    assert any("orbax-checkpoint-tmp" in name for name in os.listdir(tmp_path / "checkpoints"))
    # Resumed from 5; killed halfway through writing the record of step 10 (6, 8, then 10).
    assert_killed(launch(tmp_path, cache_dir, "metrics@3"), "metrics@3")
    torn = (tmp_path / "metrics.jsonl").read_text().splitlines()[-1]
    with pytest.raises(json.JSONDecodeError):
        json.loads(torn)
    # Resumed from 5 again; killed after step 18. The last checkpoint, 15, is in the first epoch
    # (16 steps), so the next resume replays the data order across the epoch boundary.
    assert_killed(launch(tmp_path, cache_dir, "step@18"), "step@18")
    assert committed_steps(tmp_path) == [10, 15]
    assert_finished(launch(tmp_path, cache_dir))
    assert_same_run(RunOutcome.read(tmp_path), straight)


@pytest.mark.slow  # CI has the in-process NaN and failing-write tests (tests/train/test_loop.py)
def test_nan_and_a_full_disk_stop_cleanly_and_keep_the_last_good_checkpoint(
    tmp_path, cache_dir, straight
):
    # Step 11 starts from NaN parameters: the run stops at the next log (step 12), before the
    # NaN state can reach a checkpoint.
    line = error_line(launch(tmp_path, cache_dir, "nan@11"))
    assert "non-finite loss (nan) at step 11" in line and "checkpoint (step 10)" in line, line
    assert committed_steps(tmp_path) == [5, 10]
    assert all(np.all(np.isfinite(leaf)) for _, leaf in checkpoint_leaves(tmp_path, 10))
    # Resumed from 10, the disk is full during the second save (best 12, then checkpoint 15).
    line = error_line(launch(tmp_path, cache_dir, "enospc@2"))
    assert "cannot save checkpoint 15" in line and "No space left on device" in line, line
    assert "checkpoint 10 is intact" in line, line
    assert committed_steps(tmp_path) == [5, 10]
    # With the cause gone, the same command resumes from the kept checkpoint and finishes the run
    # exactly as if nothing had happened.
    assert_finished(launch(tmp_path, cache_dir))
    assert_same_run(RunOutcome.read(tmp_path), straight)


def draw_kill_points(seed: int = 17) -> list[tuple[str, ...]]:
    """20 kill points: which kinds, and how many of each, are fixed; where each lands is drawn.

    A point is the faults of successive launches (`records@R` is a SIGKILL from outside once
    `metrics.jsonl` holds R lines). In an uninterrupted run there are 24 steps, 6 or 7 saves
    (checkpoints 5, 10, 15, 20, 24; best 12 and perhaps 24) and 14 metric records.
    """
    rng = random.Random(seed)
    points = [(f"step@{rng.randint(1, 24)}",) for _ in range(5)]
    points += [(f"save-start@{rng.randint(1, 6)}",) for _ in range(4)]
    points += [(f"save-commit@{rng.randint(1, 6)}",) for _ in range(4)]
    points += [(f"metrics@{rng.randint(1, 14)}",) for _ in range(3)]
    # Killed again while the resume rewrites config.json (1) or metrics.jsonl (2).
    points += [(f"step@{rng.randint(6, 24)}", f"rewrite@{n}") for n in (1, 2)]
    points += [(f"records@{rng.randint(1, 12)}",) for _ in range(2)]
    return points


@pytest.mark.slow
@pytest.mark.parametrize("faults", draw_kill_points(), ids="+".join)
def test_killed_at_a_random_point_and_resumed_is_bit_identical(
    tmp_path, cache_dir, straight, faults
):
    for fault in faults:
        kind, _, count = fault.partition("@")
        if kind == "records":
            assert launch_and_kill_after(tmp_path, cache_dir, int(count)) == -signal.SIGKILL
        else:
            assert_killed(launch(tmp_path, cache_dir, fault), fault)
    assert_finished(launch(tmp_path, cache_dir))
    assert_same_run(RunOutcome.read(tmp_path), straight)
