"""End-to-end training: learning, outputs, bit-exact resume, and every failure behaviour."""

import json
import os
import resource
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from cnnjax.errors import CheckpointError, ConfigError, NonFiniteLossError, Preempted
from cnnjax.plot import plot_run
from cnnjax.train import train_and_evaluate
from cnnjax.train.metrics import read_metrics
from tests.cli_harness import error_line
from tests.conftest import ROOT
from tests.train.compile_cache import persistent_compile_cache


@pytest.fixture(scope="module", autouse=True)
def compile_once(tmp_path_factory):
    """Runs of one config (here and across these tests) share their compiled programs."""
    with persistent_compile_cache(tmp_path_factory.mktemp("xla_cache")):
        yield


class Crash(Exception):
    """Stands in for a killed process: raised by a hook, nothing after it runs."""


def crash_at(step):
    def hook(current, state):
        if current == step:
            raise Crash(step)

    return hook


def test_tiny_run_learns_and_writes_its_outputs(tmp_path, tiny_config):
    config = tiny_config(num_steps=40, eval_every=20, checkpoint_every=20)
    result = train_and_evaluate(config, str(tmp_path))
    records = read_metrics(str(tmp_path))
    train = [r for r in records if r["split"] == "train"]
    assert train[-1]["loss"] < 0.5 * train[0]["loss"]
    assert result["accuracy"] > 0.5 and result["count"] == 128  # chance is 0.1
    assert {"loss", "accuracy", "grad_norm", "lr", "images_per_sec"} <= set(train[0])
    assert [r["step"] for r in records if r["split"] == "eval"] == [20, 40]
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model"] == "lenet5" and saved["optimizer"]["lr"] == config.optimizer.lr
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["20", "40"]
    assert os.listdir(tmp_path / "best")
    assert os.path.getsize(plot_run(str(tmp_path))) > 10_000


def test_a_test_split_is_evaluated_beside_the_validation_split(tmp_path, tiny_config):
    config = tiny_config(num_steps=16, eval_every=8, checkpoint_every=8)
    config.data.update(eval_split="train", test_split="test")
    result = train_and_evaluate(config, str(tmp_path))
    records = read_metrics(str(tmp_path))
    evals = [r for r in records if r["split"] == "eval"]
    tests = [r for r in records if r["split"] == "test"]
    assert [r["step"] for r in tests] == [r["step"] for r in evals] == [8, 16]
    assert result["count"] == evals[-1]["count"] == 512 and tests[-1]["count"] == 128


def state_leaves(workdir, step):
    with ocp.CheckpointManager(os.path.join(workdir, "checkpoints")) as manager:
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    return jax.tree_util.tree_flatten_with_path(restored.state)[0]


@pytest.mark.slow  # CI kills real processes instead: tests/reliability/test_kill_and_resume.py
def test_interrupted_and_resumed_run_is_bit_identical(tmp_path, tiny_config):
    # ResNet (BatchNorm statistics) with crop+flip augmentation exercises every piece of state.
    config = tiny_config(model="resnet20", num_steps=8, checkpoint_every=4, batch_size=8)
    config.model_kwargs.width = 4
    config.augment.crop_padding, config.augment.flip = 2, True
    config.optimizer.name, config.optimizer.momentum = "sgd", 0.9
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")

    train_and_evaluate(config, straight)
    with pytest.raises(Crash):
        train_and_evaluate(config, resumed, hooks=[crash_at(6)])  # dies after checkpoint 4
    assert sorted(os.listdir(os.path.join(resumed, "checkpoints"))) == ["4"]
    train_and_evaluate(config, resumed)

    a, b = state_leaves(straight, 8), state_leaves(resumed, 8)
    assert [path for path, _ in a] == [path for path, _ in b]
    assert any("batch_stats" in jax.tree_util.keystr(path) for path, _ in a)
    for (path, x), (_, y) in zip(a, b):
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))
    steps = [r["step"] for r in read_metrics(resumed) if r["split"] == "train"]
    assert steps == sorted(set(steps)) == [4, 8]  # records of the lost steps 5-6 were dropped


def test_rerunning_a_finished_run_only_evaluates(tmp_path, tiny_config):
    first = train_and_evaluate(tiny_config(), str(tmp_path))
    again = train_and_evaluate(tiny_config(), str(tmp_path))
    assert again == first


def test_resuming_with_a_different_config_is_refused(tmp_path, tiny_config):
    train_and_evaluate(tiny_config(), str(tmp_path))
    with pytest.raises(CheckpointError, match=r"optimizer.lr: 0.003 -> 0.01.*new --workdir"):
        train_and_evaluate(tiny_config(**{"optimizer.lr": 0.01}), str(tmp_path))
    # Changing how often it logs does not change the run, so that resumes.
    train_and_evaluate(tiny_config(log_every=2), str(tmp_path))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, tiny_config):
    # Sane for 8 steps (checkpoint at 8), then the learning rate jumps by 1e30 and diverges.
    config = tiny_config(num_steps=16, checkpoint_every=8)
    config.optimizer.name = "sgd"
    config.schedule.name, config.schedule.boundaries = "piecewise", (8,)
    config.schedule.decay_factor = 1e30
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss .* at step (9|1[0-6]).*step 8"):
        train_and_evaluate(config, str(tmp_path))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["8"]
    for path, leaf in state_leaves(str(tmp_path), 8):
        assert np.all(np.isfinite(leaf)), jax.tree_util.keystr(path)


def test_corrupt_checkpoint_is_reported_and_kept(tmp_path, tiny_config):
    train_and_evaluate(tiny_config(), str(tmp_path))
    state_dir = tmp_path / "checkpoints" / "16" / "state"
    damaged = 0
    for root, _, files in os.walk(state_dir):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"not a checkpoint")
            damaged += 1
    with pytest.raises(
        CheckpointError, match=r"checkpoints/16 is corrupt.*earlier checkpoints: \[8\]"
    ):
        train_and_evaluate(tiny_config(), str(tmp_path))
    assert sum(len(files) for _, _, files in os.walk(state_dir)) == damaged  # nothing deleted


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"modle": "lenet5"}, "unknown config key 'modle'; did you mean 'model'"),
        ({"model": "lenet6"}, "unknown model 'lenet6'; did you mean 'lenet5'"),
        ({"dataset": "cifar100"}, "unknown dataset 'cifar100'"),
        ({"augment.pad_mode": "mirror"}, "augment.pad_mode 'mirror'"),
        ({"data.eval_split": "validation"}, "data.eval_split"),
        ({"data.test_split": "valid"}, "data.test_split of dataset 'synthetic'.*valid"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"loss": "hinge"}, "unknown loss 'hinge'.*cross_entropy"),
        ({"input_shape": (32, 32)}, r"input shape \(32, 32\) has 2 dimensions; model .lenet5."),
    ],
)
def test_bad_configs_fail_before_any_work(tmp_path, tiny_config, overrides, match):
    config = tiny_config()
    with config.unlocked():
        for key, value in overrides.items():
            if key == "modle":
                config.modle = value
            else:
                *parents, leaf = key.split(".")
                target = config
                for parent in parents:
                    target = target[parent]
                target[leaf] = value
    with pytest.raises(ConfigError, match=match):
        train_and_evaluate(config, str(tmp_path))
    assert not os.path.exists(tmp_path / "checkpoints")


@pytest.mark.slow  # compiles a ResNet-20 train step; the override's validation is tested by default
def test_input_shape_override_trains_the_model_at_that_size(tmp_path, tiny_config):
    # The synthetic 32x32 images are resized to 24x24; ResNet-20 is size-agnostic.
    config = tiny_config(model="resnet20", num_steps=4, batch_size=8, input_shape=(24, 24, 1))
    config.data.fit = "resize"
    config.model_kwargs.width = 4
    seen = []
    train_and_evaluate(config, str(tmp_path), hooks=[lambda step, state: seen.append(state)])
    stem = seen[-1].params["stem_conv"]["kernel"]
    assert stem.shape == (3, 3, 1, 4)
    x = np.zeros((1, 24, 24, 1), np.float32)
    _, features = seen[-1].apply_fn(
        {"params": seen[-1].params, "batch_stats": seen[-1].batch_stats}, x
    )
    assert features["stage3"].shape == (1, 6, 6, 16)


def sigterm_at(step):
    def hook(current, state):
        if current == step:
            os.kill(os.getpid(), signal.SIGTERM)  # what a cluster sends to preempt a job

    return hook


def test_sigterm_saves_a_checkpoint_stops_and_resumes_bit_identically(tmp_path, tiny_config):
    config = tiny_config(num_steps=8, checkpoint_every=4)
    straight, preempted = str(tmp_path / "straight"), str(tmp_path / "preempted")
    train_and_evaluate(config, straight)
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Preempted, match="preempted \\(SIGTERM\\) at step 6/8: checkpoint 6 saved"):
        train_and_evaluate(config, preempted, hooks=[sigterm_at(6)])
    assert signal.getsignal(signal.SIGTERM) is previous  # the handler is the loop's only inside it
    assert sorted(os.listdir(os.path.join(preempted, "checkpoints"))) == ["4", "6"]
    train_and_evaluate(config, preempted)
    for (path, x), (_, y) in zip(state_leaves(straight, 8), state_leaves(preempted, 8)):
        np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


def test_a_real_sigterm_ends_the_command_with_status_143_and_a_checkpoint(tmp_path):
    workdir = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "cnnjax.main",
        "--config=configs/default.py",
        f"--workdir={workdir}",
        "--config.num_steps=1000000",
        "--config.log_every=1",
        "--config.checkpoint_every=1000000",
        "--config.progress=False",
    ]
    process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    metrics = workdir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert process.poll() is None and time.monotonic() < deadline, "the run did not start"
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == Preempted.EXIT_STATUS == 143, stderr
    line = error_line(stderr)
    assert "preempted (SIGTERM) at step" in line, stderr
    step = line.split("checkpoint ")[1].split(" ")[0]
    assert os.listdir(workdir / "checkpoints") == [step]


def limit_file_size_at(step, max_bytes):
    """From `step` on, the OS refuses to grow any file of this process past `max_bytes` (EFBIG:
    a real failing write, inside orbax's and tensorstore's own I/O, as a full disk would be)."""

    def hook(current, state):
        if current == step:
            resource.setrlimit(
                resource.RLIMIT_FSIZE, (max_bytes, resource.getrlimit(resource.RLIMIT_FSIZE)[1])
            )

    return hook


def test_a_failing_write_during_a_save_keeps_the_previous_checkpoint(tmp_path, tiny_config):
    config = tiny_config(num_steps=16, checkpoint_every=8, log_every=8)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error, not a killed process
    try:
        with pytest.raises(
            CheckpointError, match=r"save checkpoint 16 .*File too large.*checkpoint 8 is intact"
        ):
            train_and_evaluate(config, str(tmp_path), hooks=[limit_file_size_at(9, 4096)])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["8"]
    for path, leaf in state_leaves(str(tmp_path), 8):  # restorable: a resume starts from here
        assert np.all(np.isfinite(leaf)), jax.tree_util.keystr(path)
