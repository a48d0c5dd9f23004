"""Distillation in the training loop: the teacher's soft targets reach the loss, and a bad
teacher is refused before anything is made."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax.errors import CheckpointError, ConfigError
from cnnjax.train import train
from cnnjax.train.losses import distillation_loss
from cnnjax.train.metrics import read_metrics
from cnnjax.train.state import create_train_state
from cnnjax.train.steps import Distillation, Preprocess, train_step
from tests.conftest import make_mlp_config as mlp_config
from tests.train.compile_cache import persistent_compile_cache


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("teacher"))
    config = mlp_config(num_steps=8, checkpoint_every=8)
    with persistent_compile_cache(tmp_path_factory.mktemp("xla_cache")):
        return workdir, train(config, workdir)


def test_soft_weight_zero_is_the_plain_run_and_one_follows_the_teacher(teacher, tmp_path):
    folder, _ = teacher
    plain = train(mlp_config(num_steps=4, log_every=1), str(tmp_path / "plain"))
    hard = mlp_config(num_steps=4, log_every=1)
    hard.distill.teacher, hard.distill.soft_weight = folder, 0.0
    hard_run = train(hard, str(tmp_path / "hard"))
    for a, b in zip(jax.tree.leaves(plain.state.params), jax.tree.leaves(hard_run.state.params)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    soft = mlp_config(num_steps=4, log_every=1)
    soft.distill.teacher, soft.distill.soft_weight = folder, 1.0
    train(soft, str(tmp_path / "soft"))
    losses = {
        name: [r["loss"] for r in read_metrics(str(tmp_path / name)) if r.get("split") == "train"]
        for name in ("plain", "soft")
    }
    assert losses["soft"] and losses["soft"] != losses["plain"]


def test_the_step_minimizes_the_distillation_loss_of_the_teachers_logits(teacher):
    _, run = teacher
    variables = {"params": run.state.params, "batch_stats": run.state.batch_stats}
    student = create_train_state(run.model, run.state.tx, (28, 28, 1), seed=3)
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 256, (8, 28, 28, 1), dtype=np.uint8),
        "label": rng.integers(0, 10, 8).astype(np.int32),
    }
    preprocess = Preprocess((0.5,), (0.25,))

    def apply(v, x):
        return run.model.apply(v, x, train=False)[0]

    distill = Distillation(apply, temperature=3.0, soft_weight=0.7)
    _, metrics = train_step(student, batch, variables, preprocess=preprocess, distill=distill)
    x = preprocess(jnp.asarray(batch["image"]))
    logits = apply({"params": student.params, "batch_stats": student.batch_stats}, x)
    expected = distillation_loss(logits, apply(variables, x), batch["label"], 3.0, 0.7).mean()
    np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-5)


@pytest.mark.parametrize(
    "key, value, error, match",
    [
        (
            "distill.temperature",
            0.0,
            ConfigError,
            r"distill.temperature must be a finite number > 0",
        ),
        ("distill.soft_weight", 1.5, ConfigError, r"distill.soft_weight must be in \[0, 1\]"),
        ("distill.checkpoint", "first", ConfigError, r"distill.checkpoint .first.*best, latest"),
        ("dataset", "digits", ConfigError, r"learned \(dataset, input shape, normalize\)"),
    ],
)
def test_bad_distillation_configs_make_nothing(teacher, tmp_path, key, value, error, match):
    folder, _ = teacher
    config = mlp_config(num_steps=2)
    config.distill.teacher = folder
    target = config
    *parents, leaf = key.split(".")
    for parent in parents:
        target = target[parent]
    target[leaf] = value
    with pytest.raises(error, match=match):
        train(config, str(tmp_path / "student"))
    assert not (tmp_path / "student").exists()


def test_a_missing_teacher_is_refused(tmp_path):
    config = mlp_config(num_steps=2)
    config.distill.teacher = str(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match=r"distill.teacher: .*config.json does not exist"):
        train(config, str(tmp_path / "student"))
    assert not (tmp_path / "student").exists()
