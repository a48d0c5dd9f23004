"""`python -m cnnjax.compress`: a run's checkpoint to a compressed file, its table and rate."""

import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from cnnjax import compress
from cnnjax.compress import __main__ as command
from cnnjax.compress import prune
from cnnjax.train import train
from tests.conftest import ROOT, make_tiny_config


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("mlp"))
    config = make_tiny_config(model="lenet300_100", num_steps=2, checkpoint_every=2)
    config.data.fit = "resize"
    return workdir, train(config, workdir)


def test_prune_share_writes_the_file_it_reports(mlp_run, tmp_path):
    workdir, run = mlp_run
    out = tmp_path / "mlp.cnnz"
    result = subprocess.run(
        [sys.executable, "-m", "cnnjax.compress", "--model=lenet300_100",
         f"--checkpoint={workdir}", "--method=prune_share", "--sparsity=0.8", "--bits=4",
         f"--out={out}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    name, variables = compress.load(str(out))
    assert name == "lenet300_100"
    rate = float(re.search(r"compression rate ([\d.]+)x", result.stdout).group(1))
    assert rate == pytest.approx(compress.compression_rate(str(out)), abs=0.05)
    assert f"{out.stat().st_size:,} bytes" in result.stdout
    assert "params/fc1/kernel" in result.stdout and "sparse_shared" in result.stdout
    for layer, report in prune.sparsity_report(variables["params"]).items():
        assert report["kept"] == pytest.approx(0.2 * report["weights"], abs=1), layer
        kernel = np.asarray(variables["params"][layer.split("/")[0]]["kernel"])
        assert len(np.unique(kernel[kernel != 0])) <= 2**4
    expected, bits = command.compress_params(run.state.params, "prune_share", 0.8, "layer", 4)
    assert bits == 4
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(variables["params"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # the file holds them exactly


def test_method_none_is_lossless(mlp_run):
    workdir, run = mlp_run
    params, bits = command.compress_params(run.state.params, "none", 0.9, "layer", 5)
    assert bits is None
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(run.state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_prune_filters_compact_writes_a_smaller_model_that_bench_runs(mlp_run, tmp_path):
    from cnnjax import bench

    workdir, run = mlp_run
    out = tmp_path / "compact.cnnz"
    result = subprocess.run(
        [sys.executable, "-m", "cnnjax.compress", "--model=lenet300_100",
         f"--checkpoint={workdir}", "--method=prune_filters", "--sparsity=0.5", "--compact",
         f"--out={out}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "fc1: 150 of 300 units kept" in result.stdout
    header, _ = compress.read_header(str(out))
    assert header["model_fields"]["hidden"] == [150, 50]
    _, variables = compress.load(str(out))
    assert variables["params"]["fc2"]["kernel"].shape == (150, 50)
    measured = bench.run(None, 8, compare="parent", windows=1, steps=1, variables_path=str(out))
    assert measured["model"] == "lenet300_100" and measured["model_fields"]["hidden"] == [150, 50]
    assert measured["params"] < measured["parent_params"] and measured["parent_train_ratio"] > 0
    assert measured["macs"] == 784 * 150 + 150 * 50 + 50 * 10
    assert "this model over its parent" in bench.render(measured)
