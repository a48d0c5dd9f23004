"""Low rank (truncated SVD) of trained layers: spectra and error / parameters / MACs / time vs rank.

  python -m experiments.low_rank \
      --config=configs/experiments/low_rank.py:cpu --workdir=runs/low_rank \
      [--config.models=lenet300_100] [--config.seeds=0,1]

Per model and seed, one training run (`dense`, resumable, skipped once finished), then per layer
and scheme of `config.layers` and per rank, that layer alone replaced by its best rank-r
factorization (`cnnjax.compress.low_rank.factorize`, no fine-tuning) and measured: test error,
the layer's relative Frobenius error, its parameters, the model's MACs (`count_macs`) and the
median forward time of a `timing_batch` batch against the dense model's, the two timed in turn
in the same process. The spectra of the trained kernels and of the same kernels at
initialization (`init_variables`, the run's seed) are recorded too. Writes results.md,
results.json, spectra.png and error_vs_parameters.png in the workdir.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from cnnjax.analysis.shift_invariance import make_predict
from cnnjax.compress import low_rank
from cnnjax.errors import ConfigError
from cnnjax.models import model_info
from cnnjax.models.counting import count_macs, count_params
from cnnjax.train.state import init_variables
from experiments.ablation import (
    Arm,
    check_study_fields,
    positive_int,
    run_ablation,
    study_models,
    write_results,
)
from experiments.common import launch, machine, take
from experiments.plots import pyplot, save_figures


def _entries(config, model: str) -> list[tuple[str, str, list[int]]]:
    """`(layer, scheme, ranks)` per `<layer>_<scheme>` entry of the model's `layers`."""
    entries = []
    for key, ranks in config.layers[model].items():
        layer, _, scheme = key.rpartition("_")
        if scheme not in low_rank.SCHEMES or not layer:
            raise ConfigError(
                f"layers.{model}.{key}: a key is <layer>_<scheme> with scheme one of "
                f"{', '.join(low_rank.SCHEMES)}"
            )
        if not ranks or not all(positive_int(r) for r in ranks):
            raise ConfigError(f"layers.{model}.{key} must be positive integer ranks, got {ranks!r}")
        entries.append((layer, scheme, list(ranks)))
    return entries


def _seconds(forward, x) -> float:
    start = time.perf_counter()
    jax.block_until_ready(forward(x))
    return time.perf_counter() - start


def paired_times(dense, factored, x, repeats: int) -> tuple[float, float]:
    """Median seconds of `dense(x)` and `factored(x)`, timed in turn after one warm-up each (a
    slow stretch of the machine then slows both alike)."""
    _seconds(dense, x), _seconds(factored, x)
    pairs = [(_seconds(dense, x), _seconds(factored, x)) for _ in range(repeats)]
    a, b = np.median(np.array(pairs), axis=0)
    return float(a), float(b)


def _rounded(values, digits: int = 6) -> list[float]:
    return [float(f"{v:.{digits}g}") for v in np.asarray(values, np.float64)]


def measure(run, config, model: str, seed: int) -> dict:
    """The spectra of the run's layers and one row per (layer, scheme, rank)."""
    info = model_info(model)
    train_config = config.stages[f"{model}_dense"]
    input_shape = tuple(train_config.input_shape) or info.input_shape
    variables = {"params": run.state.params, "batch_stats": run.state.batch_stats}
    initial = init_variables(run.model, input_shape, seed)["params"]
    images, labels = take(run.eval_source, len(run.eval_source))
    x = run.preprocess(images[: config.timing_batch])

    def forward_of(tree):
        return jax.jit(lambda x: run.model.apply(tree, x, train=False)[0])

    def macs_of(tree):
        return count_macs(lambda x: run.model.apply(tree, x, train=False)[0], x[:1])

    dense_forward = forward_of(variables)
    predict = make_predict(run.model, variables, run.preprocess)
    dense = {
        "params": count_params(variables["params"]),
        "macs": macs_of(variables),
        "test_error": 1.0 - float(np.mean(predict(images) == labels)),
    }
    spectra, rows = {}, []
    for layer, scheme, ranks in _entries(config, model):
        kernel = np.asarray(variables["params"][layer]["kernel"])
        trained = low_rank.singular_values(kernel, scheme)
        spectra[f"{layer}_{scheme}"] = {
            "trained": _rounded(trained),
            "init": _rounded(low_rank.singular_values(initial[layer]["kernel"], scheme)),
        }
        energy = np.cumsum(trained**2) / np.sum(trained**2)
        for rank in ranks:
            params = low_rank.factorize(variables["params"], {layer: rank}, scheme)
            tree = {**variables, "params": params}
            with low_rank.factorized():  # traced (and compiled) inside: the factors run
                predict = make_predict(run.model, tree, run.preprocess)
                error = 1.0 - float(np.mean(predict(images) == labels))
                macs = macs_of(tree)
                dense_s, factored_s = paired_times(
                    dense_forward, forward_of(tree), x, config.timing_repeats
                )
            factors = params[layer]
            rows.append(
                {
                    "layer": layer,
                    "scheme": scheme,
                    "rank": rank,
                    "max_rank": low_rank.max_rank(kernel.shape, scheme),
                    "test_error": error,
                    "weight_error": float(np.sqrt(max(0.0, 1.0 - energy[rank - 1]))),
                    "layer_params": int(np.size(factors[low_rank.FIRST]))
                    + int(np.size(factors[low_rank.SECOND])),
                    "dense_layer_params": int(kernel.size),
                    "model_params": count_params(params),
                    "model_macs": macs,
                    "time_ratio": factored_s / dense_s,
                    "dense_seconds": dense_s,
                }
            )
    return {"model": model, "dense": dense, "spectra": spectra, "ranks": rows}


def run_model(config, model: str, workdir: str) -> list[dict]:
    """The model's dense run per seed, trained (or found finished) and measured."""
    records = []
    for seed in config.seeds:
        records += run_ablation(
            config.stages[f"{model}_dense"],
            [Arm(f"{model}/dense", {}, "dense")],
            [seed],
            workdir,
            lambda run, arm, seed=seed: measure(run, config, model, seed),
            remeasure=config.remeasure,
        )
    return records


def summarize_ranks(records: list[dict]) -> list[dict]:
    """Per (model, layer, scheme, rank), in first-seen order: n, the constant counts, and mean
    and sample std over seeds of the test error, the weight error and the time ratio."""
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        for row in record["ranks"]:
            key = (record["model"], row["layer"], row["scheme"], row["rank"])
            groups.setdefault(key, []).append({**row, "dense_error": record["dense"]["test_error"]})
    summary = []
    for (model, layer, scheme, rank), rows in groups.items():
        out = {"model": model, "layer": layer, "scheme": scheme, "rank": rank, "n": len(rows)}
        for key in ("max_rank", "layer_params", "dense_layer_params", "model_params", "model_macs"):
            out[key] = rows[0][key]
        for key in ("test_error", "weight_error", "time_ratio", "dense_error"):
            values = [row[key] for row in rows]
            out[key] = float(np.mean(values))
            out[key + "_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
        summary.append(out)
    return summary


def _mean_std(row: dict, key: str, scale: float = 1.0, digits: int = 2) -> str:
    mean, std = scale * row[key], scale * row[key + "_std"]
    return f"{mean:.{digits}f}" + ("" if np.isnan(std) else f" ± {std:.{digits}f}")


def rank_table(model: str, summary: list[dict], records: list[dict]) -> str:
    """One model's rows: the dense model, then each layer x scheme x rank."""
    runs = [r for r in records if r["model"] == model]
    dense = runs[0]["dense"]
    errors = [100 * r["dense"]["test_error"] for r in runs]
    spread = f" ± {np.std(errors, ddof=1):.2f}" if len(errors) > 1 else ""
    lines = [
        "| layer (scheme) | rank | layer parameters (% of dense) | model parameters | "
        "model MACs (% of dense) | weight error (%) | test error (%) | forward time (x dense) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        f"| dense model | full | 100.0 | {dense['params']:,} | 100.0 | 0.0 | "
        f"{np.mean(errors):.2f}{spread} | 1.00 |",
    ]
    for row in (r for r in summary if r["model"] == model):
        lines.append(
            f"| {row['layer']} ({row['scheme']}) | {row['rank']} of {row['max_rank']} | "
            f"{100 * row['layer_params'] / row['dense_layer_params']:.1f} | "
            f"{row['model_params']:,} | {100 * row['model_macs'] / dense['macs']:.1f} | "
            f"{100 * row['weight_error']:.1f} | {_mean_std(row, 'test_error', 100)} | "
            f"{_mean_std(row, 'time_ratio')} |"
        )
    return "\n".join(lines)


def energy_rank(spectrum, fraction: float) -> int:
    """The smallest rank whose singular values hold `fraction` of the squared Frobenius norm."""
    energy = np.cumsum(np.square(spectrum)) / np.sum(np.square(spectrum))
    return int(np.searchsorted(energy, fraction - 1e-12) + 1)


def spectra_table(records: list[dict]) -> str:
    """Per layer: how fast the trained spectrum decays against the spectrum at initialization."""
    lines = [
        "| model | layer (scheme) | full rank | sigma_1, trained / init | "
        "rank for 90% of the energy, trained / init | rank for 99%, trained / init |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    keys = dict.fromkeys((r["model"], key) for r in records for key in r["spectra"])
    for model, key in keys:
        spectra = [r["spectra"][key] for r in records if r["model"] == model]

        def both(fn, spectra=spectra):
            return tuple(
                float(np.mean([fn(s[kind]) for s in spectra])) for kind in ("trained", "init")
            )

        layer, _, scheme = key.rpartition("_")
        sigma, r90, r99 = (
            both(lambda s: s[0]),
            both(lambda s: energy_rank(s, 0.9)),
            both(lambda s: energy_rank(s, 0.99)),
        )
        lines.append(
            f"| {model} | {layer} ({scheme}) | {len(spectra[0]['trained'])} | "
            f"{sigma[0]:.2f} / {sigma[1]:.2f} | {r90[0]:.1f} / {r90[1]:.1f} | "
            f"{r99[0]:.1f} / {r99[1]:.1f} |"
        )
    return "\n".join(lines)


def spectra_figure(summary, records):
    """sigma_i / sigma_1 of each studied layer, trained (mean over seeds) against at init."""
    del summary
    plt = pyplot()
    keys = list(dict.fromkeys((r["model"], key) for r in records for key in r["spectra"]))
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.2), constrained_layout=True)
    for ax, (model, key) in zip(np.atleast_1d(axes), keys):
        for kind, style in (("trained", "-"), ("init", "--")):
            curves = [np.asarray(r["spectra"][key][kind]) for r in records if r["model"] == model]
            curve = np.mean([c / c[0] for c in curves], axis=0)
            ax.plot(np.arange(1, len(curve) + 1), curve, style, label=kind)
        ax.set(yscale="log", title=f"{model}\n{key}", xlabel="i")
    np.atleast_1d(axes)[0].set_ylabel("sigma_i / sigma_1")
    np.atleast_1d(axes)[0].legend()
    return fig


def error_figure(summary, records):
    """Test error against the factored layer's parameters, per model, one line per layer."""
    plt = pyplot()
    models = list(dict.fromkeys(r["model"] for r in records))
    fig, axes = plt.subplots(
        1, len(models), figsize=(5 * len(models), 3.8), constrained_layout=True
    )
    for ax, model in zip(np.atleast_1d(axes), models):
        rows = [r for r in summary if r["model"] == model]
        for key in dict.fromkeys((r["layer"], r["scheme"]) for r in rows):
            line = [r for r in rows if (r["layer"], r["scheme"]) == key]
            ax.errorbar(
                [100 * r["layer_params"] / r["dense_layer_params"] for r in line],
                [100 * r["test_error"] for r in line],
                yerr=[100 * np.nan_to_num(r["test_error_std"]) for r in line],
                marker="o",
                capsize=2,
                label=f"{key[0]} ({key[1]})",
            )
        dense = np.mean([100 * r["dense"]["test_error"] for r in records if r["model"] == model])
        ax.axhline(dense, color="gray", ls=":", label="dense model")
        ax.set(
            xscale="log",
            yscale="log",
            title=f"{model}: one layer factored, no fine-tuning",
            xlabel="factored layer's parameters (% of the dense layer)",
            ylabel="MNIST test error (%)",
        )
        ax.legend(fontsize=8)
    return fig


FIGURES = {"spectra": spectra_figure, "error_vs_parameters": error_figure}


def report(config, records: list[dict], workdir: str) -> str:
    summary = summarize_ranks(records)
    minutes = sum(r["wall_seconds"] for r in records) / 60
    dataset = config.stages[next(iter(config.stages))].dataset
    header = (
        f"# Low rank by truncated SVD ({config.size} size)\n\n"
        "Command: `python -m experiments.low_rank "
        f"--config=configs/experiments/low_rank.py:{config.size} --workdir=runs/low_rank` "
        "(records: `low_rank_cpu_runs/`; figures: `low_rank_spectra.png`, "
        "`low_rank_error_vs_parameters.png`).\n\n"
        f"On {dataset}: seeds {list(config.seeds)}; {machine()}; {minutes:.0f} min of training "
        "and measuring. One layer at a time is replaced by its best rank-r factorization "
        "(Eckart-Young), with no fine-tuning. Weight error = ||W - W_r||_F / ||W||_F of the "
        "layer's matrix. MACs are counted from the traced program; forward time is the median of "
        f"{config.timing_repeats} forward passes of {config.timing_batch} images, each timed in "
        "turn with the dense model's in the same process (a ratio, not seconds)."
    )
    tables = [
        "Spectra of the trained kernels against the same kernels at initialization:\n\n"
        + spectra_table(records)
    ]
    for model in dict.fromkeys(r["model"] for r in records):
        tables.append(
            f"{model}, one layer factored at a time:\n\n" + rank_table(model, summary, records)
        )
    save_figures(FIGURES, summary, records, workdir)
    payload = {"config": config.to_dict(), "summary": summary, "runs": records}
    return write_results(workdir, header, tables, payload)


def run(config, workdir: str) -> str:
    check_study_fields(
        config,
        {
            "timing_batch": (positive_int, "an integer >= 1"),
            "timing_repeats": (positive_int, "an integer >= 1"),
            "remeasure": (lambda v: isinstance(v, bool), "True or False"),
        },
    )
    models = study_models(config)
    for model in models:
        _entries(config, model)
    records = []
    for model in models:
        records += run_model(config, model, workdir)
    return report(config, records, workdir)


if __name__ == "__main__":
    launch(run, "configs/experiments/low_rank.py[:size]")
