"""Checkpoint folders written from variables (`write_checkpoint`) and read back."""

import jax
import numpy as np
import pytest

from cnnjax.errors import CheckpointError
from cnnjax.train.transfer import read_checkpoint, write_checkpoint


def test_written_variables_read_back_exactly_and_are_never_overwritten(tmp_path):
    variables = {
        "params": {"conv": {"kernel": np.arange(24.0, dtype=np.float32).reshape(2, 2, 2, 3)}},
        "batch_stats": {"bn": {"mean": np.float32([0.5, -1.0, 2.0])}},
    }
    folder = write_checkpoint(str(tmp_path / "start"), variables, step=7)
    loaded, step = read_checkpoint(folder)
    assert step == 7 and sorted(p.name for p in tmp_path.iterdir()) == ["start"]
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(loaded), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(CheckpointError, match="exists already"):
        write_checkpoint(folder, variables)
    assert read_checkpoint(folder)[1] == 7
