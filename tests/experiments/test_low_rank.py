"""The low-rank study at its smoke size, and its checked-in results against their records.

The default suite runs LeNet-300-100 at three ranks per layer; `-m slow` adds lenet5_caffe.
"""

import json
import pathlib

import numpy as np
import pytest

from cnnjax.errors import ConfigError
from configs.experiments import low_rank as lr_config
from experiments import low_rank


@pytest.fixture(
    scope="module",
    params=["lenet300_100", pytest.param("lenet300_100,lenet5_caffe", marks=pytest.mark.slow)],
)
def smoke(request, tmp_path_factory):
    config = lr_config.get_config("smoke")
    config.models = request.param
    config.layers.lenet300_100 = {"fc1_channel": (1, 16, 300), "fc2_channel": (100,)}
    workdir = tmp_path_factory.mktemp("low_rank")
    text = low_rank.run(config, str(workdir))
    results = json.loads((workdir / "results.json").read_text())
    return workdir, config, text, results


def test_full_rank_is_the_dense_model_and_lower_ranks_cost_less(smoke):
    workdir, config, text, results = smoke
    for record in results["runs"]:
        dense = record["dense"]
        rows = record["ranks"]
        for row in rows:
            rows_, cols = {"fc1": (784, 300), "fc2": (300, 100)}[row["layer"]]
            assert row["layer_params"] == row["rank"] * (rows_ + cols)
            if row["rank"] == row["max_rank"]:  # exact: the same predictions
                assert row["test_error"] == pytest.approx(dense["test_error"], abs=2e-3)
                assert row["weight_error"] == pytest.approx(0.0, abs=1e-3)
        fc1 = [row for row in rows if row["layer"] == "fc1"]
        assert [row["model_macs"] for row in fc1] == sorted(row["model_macs"] for row in fc1)
        assert fc1[0]["layer_params"] == 784 + 300  # rank 1: r (m + n)
        assert fc1[0]["model_macs"] == dense["macs"] - 784 * 300 + 784 + 300
        spectrum = record["spectra"]["fc1_channel"]["trained"]
        assert len(spectrum) == 300 and spectrum == sorted(spectrum, reverse=True)
    assert "lenet300_100, one layer factored at a time" in text
    for name in low_rank.FIGURES:
        assert (workdir / f"{name}.png").stat().st_size > 0


def test_energy_rank_counts_squared_singular_values():
    assert low_rank.energy_rank([3.0, 1.0], 0.9) == 1  # 9 of 10
    assert low_rank.energy_rank([3.0, 1.0], 0.95) == 2
    assert low_rank.energy_rank([1.0, 1.0, 1.0, 1.0], 0.5) == 2


@pytest.mark.parametrize(
    "key, ranks, message",
    [
        ("fc1_diagonal", (1,), r"<layer>_<scheme> with scheme one of channel, spatial"),
        ("fc1_channel", (0,), r"positive integer ranks, got \(0,\)"),
    ],
)
def test_bad_layer_entries_are_refused_before_training(tmp_path, key, ranks, message):
    config = lr_config.get_config("smoke")
    config.layers.lenet300_100 = {key: ranks}
    with pytest.raises(ConfigError, match=message):
        low_rank.run(config, str(tmp_path / "lr"))
    assert not (tmp_path / "lr").exists()


RESULTS = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "results"


def test_checked_in_page_is_the_table_of_its_records():
    payload = json.loads((RESULTS / "low_rank.json").read_text())
    records = [
        json.loads(p.read_text())
        for p in sorted((RESULTS / "low_rank_cpu_runs").glob("*/*/seed*/result.json"))
    ]
    key = lambda r: (r["arm"], r["seed"])  # noqa: E731
    assert sorted(records, key=key) == sorted(payload["runs"], key=key) and records
    assert len(records) == 3 * len({r["model"] for r in records})  # three seeds per model
    order = [r["arm"] for r in payload["runs"]]
    records.sort(key=lambda r: (order.index(r["arm"]), r["seed"]))
    page = (RESULTS / "low_rank.md").read_text()
    summary = low_rank.summarize_ranks(records)
    assert low_rank.spectra_table(records) in page
    for model in dict.fromkeys(r["model"] for r in records):
        assert low_rank.rank_table(model, summary, records) in page
    for row in summary:  # a layer at full rank predicts as the dense model did
        if row["rank"] == row["max_rank"]:
            assert np.isclose(row["test_error"], row["dense_error"], atol=2e-4)
