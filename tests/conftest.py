"""Shared fixtures: tiny configs on synthetic data, and the offline TFDS folder when present."""

import hashlib
import os
import pathlib

import hypothesis
import pytest

from cnnjax.train.config import base_config

ROOT = pathlib.Path(__file__).resolve().parents[1]

# CI replays the same examples every run (a red CI is then reproducible); local runs explore.
hypothesis.settings.register_profile("ci", derandomize=True, print_blob=True)
hypothesis.settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def file_digests(folder) -> dict[str, str]:
    """`{relative path: sha256}` of every file under `folder`: equal before and after a command
    means the command changed nothing there."""
    root = pathlib.Path(folder)
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def find_tfds_dir():
    """`$TFDS_DATA_DIR`, else `../shared/tfds` beside the repository, else None."""
    candidates = [os.environ.get("TFDS_DATA_DIR"), str(ROOT.parent / "shared" / "tfds")]
    return next((c for c in candidates if c and os.path.isdir(os.path.join(c, "mnist"))), None)


@pytest.fixture
def tfds_dir():
    path = find_tfds_dir()
    if path is None:
        pytest.skip("offline TFDS data not found (set TFDS_DATA_DIR or put it in ../shared/tfds)")
    return path


def make_tiny_config(**overrides):
    """LeNet-5 on 256 synthetic examples: a few seconds to compile and train."""
    c = base_config()
    c.model = "lenet5"
    c.dataset = "synthetic"
    c.batch_size = 32
    c.eval_batch_size = 64
    c.num_steps = 16
    c.optimizer.lr = 3e-3
    c.log_every = 4
    c.eval_every = 0
    c.checkpoint_every = 8
    c.progress = False
    for key, value in overrides.items():
        target = c
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return c


@pytest.fixture
def tiny_config():
    return make_tiny_config
