"""The Deep Compression driver at its smoke size, and its checked-in results against their records.

The default suite runs LeNet-300-100 (an MLP: three short runs compile in seconds); `-m slow`
adds lenet5_caffe.
"""

import json
import os
import pathlib

import numpy as np
import pytest

from cnnjax import compress
from cnnjax.errors import ConfigError
from configs.experiments import deep_compression as dc_config
from experiments import deep_compression
from experiments.ablation import markdown_table, summarize
from tests.conftest import file_digests


@pytest.fixture(
    scope="module",
    params=["lenet300_100", pytest.param("lenet300_100,lenet5_caffe", marks=pytest.mark.slow)],
)
def smoke(request, tmp_path_factory):
    config = dc_config.get_config("smoke")
    config.models = request.param
    workdir = tmp_path_factory.mktemp("deep_compression")
    text = deep_compression.run(config, str(workdir))
    stamps = {p: os.path.getmtime(p) for p in workdir.glob("*/*/seed*/result.json")}
    deep_compression.run(config, str(workdir))  # every run is finished: nothing retrains
    assert stamps == {p: os.path.getmtime(p) for p in workdir.glob("*/*/seed*/result.json")}
    before = json.loads((workdir / "results.json").read_text())
    checkpoints = {p: file_digests(p) for p in workdir.glob("*/*/seed*/checkpoints")}
    # Measured again with 3-bit relative indices: new measurements, the training untouched.
    config.remeasure, config.index_bits = True, 3
    text = deep_compression.run(config, str(workdir))
    assert checkpoints == {p: file_digests(p) for p in workdir.glob("*/*/seed*/checkpoints")}
    results = json.loads((workdir / "results.json").read_text())
    return workdir, config, text, results, before


def test_each_stage_starts_from_the_last_and_the_file_is_the_shared_model(smoke):
    workdir, config, text, results, _ = smoke
    models = config.models.split(",")
    assert [(r["model"], r["stage"]) for r in results["runs"]] == [
        (m, s) for m in models for s in deep_compression.STAGES
    ]
    for model in models:
        pruned = json.loads((workdir / model / "pruned" / "seed0" / "config.json").read_text())
        assert pruned["init_from"]["workdir"] == str(workdir / model / "dense" / "seed0")
        path = workdir / "files" / f"{model}_shared_seed0.cnnz"
        name, variables = compress.load(str(path))
        assert name == model
        shared = next(r for r in results["runs"] if r["model"] == model and r["stage"] == "shared")
        assert shared["file_bytes"] == os.path.getsize(path)
        assert shared["rate"] == pytest.approx(compress.compression_rate(str(path)))
        for layer in variables["params"].values():  # at most 2**bits values per kernel
            kernel = np.asarray(layer["kernel"])
            assert len(np.unique(kernel)) <= 2**8
        assert not (workdir / "files" / f"{model}_dense_seed0.cnnz").exists()
    assert "Per layer, lenet300_100" in text and "ip1 (Han et al.)" in text
    assert (workdir / "rate_vs_error.png").stat().st_size > 0


def test_remeasuring_keeps_the_training_and_redoes_the_measurements(smoke):
    _, _, _, results, before = smoke
    for old, new in zip(before["runs"], results["runs"], strict=True):
        for key in ("arm", "seed", "test_accuracy", "steps", "wall_seconds"):
            assert new[key] == old[key]
        if new["stage"] != "dense":  # dense kernels have no relative indices
            assert {layer["index_width"] for layer in new["layers"]} - {None} == {3}, new["arm"]
            assert any(layer["index_width"] != 3 for layer in old["layers"])


def test_unknown_models_are_refused_before_anything_runs(tmp_path):
    config = dc_config.get_config("smoke")
    config.models = "lenet300_100,lenet5"
    with pytest.raises(ConfigError, match=r"unknown model 'lenet5'.*lenet300_100, lenet5_caffe"):
        deep_compression.run(config, str(tmp_path / "dc"))
    assert not (tmp_path / "dc").exists()


RESULTS = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "results"


def test_checked_in_page_is_the_table_of_its_records_and_the_files_load():
    payload = json.loads((RESULTS / "deep_compression.json").read_text())
    records = [
        json.loads(p.read_text())
        for p in sorted((RESULTS / "deep_compression_cpu_runs").glob("*/*/seed*/result.json"))
    ]
    # Three stages x three seeds per model; lenet5_caffe's cpu runs are added as they finish.
    assert len(records) == len(payload["runs"]) and len(records) % 9 == 0 and records
    key = lambda r: (r["arm"], r["seed"])  # noqa: E731
    runs = sorted(payload["runs"], key=key)
    deep_compression.add_weight_rates(records)
    for record in records:
        record["model"], record["stage"] = record["arm"].split("/")
        record["test_error"] = 1.0 - record["file_accuracy"]
    assert sorted(records, key=key) == runs
    rows = summarize(sorted(records, key=key), list(deep_compression.COLUMNS))
    order = [row["arm"] for row in payload["summary"]]
    rows.sort(key=lambda row: order.index(row["arm"]))
    page = (RESULTS / "deep_compression.md").read_text()
    table = markdown_table(rows, deep_compression.COLUMNS, percent=deep_compression.PERCENT)
    assert table in page
    for model in dict.fromkeys(r["model"] for r in records):
        assert deep_compression.layer_table(model, records) in page
        for record in (r for r in records if r["model"] == model and r["stage"] == "shared"):
            path = RESULTS / "deep_compression" / f"{model}_shared_seed{record['seed']}.cnnz"
            assert os.path.getsize(path) == record["file_bytes"]
            name, _ = compress.load(str(path))
            assert name == model
