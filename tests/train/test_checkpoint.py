"""Resume compatibility: which config changes a saved checkpoint accepts."""

import json
import os

import numpy as np
import pytest

from cnnjax.errors import CheckpointError
from cnnjax.train.checkpoint import (
    SCHEMA_KEY,
    SCHEMA_VERSION,
    Checkpoints,
    config_differences,
    flatten,
)
from cnnjax.train.config import base_config, schema_defaults

DEFAULTS = {"optimizer.lr": 1e-3, "label_smoothing": 0.0, "augment.flip": False}


def test_a_key_absent_from_the_saved_config_and_at_its_default_is_no_difference():
    saved = {"optimizer": {"lr": 1e-3}}
    current = {"optimizer": {"lr": 1e-3}, "label_smoothing": 0.0}
    assert config_differences(saved, current, DEFAULTS) == []
    # Absent from the current config (a field since removed) and at its default: no difference.
    assert config_differences(current, saved, DEFAULTS) == []


def test_a_key_absent_from_the_saved_config_and_changed_from_its_default_is_a_difference():
    saved = {"optimizer": {"lr": 1e-3}}
    current = {"optimizer": {"lr": 1e-3}, "label_smoothing": 0.1}
    assert config_differences(saved, current, DEFAULTS) == ["label_smoothing: 0.0 -> 0.1"]


def test_a_key_without_a_default_compares_as_absent():
    assert config_differences({}, {"model_kwargs": {"width": 4}}, DEFAULTS) == [
        "model_kwargs.width: '<absent>' -> 4"
    ]
    assert config_differences({}, {"label_smoothing": 0.0}) == [
        "label_smoothing: '<absent>' -> 0.0"
    ]


def test_run_control_keys_and_the_schema_version_never_differ():
    saved = {"log_every": 5, SCHEMA_KEY: 0}
    current = {"log_every": 50, SCHEMA_KEY: SCHEMA_VERSION}
    assert config_differences(saved, current, DEFAULTS) == []


def test_schema_defaults_cover_every_base_config_key():
    assert schema_defaults() == flatten(base_config().to_dict())


def _state():
    return {"w": np.arange(4, dtype=np.float32)}


def test_a_checkpoint_saved_before_a_field_existed_resumes(tmp_path):
    old = json.loads(base_config().to_json())
    del old["label_smoothing"]  # as if the run had started before the field was added
    saver = Checkpoints(str(tmp_path), old, defaults=schema_defaults())
    saver.save(3, _state())
    saver.close()

    current = json.loads(base_config().to_json())
    resumer = Checkpoints(str(tmp_path), current, defaults=schema_defaults())
    state, step = resumer.restore_latest(_state())
    resumer.close()
    assert step == 3 and np.array_equal(state["w"], _state()["w"])

    current["label_smoothing"] = 0.1
    refuser = Checkpoints(str(tmp_path), current, defaults=schema_defaults())
    with pytest.raises(CheckpointError, match=r"label_smoothing: 0.0 -> 0.1"):
        refuser.restore_latest(_state())
    refuser.close()


def test_the_saved_config_carries_the_schema_version(tmp_path):
    saver = Checkpoints(str(tmp_path), {"model": "lenet5"})
    saver.save(1, _state())
    saver.close()
    with open(os.path.join(tmp_path, "checkpoints", "1", "meta", "metadata")) as f:
        assert json.load(f)["config"] == {"model": "lenet5", SCHEMA_KEY: SCHEMA_VERSION}
