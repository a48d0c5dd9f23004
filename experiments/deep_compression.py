"""Deep Compression (Han et al. 2016): prune -> retrain -> share -> fine-tune -> Huffman, measured.

  python -m experiments.deep_compression \
      --config=configs/experiments/deep_compression.py:cpu --workdir=runs/deep_compression \
      [--config.models=lenet300_100] [--config.seeds=0,1]

Per model and seed, the `dense`, `pruned` and `shared` training runs of the config (each one
`init_from` the previous one, resumable, finished runs skipped), then measurements of each
stage's model written as a compressed file (`cnnjax.compress.save`): the file's size, its
compression rate with every byte counted (header, biases, codebooks, Huffman tables) and the
weights-only rate Han et al. report (kernels' values, indices and codebooks against 32-bit
kernels), with and without Huffman coding, and the test error of the model read back from the
file. Writes results.md, results.json, rate_vs_error.png and the compressed files
(`files/<model>_seed<k>.cnnz`) in the workdir.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from cnnjax.analysis.shift_invariance import make_predict
from cnnjax.compress import fileformat, prune, quantize
from experiments.ablation import (
    Arm,
    check_study_fields,
    markdown_table,
    positive_int,
    run_ablation,
    study_models,
    summarize,
    write_results,
)
from experiments.common import file_fields, launch, machine, take
from experiments.plots import pyplot, save_figures

STAGES = ("dense", "pruned", "shared")

# Han et al. 2016, Table 1 (top-1 test error before and after, and the rate) and Tables 2 and 3
# (per layer: weights, % kept, weight bits P+Q and P+Q+H, index bits P+Q and P+Q+H, rate P+Q
# and P+Q+H), as published.
PUBLISHED = {
    "lenet300_100": dict(
        reference_error=1.64,
        compressed_error=1.58,
        rate=40,
        layers=[
            ("ip1", "235K", 8, 6, 4.4, 5, 3.7, "3.1%", "2.32%"),
            ("ip2", "30K", 9, 6, 4.4, 5, 4.3, "3.8%", "3.04%"),
            ("ip3", "1K", 26, 6, 4.3, 5, 3.2, "15.7%", "12.70%"),
            ("total", "266K", 8, 6, 5.1, 5, 3.7, "3.1% (32x)", "2.49% (40x)"),
        ],
    ),
    "lenet5_caffe": dict(
        reference_error=0.80,
        compressed_error=0.74,
        rate=39,
        layers=[
            ("conv1", "0.5K", 66, 8, 7.2, 5, 1.5, "78.5%", "67.45%"),
            ("conv2", "25K", 12, 8, 7.2, 5, 3.9, "6.0%", "5.28%"),
            ("ip1", "400K", 8, 5, 4.5, 5, 4.5, "2.7%", "2.45%"),
            ("ip2", "5K", 19, 5, 5.2, 5, 3.7, "6.9%", "6.13%"),
            ("total", "431K", 8, 5.3, 4.1, 5, 4.4, "3.05% (33x)", "2.55% (39x)"),
        ],
    ),
}


def _stage_overrides(workdir: str, model: str, stage: str, seed: int) -> dict:
    if stage == "dense":
        return {}
    previous = STAGES[STAGES.index(stage) - 1]
    return {"init_from.workdir": os.path.join(workdir, model, previous, f"seed{seed}")}


def file_measurements(path: str, run, train_config, variables, bits, index_bits) -> dict:
    """Writes `variables` to `path` (and a fixed-width copy to measure and delete), reads the file
    back and measures: sizes, rates and the test accuracy of the model from the file."""
    fields = file_fields(run, train_config)
    report = fileformat.save(
        path, train_config.model, variables, bits=bits, index_bits=index_bits, **fields
    )
    fixed_path = path + ".fixed"
    fixed = fileformat.save(
        fixed_path,
        train_config.model,
        variables,
        bits=bits,
        index_bits=index_bits,
        huffman=False,
        **fields,
    )
    fixed_bytes = os.path.getsize(fixed_path)
    os.remove(fixed_path)
    name, loaded = fileformat.load(path)
    assert name == train_config.model
    for a, b in zip(_leaves(variables), _leaves(loaded)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # the file is lossless
    images, labels = take(run.eval_source, len(run.eval_source))
    accuracy = float(np.mean(make_predict(run.model, loaded, run.preprocess)(images) == labels))
    parameters = sum(int(np.size(leaf)) for leaf in _leaves(variables["params"]))
    file_bytes = os.path.getsize(path)
    return {
        "file_accuracy": accuracy,
        "file_bytes": file_bytes,
        "fixed_width_bytes": fixed_bytes,
        "rate": 4 * parameters / file_bytes,
        "fixed_width_rate": 4 * parameters / fixed_bytes,
        "layers": _layer_rows(report, fixed),
    }


def _leaves(tree):
    return jax.tree.leaves(tree)


def _layer_rows(report: list[dict], fixed: list[dict]) -> list[dict]:
    """Per kernel: weights, kept, bits per kept weight of values and of indices (with and
    without Huffman coding) and the bytes of everything stored for it."""
    rows = []
    for entry, flat in zip(report, fixed):
        if len(entry["shape"]) < 2 or not entry["name"].startswith("params/"):
            continue
        parts, flat_parts = entry["bytes"], flat["bytes"]
        kept = max(entry["nonzero"], 1)
        rows.append(
            {
                "layer": entry["name"].removeprefix("params/").removesuffix("/kernel"),
                "encoding": entry["encoding"],
                "index_width": entry["index_bits"],
                "weights": entry["weights"],
                "kept": entry["nonzero"],
                "value_bits": 8 * _value_bytes(parts) / kept,
                "value_bits_fixed": 8 * _value_bytes(flat_parts) / kept,
                "index_bits": 8 * parts.get("gap_stream", 0) / kept,
                "index_bits_fixed": 8 * flat_parts.get("gap_stream", 0) / kept,
                "bytes": sum(parts.values()),
                "bytes_fixed": sum(flat_parts.values()),
            }
        )
    return rows


def _value_bytes(parts: dict) -> int:
    return parts.get("weight_stream", parts.get("values", 0))


def measure(run, config, model: str, stage: str, seed: int, workdir: str) -> dict:
    """The stage's model as a file: dense and pruned ones with float values, the shared one with
    its codebooks (cluster values snapped exactly, `quantize.cluster_means`)."""
    train_config = config.stages[f"{model}_{stage}"]
    params = run.state.params
    bits = None
    if stage == "shared":
        params = quantize.cluster_means(params, quantize.assignments_of(run.state.opt_state))
        bits = train_config.share.layer_bits.to_dict()
    variables = {"params": params, "batch_stats": run.state.batch_stats}
    os.makedirs(os.path.join(workdir, "files"), exist_ok=True)
    path = os.path.join(workdir, "files", f"{model}_{stage}_seed{seed}.cnnz")
    record = file_measurements(path, run, train_config, variables, bits, config.index_bits or None)
    if stage != "shared":  # only the final file is kept
        os.remove(path)
    record["kept_fraction"] = _kept(params)
    return record


def _kept(params) -> float:
    report = prune.sparsity_report(params)
    return sum(r["kept"] for r in report.values()) / sum(r["weights"] for r in report.values())


def run_model(config, model: str, workdir: str) -> list[dict]:
    """Every stage x seed of one model, in order (a stage needs its seed's previous stage)."""
    records = []
    for seed in config.seeds:
        for stage in STAGES:
            arm = Arm(f"{model}/{stage}", _stage_overrides(workdir, model, stage, seed), stage)
            base = config.stages[f"{model}_{stage}"]
            records += run_ablation(
                base,
                [arm],
                [seed],
                workdir,
                lambda run, arm, stage=stage, seed=seed: measure(
                    run, config, model, stage, seed, workdir
                ),
                remeasure=config.remeasure,
            )
    for record in records:
        record["model"], record["stage"] = record["arm"].split("/")
        record["test_error"] = 1.0 - record["file_accuracy"]
    return records


def layer_table(model: str, records: list[dict]) -> str:
    """Han et al.'s Table 2/3 layout, ours (mean over seeds of the shared stage) beside theirs."""
    runs = [r for r in records if r["model"] == model and r["stage"] == "shared"]
    names = [row["layer"] for row in runs[0]["layers"]]
    lines = [
        "| layer | weights | kept (%) | value bits P+Q | value bits P+Q+H | index width | "
        "index bits P+Q | index bits P+Q+H | size P+Q (% of 32-bit) | size P+Q+H (% of 32-bit) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for i, name in enumerate([*names, "total"]):
        if name == "total":
            rows = [_total(r["layers"]) for r in runs]
        else:
            rows = [r["layers"][i] for r in runs]

        def mean(key, rows=rows):
            return float(np.mean([row[key] for row in rows]))

        weights = rows[0]["weights"]
        widths = sorted({row.get("index_width") for row in rows} - {None})
        width = "-".join(map(str, dict.fromkeys([widths[0], widths[-1]]))) if widths else "-"
        lines.append(
            f"| {name} | {weights:,} | {100 * mean('kept') / weights:.1f} | "
            f"{mean('value_bits_fixed'):.1f} | {mean('value_bits'):.1f} | {width} | "
            f"{mean('index_bits_fixed'):.1f} | {mean('index_bits'):.1f} | "
            f"{100 * mean('bytes_fixed') / (4 * weights):.2f}% "
            f"({4 * weights / mean('bytes_fixed'):.0f}x) | "
            f"{100 * mean('bytes') / (4 * weights):.2f}% ({4 * weights / mean('bytes'):.0f}x) |"
        )
    published = [
        f"| {p[0]} (Han et al.) | {p[1]} | {p[2]} | {p[3]} | {p[4]} | {p[5]} | {p[5]} | {p[6]} | "
        f"{p[7]} | {p[8]} |"
        for p in PUBLISHED[model]["layers"]
    ]
    return "\n".join(lines + published)


def _total(layers: list[dict]) -> dict:
    total = {key: sum(layer[key] for layer in layers) for key in ("weights", "kept")}
    kept = max(total["kept"], 1)
    for key in ("value_bits", "value_bits_fixed", "index_bits", "index_bits_fixed"):
        total[key] = sum(layer[key] * layer["kept"] for layer in layers) / kept
    for key in ("bytes", "bytes_fixed"):
        total[key] = sum(layer[key] for layer in layers)
    return total


def add_weight_rates(records: list[dict]) -> None:
    """Han et al.'s rate: 32-bit kernels against everything stored for the kernels."""
    for record in records:
        total = _total(record["layers"])
        record["weight_rate"] = 4 * total["weights"] / total["bytes"]
        record["weight_rate_fixed"] = 4 * total["weights"] / total["bytes_fixed"]


COLUMNS = {
    "test_error": "test error (%), from the file",
    "kept_fraction": "kernel weights kept (%)",
    "file_bytes": "file bytes",
    "rate": "rate, whole file",
    "weight_rate_fixed": "rate, kernels, fixed width (P+Q)",
    "weight_rate": "rate, kernels, Huffman (P+Q+H)",
}
PERCENT = ("test_error", "kept_fraction")


def rate_figure(rows, records=None):
    """Compression rate (whole file) against test error per stage, ours and Han et al.'s."""
    del records
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    for model in dict.fromkeys(row["arm"].split("/")[0] for row in rows):
        ours = [row for row in rows if row["arm"].startswith(model + "/")]
        line = ax.errorbar(
            [row["rate"] for row in ours],
            [100 * row["test_error"] for row in ours],
            yerr=[100 * np.nan_to_num(row["test_error_std"]) for row in ours],
            marker="o",
            capsize=3,
            label=f"{model} (ours: dense, pruned, shared + Huffman)",
        )
        paper = PUBLISHED[model]
        ax.plot(
            [1, paper["rate"]],
            [paper["reference_error"], paper["compressed_error"]],
            ls="--",
            marker="s",
            color=line[0].get_color(),
            label=f"{model}, Han et al. 2016",
        )
    ax.set(xscale="log", xlabel="compression rate (x, log scale)", ylabel="MNIST test error (%)")
    ax.legend(fontsize=8)
    return fig


FIGURES = {"rate_vs_error": rate_figure}


def report(config, records: list[dict], workdir: str) -> str:
    add_weight_rates(records)
    rows = summarize(records, list(COLUMNS))
    minutes = sum(r["wall_seconds"] for r in records) / 60
    header = (
        f"# Deep Compression ({config.size} size)\n\n"
        f"Han et al. 2016's pipeline on {config.stages[next(iter(config.stages))].dataset}: "
        f"seeds {list(config.seeds)}; {machine()}; {minutes:.0f} min of training and measuring. "
        "Every stage's model is written with `cnnjax.compress.save` and read back; the error is "
        "that of the model from the file. Rate, whole file = 4 bytes x every parameter / the "
        "file's size (header, biases, codebooks, Huffman tables counted); rate, kernels = what "
        "Han et al. report: 32-bit kernel weights against the bytes stored for the kernels "
        f"(values, {_index_words(config.index_bits)}, codebooks and tables). Published: "
        + "; ".join(
            f"{m}: {p['reference_error']}% -> {p['compressed_error']}% error at {p['rate']}x"
            for m, p in PUBLISHED.items()
        )
        + " (Han et al. 2016, Table 1)."
    )
    tables = [markdown_table(rows, COLUMNS, percent=PERCENT)]
    for model in dict.fromkeys(r["model"] for r in records):
        title = f"Per layer, {model} (shared stage, mean over seeds; Han et al.'s rows below):"
        tables.append(title + "\n\n" + layer_table(model, records))
    save_figures(FIGURES, rows, records, workdir)
    payload = {"config": config.to_dict(), "summary": rows, "runs": records}
    return write_results(workdir, header, tables, payload)


def _index_words(index_bits: int) -> str:
    if index_bits:
        return f"{index_bits}-bit relative indices"
    widths = fileformat.INDEX_WIDTHS
    return (
        f"relative indices of the width ({widths[0]}-{widths[-1]} bits) that is smallest per layer"
    )


def run(config, workdir: str) -> str:
    check_study_fields(
        config,
        {
            "index_bits": (lambda v: v == 0 or positive_int(v), "0 (each layer's best) or >= 1"),
            "remeasure": (lambda v: isinstance(v, bool), "True or False"),
        },
    )
    records = []
    for model in study_models(config):
        records += run_model(config, model, workdir)
    return report(config, records, workdir)


if __name__ == "__main__":
    launch(run, "configs/experiments/deep_compression.py[:size]")
