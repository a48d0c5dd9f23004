"""The filter-pruning driver at its smoke size, and its checked-in results against their records."""

import json
import pathlib

import pytest

from cnnjax import compress
from cnnjax.errors import ConfigError
from configs.experiments import filter_pruning as fp_config
from experiments import filter_pruning
from experiments.ablation import markdown_table, summarize


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    config = fp_config.get_config("smoke")
    workdir = tmp_path_factory.mktemp("filter_pruning")
    text = filter_pruning.run(config, str(workdir))
    return workdir, config, text, json.loads((workdir / "results.json").read_text())


@pytest.mark.slow  # trains the driver's smoke runs; -m slow
def test_pruned_runs_become_smaller_models_that_bench_measures(smoke):
    workdir, config, text, results = smoke
    dense, pruned = results["runs"]
    assert (dense["arm"], pruned["arm"]) == ("dense", "filters50")
    saved = json.loads((workdir / "filters50" / "seed0" / "config.json").read_text())
    assert saved["init_from"]["workdir"] == str(workdir / "dense" / "seed0")
    assert saved["prune"]["method"] == "l1_filters"
    assert saved["prune"]["layer_sparsity"]["conv2/kernel"] == 0.5
    assert pruned["compact_fields"] == {"features": [10, 25], "hidden": 250}
    header, _ = compress.read_header(str(workdir / "files" / "filters50_seed0.cnnz"))
    assert header["model_fields"] == pruned["compact_fields"]
    assert pruned["compact_parameters"] < 0.3 * dense["parameters"]
    assert pruned["compact_macs"] < 0.3 * dense["macs"]
    assert pruned["train_speedup"] > 0 and pruned["eval_speedup"] > 0
    assert "| filters50 (50% of the filters pruned, retrained) | 1 |" in text
    assert "Li et al. 2017" in text and (workdir / "speedup.png").stat().st_size > 0


@pytest.mark.parametrize("arm", ["filters0", "filters100", "filtersx", "half"])
def test_bad_arms_are_refused_before_anything_trains(tmp_path, arm):
    config = fp_config.get_config("smoke")
    config.arms = arm
    with pytest.raises(ConfigError, match=rf"unknown arm '{arm}' \(valid: filters<p>"):
        filter_pruning.run(config, str(tmp_path / "fp"))
    assert not (tmp_path / "fp").exists()


RESULTS = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "results"


@pytest.mark.skipif(not (RESULTS / "filter_pruning.json").exists(), reason="study not run yet")
def test_checked_in_page_is_the_table_of_its_records():
    payload = json.loads((RESULTS / "filter_pruning.json").read_text())
    records = [
        json.loads(p.read_text())
        for p in sorted((RESULTS / "filter_pruning_cpu_runs").glob("*/seed*/result.json"))
    ]
    filter_pruning.add_derived(records)
    order = [r["arm"] for r in payload["runs"]]
    records.sort(key=lambda r: (order.index(r["arm"]), r["seed"]))
    assert records == payload["runs"] and records
    rows = summarize(records, list(filter_pruning.COLUMNS))
    table = markdown_table(rows, filter_pruning.COLUMNS, percent=filter_pruning.PERCENT)
    assert table in (RESULTS / "filter_pruning.md").read_text()
    assert {row["n"] for row in rows} == {3}
    for row in rows[1:]:  # the structured-pruned models run faster than their dense parent
        assert row["eval_speedup"] > 1 and row["train_speedup"] > 1
