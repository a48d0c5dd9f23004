"""The command line as a user runs it: training, resume, and errors that need real data.

The table of bad command lines of every entry point is tests/test_bad_inputs.py.
"""

import os
import subprocess
import sys

from tests.cli_harness import error_line
from tests.conftest import ROOT


def run_main(*args, env=None):
    environment = dict(os.environ, **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "cnnjax.main", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=environment,
        timeout=600,
    )


def assert_one_error_line(result, match):
    assert result.returncode == 2, result.stderr
    assert match in error_line(result.stderr), result.stderr


def test_model_and_data_shapes_that_do_not_fit(tmp_path, tfds_dir):
    result = run_main(
        "--config=configs/default.py",
        f"--workdir={tmp_path}",
        "--config.dataset=cifar10_jpeg",
        f"--config.data_dir={tfds_dir}",
        "--config.data.train_split=train[:1%]",
        "--config.data.eval_split=test[:1%]",
    )
    assert_one_error_line(result, "images have 3 channels but the model expects 1")


def test_default_config_trains_prints_accuracy_and_resumes(tmp_path):
    args = ["--config=configs/default.py", f"--workdir={tmp_path}", "--config.num_epochs=2"]
    first = run_main(*args)
    assert first.returncode == 0, first.stderr
    assert "final test accuracy of lenet5 on digits" in first.stdout
    again = run_main(*args)
    assert again.returncode == 0, again.stderr
    assert "resumed from step" in again.stdout
    final = [line for line in first.stdout.splitlines() if line.startswith("final")]
    assert final == [line for line in again.stdout.splitlines() if line.startswith("final")]
    plot = subprocess.run(
        [sys.executable, "-m", "cnnjax.plot", str(tmp_path)], capture_output=True, text=True
    )
    assert plot.returncode == 0 and os.path.exists(tmp_path / "curves.png")
