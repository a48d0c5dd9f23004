"""BN versus dropout ordering (Li et al. 2019): accuracy and the measured variance shift.

  python -m experiments.bn_dropout --config=configs/experiments/bn_dropout.py:cpu \
      --workdir=runs/bn_dropout [--config.arms=none,before_bn_0.5] [--config.seeds=0,1]

Every arm x seed trains ResNet-20 (resumable; finished runs are skipped), then measures on the
test set, per BN layer, the running variance over the test-time variance of the layer's input
(`cnnjax.analysis.variance_shift`), re-estimates the BN statistics with dropout off and measures
accuracy and shift again. A toy (dropout -> BN on Gaussian inputs, and dropout -> 64-wide linear
unit -> BN) compares the measured shift with the analytic prediction. Writes results.md,
results.json, variance_shift.png and accuracy.png in the workdir.
"""

from __future__ import annotations

import re

import jax
import numpy as np

from cnnjax.analysis import variance_shift as vs
from cnnjax.analysis.shift_invariance import make_predict
from cnnjax.errors import ConfigError
from cnnjax.layers.dropout import DROPOUT_KINDS
from experiments.ablation import (
    Arm,
    check_study_fields,
    markdown_table,
    positive_int,
    run_study,
    summarize,
    write_results,
)
from experiments.common import batched, launch, machine, take
from experiments.plots import pyplot, runs_of, save_figures

POSITIONS = ("after_bn", "before_bn", "head")
_ARM = re.compile(rf"^({'|'.join(POSITIONS)})(?:_({'|'.join(DROPOUT_KINDS)}))?_([0-9.]+)$")


def parse_arm(name: str) -> Arm:
    """ "none", or "<position>[_<kind>]_<rate>" (see the config's docstring) as an `Arm`."""
    if name == "none":
        return Arm("none", {"model_kwargs.dropout_rate": 0.0}, "no dropout")
    match = _ARM.match(name)
    if not match:
        raise ConfigError(
            f"unknown arm {name!r}: use 'none' or '<position>[_<kind>]_<rate>' with position in "
            f"{POSITIONS} and kind in {DROPOUT_KINDS}, e.g. 'before_bn_0.5'"
        )
    position, kind, rate = match.group(1), match.group(2) or "bernoulli", float(match.group(3))
    overrides = {
        "model_kwargs.dropout_rate": rate,
        "model_kwargs.dropout_position": position,
        "model_kwargs.dropout_kind": kind,
    }
    what = {
        "after_bn": "conv-bn-relu-drop",
        "before_bn": "conv-drop-bn-relu",
        "head": "before the classifier",
    }[position]
    return Arm(name, overrides, f"{kind} {rate:g}, {what}")


def measure(run, arm, config) -> dict:
    """Variance shift and accuracy before and after re-estimating BN with dropout off."""
    test_images, test_labels = take(run.eval_source, config.measure_images)
    train_images, _ = take(run.train_source, config.reestimate_images)
    prep = run.preprocess
    test_batches = [prep(b) for b in batched(test_images, 500)]
    # BN re-estimated as it was trained (training batch size, the training augmentation) but
    # with dropout off, so that the fix isolates dropout's share of the shift: the augmentation's
    # own share (black crop borders, train vs test inputs) is also in the "none" arm.
    key = jax.random.PRNGKey(config.reestimate_seed)
    train_batches = [
        prep(b, jax.random.fold_in(key, i))
        for i, b in enumerate(batched(train_images, int(config.train.batch_size)))
    ]
    variables = {"params": run.state.params, "batch_stats": run.state.batch_stats}
    before = vs.variance_shift(run.model, variables, test_batches)
    fixed = vs.reestimate_batch_stats(run.model, variables, train_batches)
    after = vs.variance_shift(run.model, fixed, test_batches)
    predict = make_predict(run.model, fixed, prep)
    layers = list(before)
    return {
        "reestimated_accuracy": float(np.mean(predict(test_images) == test_labels)),
        "shift_mean": float(np.mean([before[k]["mean_ratio"] for k in layers])),
        "shift_max": float(np.max([before[k]["mean_ratio"] for k in layers])),
        "shift_after_mean": float(np.mean([after[k]["mean_ratio"] for k in layers])),
        "shift_median": float(np.mean([before[k]["median_ratio"] for k in layers])),
        "shift_pooled": float(np.mean([before[k]["pooled_ratio"] for k in layers])),
        "shift_after_pooled": float(np.mean([after[k]["pooled_ratio"] for k in layers])),
        "layers": layers,
        "shift_per_layer": [before[k]["mean_ratio"] for k in layers],
        "shift_after_per_layer": [after[k]["mean_ratio"] for k in layers],
        "shift_median_per_layer": [before[k]["median_ratio"] for k in layers],
        "shift_pooled_per_layer": [before[k]["pooled_ratio"] for k in layers],
    }


def toy_rows(config) -> list[dict]:
    """Predicted versus simulated shift for each dropout kind and rate."""
    rows = []
    weights = np.random.default_rng(0).normal(size=64)
    cases = [
        ("direct, mean 0", 1, 0.0, 0.0),
        ("direct, mean 1", 1, 1.0, 0.0),
        ("64-wide linear, corr 0", 64, 0.0, 0.0),
        ("64-wide linear, corr 0.5", 64, 0.0, 0.5),
    ]
    for kind in ("bernoulli", "uniform"):
        for rate in config.toy_rates:
            for case, width, mean, corr in cases:
                if width == 1:
                    predicted = vs.predicted_shift(kind, rate, mean)
                else:
                    predicted = vs.predicted_linear_shift(kind, rate, weights, mean, 1.0, corr)
                measured = vs.simulate_toy_shift(
                    kind, rate, mean, 1.0, width, corr, steps=config.toy_steps
                )
                rows.append(
                    dict(kind=kind, rate=rate, case=case, predicted=predicted, measured=measured)
                )
    return rows


# Summary columns of the results table: metric -> header.
COLUMNS = {
    "test_accuracy": "test acc. (%)",
    "reestimated_accuracy": "acc. after BN re-est. (%)",
    "shift_pooled": "shift, pooled",
    "shift_median": "shift, median channel",
    "shift_mean": "shift, mean channel",
    "shift_max": "worst layer (mean channel)",
    "shift_after_pooled": "pooled shift after re-est.",
}
PERCENT = ("test_accuracy", "reestimated_accuracy")


def variance_shift_figure(rows, records, key: str = "shift_pooled_per_layer"):
    """Running / test-time variance per BN layer, mean over seeds, one line per arm.

    `key`: "shift_pooled_per_layer" (summed over channels, then divided) or the per-channel
    ratio's "shift_median_per_layer" / "shift_per_layer" (mean).
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), constrained_layout=True)
    for row in rows:
        runs = runs_of(records, row["arm"])
        if key not in runs[0]:  # records written before the pooled ratio existed
            key = "shift_per_layer"
        curve = np.mean([r[key] for r in runs], axis=0)
        ax.plot(range(1, len(curve) + 1), curve, marker="o", ms=3, label=row["arm"])
    ax.axhline(1.0, color="k", lw=0.8)
    what = {
        "shift_pooled_per_layer": "pooled over channels",
        "shift_median_per_layer": "median channel",
    }.get(key, "mean channel")
    ax.set(
        xlabel="BN layer (input to output)",
        ylabel="running var / test-time var",
        title=f"Variance shift per BN layer ({what}, mean over seeds)",
    )
    ax.legend(fontsize=8)
    return fig


def reestimation_figure(rows, records=None):
    """Test accuracy per arm as trained and after re-estimating BN with dropout off."""
    del records
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4), constrained_layout=True)
    x = np.arange(len(rows))
    bars = [
        (-0.2, "test_accuracy", "as trained"),
        (0.2, "reestimated_accuracy", "BN re-estimated, dropout off"),
    ]
    for offset, key, label in bars:
        means = [100 * r[key] for r in rows]
        stds = [100 * np.nan_to_num(r[key + "_std"]) for r in rows]
        ax.bar(x + offset, means, 0.4, yerr=stds, capsize=3, label=label)
    ax.set_xticks(x, [r["arm"] for r in rows], rotation=30, ha="right", fontsize=8)
    low = min(100 * min(r["test_accuracy"], r["reestimated_accuracy"]) for r in rows)
    ax.set(ylabel="test accuracy (%)", ylim=(max(0.0, low - 10), None))
    ax.legend(fontsize=8)
    return fig


# The figures `report` writes into the workdir: file name (without .png) -> figure function.
FIGURES = {"variance_shift": variance_shift_figure, "accuracy": reestimation_figure}


def report(config, records, toy, workdir: str) -> str:
    rows = summarize(records, list(COLUMNS))
    table = markdown_table(rows, COLUMNS, percent=PERCENT)
    toy_lines = [
        "| noise | rate | case | predicted | measured |",
        "| --- | ---: | --- | ---: | ---: |",
    ]
    toy_lines += [
        f"| {t['kind']} | {t['rate']:g} | {t['case']} | {t['predicted']:.4f} | "
        f"{t['measured']:.4f} |"
        for t in toy
    ]
    minutes = sum(r["wall_seconds"] for r in records) / 60
    header = (
        f"# BN vs dropout ({config.size} size)\n\n"
        f"Model {config.train.model} (width {config.train.model_kwargs.width}) on "
        f"{config.train.dataset}, {config.train.num_steps} steps of {config.train.batch_size}, "
        f"seeds {list(config.seeds)}; {machine()}; {minutes:.0f} min of training and measuring. "
        "Shift = running variance / test-time variance of each BN layer's input (1 = none), "
        "averaged over the 19 BN layers: pooled = summed over channels before dividing; median "
        "and mean = of the per-channel ratios."
    )
    toy_note = "Toy: dropout -> (linear unit ->) BN, analytic prediction vs the trained BN layer."
    save_figures(FIGURES, rows, records, workdir)
    payload = {"config": config.to_dict(), "summary": rows, "runs": records, "toy": toy}
    return write_results(
        workdir, header, [table, toy_note + "\n\n" + "\n".join(toy_lines)], payload
    )


STUDY_FIELDS = {
    "measure_images": (positive_int, "an integer >= 1"),
    "reestimate_images": (positive_int, "an integer >= 1"),
    "reestimate_seed": (lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
    "toy_steps": (positive_int, "an integer >= 1"),
    "toy_rates": (lambda v: len(v) > 0 and all(0 < r < 1 for r in v), "rates in (0, 1)"),
}


def run(config, workdir: str) -> str:
    check_study_fields(config, STUDY_FIELDS)
    records = run_study(config, parse_arm, workdir, measure)
    return report(config, records, toy_rows(config), workdir)


if __name__ == "__main__":
    launch(run, "configs/experiments/bn_dropout.py[:size]")
