"""Figures of the ablation experiments, from their `results.json` (the drivers and notebooks).

Each function takes the `summary` rows and `runs` records of a results file (see
`cnnjax.train.ablation`) and returns a matplotlib figure; `save_figures` writes them as PNGs.

    import json
    from cnnjax.analysis import ablation_plots
    results = json.load(open("experiments/results/bn_dropout.json"))
    ablation_plots.variance_shift_figure(results["summary"], results["runs"])
"""

from __future__ import annotations

import os

import numpy as np


def _pyplot():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _runs_of(records, arm):
    return [r for r in records if r["arm"] == arm]


def variance_shift_figure(rows, records, key: str = "shift_pooled_per_layer"):
    """Running / test-time variance per BN layer, mean over seeds, one line per arm.

    `key`: "shift_pooled_per_layer" (summed over channels, then divided) or the per-channel
    ratio's "shift_median_per_layer" / "shift_per_layer" (mean).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5), constrained_layout=True)
    for row in rows:
        runs = _runs_of(records, row["arm"])
        if key not in runs[0]:  # records written before the pooled ratio existed
            key = "shift_per_layer"
        curve = np.mean([r[key] for r in runs], axis=0)
        ax.plot(range(1, len(curve) + 1), curve, marker="o", ms=3, label=row["arm"])
    ax.axhline(1.0, color="k", lw=0.8)
    what = {"shift_pooled_per_layer": "pooled over channels",
            "shift_median_per_layer": "median channel"}.get(key, "mean channel")  # fmt: skip
    ax.set(xlabel="BN layer (input to output)", ylabel="running var / test-time var",
           title=f"Variance shift per BN layer ({what}, mean over seeds)")  # fmt: skip
    ax.legend(fontsize=8)
    return fig


def reestimation_figure(rows, records=None):
    """Test accuracy per arm as trained and after re-estimating BN with dropout off."""
    del records
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4), constrained_layout=True)
    x = np.arange(len(rows))
    bars = [(-0.2, "test_accuracy", "as trained"),
            (0.2, "reestimated_accuracy", "BN re-estimated, dropout off")]  # fmt: skip
    for offset, key, label in bars:
        means = [100 * r[key] for r in rows]
        stds = [100 * np.nan_to_num(r[key + "_std"]) for r in rows]
        ax.bar(x + offset, means, 0.4, yerr=stds, capsize=3, label=label)
    ax.set_xticks(x, [r["arm"] for r in rows], rotation=30, ha="right", fontsize=8)
    low = min(100 * min(r["test_accuracy"], r["reestimated_accuracy"]) for r in rows)
    ax.set(ylabel="test accuracy (%)", ylim=(max(0.0, low - 10), None))
    ax.legend(fontsize=8)
    return fig


def _net_and_color(arm: str):
    """'<net>-blur<M>[-noaug]' -> (net, colour of filter size M): one colour per filter size."""
    net, _, rest = arm.partition("-")
    digits = "".join(ch for ch in rest.split("-")[0] if ch.isdigit())
    return net, f"C{(int(digits) - 1) % 10}" if digits else None


def _nets(rows) -> list[str]:
    return list(dict.fromkeys(_net_and_color(row["arm"])[0] for row in rows))


def diagonal_shift_figure(rows, records):
    """Accuracy and agreement with the unshifted prediction along diagonal shifts.

    One column per network and shift mode (crop, circular); one colour per blur filter size;
    dashed lines for arms trained without augmentation. Mean over seeds.
    """
    plt = _pyplot()
    nets = _nets(rows)
    panels = [(net, mode) for net in nets for mode in ("crop", "circular")]
    fig, axes = plt.subplots(2, len(panels), figsize=(4.2 * len(panels), 7),
                             constrained_layout=True, sharex=True, squeeze=False)  # fmt: skip
    for row in rows:
        runs = _runs_of(records, row["arm"])
        net, color = _net_and_color(row["arm"])
        style = "--" if row["arm"].endswith("noaug") else "-"
        for col, (panel_net, mode) in enumerate(panels):
            if panel_net != net:
                continue
            shifts = runs[0][f"curve_{mode}"]["shift"]
            for ax, key in zip(axes[:, col], ("accuracy", "agreement")):
                values = 100 * np.mean([r[f"curve_{mode}"][key] for r in runs], axis=0)
                ax.plot(shifts, values, style, color=color, marker="o", ms=3, label=row["arm"])
                ax.set(title=f"{net}: {key}, {mode} shift", xlabel="diagonal shift (s, s), pixels",
                       ylabel=f"{key} (%)")  # fmt: skip
    for ax in axes[0]:
        ax.legend(fontsize=7)
    return fig


def consistency_figure(rows, records=None):
    """Test accuracy against shift consistency (crop and circular), mean ± std over seeds.

    One colour per blur filter size and one marker per network; hollow: no augmentation.
    """
    del records
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), constrained_layout=True, sharey=True)
    nets = _nets(rows)
    for ax, mode in zip(axes, ("crop", "circular")):
        for row in rows:
            net, color = _net_and_color(row["arm"])
            marker = "os^Dv"[nets.index(net) % 5]
            ax.errorbar(100 * row[f"consistency_{mode}"], 100 * row["test_accuracy"],
                        xerr=100 * np.nan_to_num(row[f"consistency_{mode}_std"]),
                        yerr=100 * np.nan_to_num(row["test_accuracy_std"]), fmt=marker,
                        color=color, mfc="none" if row["arm"].endswith("noaug") else color,
                        capsize=3, label=row["arm"])  # fmt: skip
        ax.set(xlabel=f"consistency, {mode} shifts (%)", ylabel="test accuracy (%)",
               title=f"Accuracy vs {mode}-shift consistency (mean ± std)")  # fmt: skip
    axes[0].legend(fontsize=7)
    return fig


FIGURES = {
    "bn_dropout": {"variance_shift": variance_shift_figure, "accuracy": reestimation_figure},
    "blur_pool": {"diagonal_shift": diagonal_shift_figure, "consistency": consistency_figure},
}


def save_figures(experiment: str, rows, records, folder: str) -> list[str]:
    """Draws every figure of `experiment` ("bn_dropout" or "blur_pool") into `folder`."""
    plt = _pyplot()
    paths = []
    for name, draw in FIGURES[experiment].items():
        fig = draw(rows, records)
        path = os.path.join(folder, f"{name}.png")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths
