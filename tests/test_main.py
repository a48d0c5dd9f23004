"""The command line as a user runs it: one clear error line per bad input, and resume."""

import json
import os
import subprocess
import sys

import pytest

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
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and match in errors[0], result.stderr


BAD_INPUTS = [
    (["--config.lr=0.1"], "unknown config key 'lr'"),
    (["--config.optimizer.lr=abc"], "could not convert string to float: 'abc'"),
    (["--config.model=resnet21"], "did you mean 'resnet20'"),
    (["--config.dataset=imagenet"], "unknown dataset 'imagenet'"),
    (["--config.optimizer.learning_rate=1"], "did you mean 'optimizer.lr'"),
    (["--config.model_kwargs.width=4"], "add it to config.model_kwargs in the config file"),
    (["--config.dataset=cifar10_jpeg", "--config.data_dir=/nonexistent"], "TFDS_DATA_DIR"),
    (["--workdir={file}"], "is a file, not a folder"),
    (["--workdir={file}/run"], "cannot create workdir '"),
    (
        ["--workdir={fresh}", "--config.batch_size=5000"],
        "batch_size 5000 exceeds the 1438 training",
    ),
    (["--config.label_smoothing=5"], r"label_smoothing must be in [0, 1), got 5.0"),
]


@pytest.fixture(scope="module")
def bad_input_results(tmp_path_factory):
    """Each command line of `BAD_INPUTS`, all run in one process (tests/cli_harness.py)."""
    workdir = tmp_path_factory.mktemp("bad_input")
    paths = dict(file=workdir / "a_file", fresh=workdir / "never_made")
    paths["file"].write_text("not a folder")
    argvs = [
        ["--config=configs/default.py", f"--workdir={workdir}", *(a.format(**paths) for a in args)]
        for args, _ in BAD_INPUTS
    ]
    argvs.append(["--config=configs/nope.py", f"--workdir={workdir}"])
    harness = subprocess.run(
        [sys.executable, "-m", "tests.cli_harness", json.dumps({"cnnjax.main": argvs})],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert harness.returncode == 0, harness.stderr
    results = json.loads(harness.stdout.splitlines()[-1])["cnnjax.main"]
    return [
        subprocess.CompletedProcess(a, r["code"], "", r["stderr"]) for a, r in zip(argvs, results)
    ]


@pytest.mark.parametrize("case", range(len(BAD_INPUTS)), ids=[m for _, m in BAD_INPUTS])
def test_bad_input_gives_one_clear_error_line(bad_input_results, case):
    assert_one_error_line(bad_input_results[case], BAD_INPUTS[case][1])


def test_a_refused_run_leaves_no_workdir(bad_input_results):
    fresh = [a for r in bad_input_results for a in r.args if a.endswith("never_made")]
    assert len(fresh) == 1 and not os.path.exists(fresh[0].split("=", 1)[1])


def test_missing_config_file_is_reported(bad_input_results):
    assert_one_error_line(bad_input_results[-1], "nope.py")


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
