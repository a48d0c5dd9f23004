"""Filter pruning made real (Li et al. 2017): prune whole filters by L1 norm, retrain, take the
zero filters out (`make_compact`) and measure the compact model against its dense parent.

  python -m experiments.filter_pruning \
      --config=configs/experiments/filter_pruning.py:cpu --workdir=runs/filter_pruning \
      [--config.arms=filters50] [--config.seeds=0,1]

Runs: `dense/seed<k>` and `filters<p>/seed<k>` (p percent of the filters of `config.layers`
pruned), resumable, finished ones skipped. Per pruned run: its test error, the compact model's
test error (the same predictions: checked), parameters and multiply-accumulates of both, the
compressed file of the compact model (`files/<arm>_seed<k>.cnnz`) and `cnnjax.bench`'s images/s
of the compact model over the dense parent's, training and evaluation, measured in one run.
Writes results.md, results.json and speedup.png in the workdir.
"""

from __future__ import annotations

import os

import numpy as np

from cnnjax import bench
from cnnjax.analysis.shift_invariance import make_predict
from cnnjax.analysis.trace import trace_model
from cnnjax.compress import compact, fileformat
from cnnjax.errors import ConfigError
from cnnjax.models.counting import count_params
from experiments.ablation import (
    Arm,
    check_study_fields,
    markdown_table,
    positive_int,
    run_ablation,
    summarize,
    write_results,
)
from experiments.common import file_fields, launch, machine, take
from experiments.plots import pyplot, save_figures

PUBLISHED = (
    "Li et al. 2017 (Table 1, CIFAR-10): VGG-16 pruned of 64% of its parameters and 34% of its "
    "FLOPs, error 6.75% -> 6.60% after retraining; ResNet-56 -27.6% FLOPs at 6.96% -> 6.94%"
)


def parse_arm(name: str, layers, dense_dir: str) -> Arm:
    """ "filters<p>": p percent (0 < p < 100) of the filters of every layer in `layers`."""
    try:
        percent = float(name.removeprefix("filters")) if name.startswith("filters") else None
    except ValueError:
        percent = None
    if percent is None or not 0 < percent < 100:
        raise ConfigError(
            f"unknown arm {name!r} (valid: filters<p> with 0 < p < 100, e.g. filters50)"
        )
    overrides = {
        "init_from.workdir": dense_dir,
        "prune.layer_sparsity": {layer: percent / 100 for layer in layers},
    }
    return Arm(name, overrides, f"{percent:g}% of the filters pruned, retrained")


def _evaluate(run, variables, model=None) -> tuple[np.ndarray, np.ndarray]:
    images, labels = take(run.eval_source, len(run.eval_source))
    return make_predict(model or run.model, variables, run.preprocess)(images), labels


def measure(run, arm, config, seed: int, workdir: str) -> dict:
    """The compact model of a pruned run: its error, size, cost, file and measured speed."""
    variables = {"params": run.state.params, "batch_stats": run.state.batch_stats}
    predicted, labels = _evaluate(run, variables)
    shape = run.eval_source[0]["image"].shape
    record = {
        "parameters": count_params(run.state.params),
        "macs": trace_model(run.model, shape).macs,
        "test_errors": int(np.sum(predicted != labels)),
    }
    if arm.name == "dense":
        return record
    fields, small, widths = compact.make_compact(run.model, variables)
    model = run.model.clone(**fields)
    compact_predicted, _ = _evaluate(run, small, model)
    if not np.array_equal(compact_predicted, predicted):
        raise AssertionError(f"{arm.name} seed {seed}: the compact model predicts otherwise")
    folder = os.path.join(workdir, "files")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{arm.name}_seed{seed}.cnnz")
    all_fields = {**config.pruned.model_kwargs.to_dict(), **fields}
    fileformat.save(path, config.pruned.model, small, **file_fields(run, config.pruned, all_fields))
    speed = bench.run(
        None,
        config.bench_batch,
        compare="parent",
        windows=config.bench_windows,
        steps=config.bench_steps,
        variables_path=path,
    )
    record.update(
        compact_fields=fields,
        widths=widths,
        compact_parameters=count_params(small["params"]),
        compact_macs=trace_model(model, shape).macs,
        file_bytes=os.path.getsize(path),
        train_speedup=speed["parent_train_ratio"],
        eval_speedup=speed["parent_eval_ratio"],
        bench_train_ips=speed["jax_train_ips"],
        bench_eval_ips=speed["jax_eval_ips"],
        bench_parent_train_ips=speed["parent_train_ips"],
        bench_parent_eval_ips=speed["parent_eval_ips"],
    )
    return record


def _check(config) -> None:
    check_study_fields(
        config,
        {
            "bench_batch": (positive_int, "an integer >= 1"),
            "bench_windows": (positive_int, "an integer >= 1"),
            "bench_steps": (positive_int, "an integer >= 1"),
        },
    )


def run(config, workdir: str) -> str:
    _check(config)
    workdir = os.path.abspath(workdir)
    dense_dir = os.path.join(workdir, "dense")
    names = [name.strip() for name in config.arms.split(",") if name.strip()]
    arms = [parse_arm(name, config.layers, "") for name in names]  # refused before any training
    records = []
    for seed in config.seeds:

        def measure_seed(run_, arm, seed=seed):
            return measure(run_, arm, config, seed, workdir)

        records += run_ablation(
            config.dense, [Arm("dense", {}, "dense")], [seed], workdir, measure_seed
        )
        seed_arms = [
            parse_arm(arm.name, config.layers, os.path.join(dense_dir, f"seed{seed}"))
            for arm in arms
        ]
        records += run_ablation(config.pruned, seed_arms, [seed], workdir, measure_seed)
    return report(config, records, workdir)


COLUMNS = {
    "test_error": "test error (%)",
    "parameters_left": "parameters left (%)",
    "macs_left": "MACs left (%)",
    "train_speedup": "train img/s vs dense",
    "eval_speedup": "eval img/s vs dense",
}
PERCENT = ("test_error", "parameters_left", "macs_left")


def add_derived(records: list[dict]) -> None:
    for record in records:
        record["test_error"] = 1.0 - record["test_accuracy"]
        compact_params = record.get("compact_parameters", record["parameters"])
        record["parameters_left"] = compact_params / record["parameters"]
        record["macs_left"] = record.get("compact_macs", record["macs"]) / record["macs"]
        record.setdefault("train_speedup", 1.0)
        record.setdefault("eval_speedup", 1.0)


def speedup_figure(rows, records=None):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8), constrained_layout=True)
    x = np.arange(len(rows))
    for offset, metric, label in ((-0.2, "train_speedup", "train"), (0.2, "eval_speedup", "eval")):
        ax.bar(
            x + offset,
            [row[metric] for row in rows],
            0.4,
            yerr=[np.nan_to_num(row[metric + "_std"]) for row in rows],
            capsize=3,
            label=label,
        )
    ax.axhline(1.0, color="gray", ls=":")
    ax.set_xticks(x, [row["arm"] for row in rows])
    ax.set(ylabel="images/s over the dense parent", title="compact model speed (cnnjax.bench)")
    ax.legend()
    return fig


FIGURES = {"speedup": speedup_figure}


def report(config, records: list[dict], workdir: str) -> str:
    add_derived(records)
    order = ["dense"] + [name.strip() for name in config.arms.split(",") if name.strip()]
    records.sort(key=lambda r: (order.index(r["arm"]), r["seed"]))
    rows = summarize(records, list(COLUMNS))
    minutes = sum(r["wall_seconds"] for r in records) / 60
    d, p = config.dense, config.pruned
    header = (
        f"# Filter pruning made real ({config.size} size)\n\n"
        "Command: `python -m experiments.filter_pruning "
        f"--config=configs/experiments/filter_pruning.py:{config.size} "
        "--workdir=runs/filter_pruning` (records: `filter_pruning_cpu_runs/`; figure: "
        "`filter_pruning_speedup.png`).\n\n"
        f"{d.model} on {d.dataset}: dense {d.num_steps:,} steps of {d.batch_size}, then each "
        f"arm prunes {', '.join(config.layers)} by L1 norm at its first step and retrains "
        f"{p.num_steps:,} steps; the compact model (zero filters taken out by "
        "`cnnjax.compress.compact.make_compact`) predicts exactly what the pruned one does "
        "(checked on every test image). Speed: `cnnjax.bench` on the compact model's file with "
        f"`--compare parent` (batch {config.bench_batch}, median of {config.bench_windows} "
        "windows, the two models alternating), images/s of the compact model over the dense "
        f"model's in the same process. Seeds {list(config.seeds)}; {machine()}; {minutes:.0f} "
        f"min in all (training and benchmarks, run beside other jobs). Published: {PUBLISHED}."
    )
    tables = [markdown_table(rows, COLUMNS, percent=PERCENT)]
    save_figures(FIGURES, rows, records, workdir)
    payload = {"config": config.to_dict(), "summary": rows, "runs": records}
    return write_results(workdir, header, tables, payload)


if __name__ == "__main__":
    launch(run, "configs/experiments/filter_pruning.py[:size]")
