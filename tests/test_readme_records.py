"""README's results and performance numbers are regenerated from the checked-in records.

Each table and each sentence with measured numbers is rendered here from its JSON/JSONL record
(the command that writes the record is named next to it in the README) and must appear in
README.md exactly (whitespace aside), so a re-measured record or an edited number that no longer
agree fail here.
"""

import importlib.util
import json
import re
import statistics

import pytest

from experiments import readme_results
from tests.conftest import ROOT

README = " ".join((ROOT / "README.md").read_text().split())
RESULTS = ROOT / "benchmarks" / "results"


def quoted(text: str) -> bool:
    return " ".join(text.split()) in README


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench_table():
    return load_script("bench_table")


def test_results_table_and_price_references_are_the_records():
    records = readme_results.read_records()
    assert set(records) == {*readme_results.RUNS, readme_results.BASELINES}
    assert quoted(readme_results.render_table(records))
    assert quoted(readme_results.render_baselines(records[readme_results.BASELINES]))
    page = (ROOT / "experiments" / "results" / "readme_results.md").read_text()
    assert page == readme_results.render_page(records)
    assert all("cores" in r["machine"] and r["machine"][0].isalpha() for r in records.values())


def test_cpu_performance_table_is_the_bench_records(bench_table):
    records = bench_table.read_records(RESULTS / "bench_cpu.jsonl")
    assert quoted(bench_table.readme_table(records))
    assert quoted(f"Measured on {records[0]['machine']}")


def _ratios(records, key):
    return ", ".join(f"{r[key]:.2f}" for r in records)


def test_run_to_run_and_xla_sentences_are_the_records(bench_table):
    repeats = bench_table.read_records(RESULTS / "bench_cpu_repeats.jsonl")
    assert len(repeats) >= 3
    assert quoted(
        f"gave train ratios {_ratios(repeats, 'train_ratio')} and eval ratios "
        f"{_ratios(repeats, 'eval_ratio')}"
    )
    (xla,) = bench_table.read_records(RESULTS / "bench_cpu_xla.jsonl")
    assert xla["impl"] == "xla" and xla["model"] == "resnet20"
    compiles = [r["compile_s"] for r in repeats]
    assert quoted(
        f"trained at {xla['jax_train_ips']:,.0f} img/s and evaluated at "
        f"{xla['jax_eval_ips']:,.0f} img/s ({xla['train_ratio']:.2f}x and "
        f"{xla['eval_ratio']:.2f}x PyTorch), and its train step compiled in "
        f"{xla['compile_s']:.1f} s against {min(compiles):.1f}-{max(compiles):.1f} s"
    )


def test_memory_efficient_densenet_sentence_is_the_record():
    r = json.loads((RESULTS / "memory_efficient_densenet.json").read_text())
    gib, gb = 2**30, 1e9
    assert quoted(
        f"For DenseNet-BC-100 at batch {r['batch']} they drop from "
        f"{r['default_saved_activations_mib'] * 2**20 / gib:.2f} GiB to "
        f"{r['efficient_saved_activations_mib'] * 2**20 / gib:.2f} GiB, while XLA's CPU buffer "
        f"assignment for the whole step shrinks less, from "
        f"{r['default_xla_train_step_bytes'] / gb:.2f} to "
        f"{r['efficient_xla_train_step_bytes'] / gb:.2f} GB"
    )
    speeds = " and ".join(f"{ratio:.2f}x" for ratio in r["speed_ratios"])
    assert quoted(f"it trains at {speeds} the default's speed")


def test_summary_time_sentence_is_the_record():
    records = [
        json.loads(line) for line in (RESULTS / "summary_zoo.jsonl").read_text().splitlines()
    ]
    seconds = [r["summary_seconds"] for r in records]
    assert len(records) == len(readme_results_models())
    assert quoted(
        f"median {statistics.median(seconds):.1f} s and at most {max(seconds):.1f} s on "
        f"{records[0]['machine']}"
    )


def readme_results_models():
    from cnnjax import models

    return models.list_models()


def test_every_record_names_its_cpu():
    for path in [*RESULTS.glob("*.jsonl"), *RESULTS.glob("*.json")]:
        for line in path.read_text().splitlines() if path.suffix == ".jsonl" else [None]:
            record = json.loads(line) if line else json.loads(path.read_text())
            where = record.get("machine") or record.get("cpu")
            assert where and re.match(r"[A-Za-z]", where), (path.name, where)


def conv_ops_sentence(records) -> str:
    """README's summary of the per-pass table: oneDNN against XLA and PyTorch."""

    def speedup(r, over, kind):
        return r["seconds"][over][kind] / r["seconds"]["onednn"][kind]

    dense = [speedup(r, "xla", "kernel_grad") for r in records if r["shape"][-1] == 1]
    grouped = [speedup(r, "xla", "kernel_grad") for r in records if r["shape"][-1] > 1]
    forward = [speedup(r, "torch", "forward") for r in records]
    return (
        f"its kernel gradients are {min(dense):.0f}-{max(dense):.0f}x as fast as XLA's for dense "
        f"convolutions and {min(grouped):.0f}-{max(grouped):.0f}x for depthwise and grouped ones; "
        f"its forward passes run at {min(forward):.2f}-{max(forward):.2f}x PyTorch's speed"
    )


def test_conv_ops_sentence_is_the_record():
    records = [json.loads(line) for line in (RESULTS / "conv_ops.jsonl").read_text().splitlines()]
    assert len(records) >= 11
    assert quoted(conv_ops_sentence(records))
