"""Shift invariance with blur pooling (Zhang 2019): accuracy, consistency, diagonal-shift curves.

  python -m experiments.blur_pool --config=configs/experiments/blur_pool.py:cpu \
      --workdir=runs/blur_pool [--config.arms=resnet20-blur1,resnet20-blur3] [--config.seeds=0,1]

Every arm x seed trains one network (resumable; finished runs are skipped), then measures on the
test set (`cnnjax.analysis.shift_invariance`): consistency under two random shifts of up to
`max_shift` pixels, circular and zero-padded crop, and accuracy / agreement with the unshifted
prediction for diagonal shifts (s, s), s = 0..`curve_max_shift`. Writes results.md,
results.json, diagonal_shift.png and consistency.png in the workdir.
"""

from __future__ import annotations

import re

import numpy as np

from cnnjax.analysis import shift_invariance as si
from cnnjax.errors import ConfigError
from experiments.ablation import (
    Arm,
    check_study_fields,
    differences_table,
    markdown_table,
    paired_differences,
    positive_int,
    run_study,
    summarize,
    write_results,
)
from experiments.common import launch, machine, take
from experiments.plots import pyplot, runs_of, save_figures

NETS = ("resnet20", "vgg")
_ARM = re.compile(r"^(resnet20|vgg)-blur([1-7])(-noaug)?$")


def parse_arm(name: str, config) -> Arm:
    """ "<net>-blur<M>[-noaug]" (see the config's docstring) as an `Arm`."""
    match = _ARM.match(name)
    if not match:
        raise ConfigError(
            f"unknown arm {name!r}: use '<net>-blur<M>[-noaug]' with net in {NETS} and M in 1..7, "
            "e.g. 'resnet20-blur3'"
        )
    net, size, noaug = match.group(1), int(match.group(2)), bool(match.group(3))
    if net == "resnet20":
        overrides = {
            "model": "resnet20",
            "model_kwargs.width": config.resnet_width,
            "model_kwargs.antialias": size,
        }
    else:
        pool = "max" if size == 1 else f"max_blur:{size}:replicate"
        overrides = {
            "model": "vgg16_cifar",
            "model_kwargs.width_multiplier": config.vgg_width,
            "model_kwargs.pool": pool,
        }
    if noaug:
        overrides.update({"augment.crop_padding": 0, "augment.flip": False})
    what = "baseline (plain striding)" if size == 1 else f"blur filter {size}"
    return Arm(name, overrides, f"{net}, {what}" + (", no augmentation" if noaug else ""))


def measure(run, arm, config) -> dict:
    """Consistency (circular and crop) and diagonal-shift curves on the test set."""
    images, labels = take(run.eval_source, max(config.consistency_images, config.curve_images))
    variables = {"params": run.state.params, "batch_stats": run.state.batch_stats}
    predict = si.make_predict(run.model, variables, run.preprocess)
    pairs, curve = images[: config.consistency_images], images[: config.curve_images]
    out = {}
    for mode in si.SHIFT_MODES:
        out[f"consistency_{mode}"] = si.consistency(predict, pairs, config.max_shift, mode)
        out[f"curve_{mode}"] = si.diagonal_curve(
            predict, curve, labels[: config.curve_images], config.curve_max_shift, mode
        )
    return out


COLUMNS = {
    "test_accuracy": "test acc. (%)",
    "consistency_crop": "consistency, crop (%)",
    "consistency_circular": "consistency, circular (%)",
    "worst_accuracy_crop": "worst acc. over diagonal shifts, crop (%)",
    "worst_accuracy_circular": "worst acc., circular (%)",
}
PERCENT = tuple(COLUMNS)
DIFFERENCE_COLUMNS = {
    k: COLUMNS[k] for k in ("test_accuracy", "consistency_crop", "consistency_circular")
}


def baseline_of(arm: str) -> str:
    """The plain-striding arm of the same net and augmentation: "vgg-blur3" -> "vgg-blur1"."""
    return re.sub(r"-blur[0-9]", "-blur1", arm)


def add_curve_scalars(records) -> None:
    """Adds each curve's worst accuracy (over the diagonal shifts) as a scalar, for the table."""
    for record in records:
        for mode in si.SHIFT_MODES:
            record[f"worst_accuracy_{mode}"] = min(record[f"curve_{mode}"]["accuracy"])


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
    plt = pyplot()
    nets = _nets(rows)
    panels = [(net, mode) for net in nets for mode in ("crop", "circular")]
    fig, axes = plt.subplots(
        2,
        len(panels),
        figsize=(4.2 * len(panels), 7),
        constrained_layout=True,
        sharex=True,
        squeeze=False,
    )
    for row in rows:
        runs = runs_of(records, row["arm"])
        net, color = _net_and_color(row["arm"])
        style = "--" if row["arm"].endswith("noaug") else "-"
        for col, (panel_net, mode) in enumerate(panels):
            if panel_net != net:
                continue
            shifts = runs[0][f"curve_{mode}"]["shift"]
            for ax, key in zip(axes[:, col], ("accuracy", "agreement")):
                values = 100 * np.mean([r[f"curve_{mode}"][key] for r in runs], axis=0)
                ax.plot(shifts, values, style, color=color, marker="o", ms=3, label=row["arm"])
                ax.set(
                    title=f"{net}: {key}, {mode} shift",
                    xlabel="diagonal shift (s, s), pixels",
                    ylabel=f"{key} (%)",
                )
    for ax in axes[0]:
        ax.legend(fontsize=7)
    return fig


def consistency_figure(rows, records=None):
    """Test accuracy against shift consistency (crop and circular), mean ± std over seeds.

    One colour per blur filter size and one marker per network; hollow: no augmentation.
    """
    del records
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), constrained_layout=True, sharey=True)
    nets = _nets(rows)
    for ax, mode in zip(axes, ("crop", "circular")):
        for row in rows:
            net, color = _net_and_color(row["arm"])
            marker = "os^Dv"[nets.index(net) % 5]
            ax.errorbar(
                100 * row[f"consistency_{mode}"],
                100 * row["test_accuracy"],
                xerr=100 * np.nan_to_num(row[f"consistency_{mode}_std"]),
                yerr=100 * np.nan_to_num(row["test_accuracy_std"]),
                fmt=marker,
                color=color,
                mfc="none" if row["arm"].endswith("noaug") else color,
                capsize=3,
                label=row["arm"],
            )
        ax.set(
            xlabel=f"consistency, {mode} shifts (%)",
            ylabel="test accuracy (%)",
            title=f"Accuracy vs {mode}-shift consistency (mean ± std)",
        )
    axes[0].legend(fontsize=7)
    return fig


# The figures `report` writes into the workdir: file name (without .png) -> figure function.
FIGURES = {"diagonal_shift": diagonal_shift_figure, "consistency": consistency_figure}


def report(config, records, workdir: str) -> str:
    add_curve_scalars(records)
    rows = summarize(records, list(COLUMNS))
    table = markdown_table(rows, COLUMNS, percent=PERCENT)
    differences = paired_differences(records, baseline_of, list(DIFFERENCE_COLUMNS))
    differences_md = (
        "Difference from plain striding (same network, augmentation and seed), mean and 95% "
        "t-interval over seeds, in points:\n\n"
        + differences_table(differences, DIFFERENCE_COLUMNS, percent=PERCENT)
    )
    minutes = sum(r["wall_seconds"] for r in records) / 60
    header = (
        f"# Blur pooling and shift invariance ({config.size} size)\n\n"
        f"{config.train.dataset}, {config.train.num_steps} steps of {config.train.batch_size} per "
        f"run, seeds {list(config.seeds)}; ResNet-20 width {config.resnet_width}, VGG-16 (CIFAR) "
        f"width x{config.vgg_width}; {machine()}; {minutes:.0f} min of training and measuring. "
        f"Consistency: two random shifts in [-{config.max_shift}, {config.max_shift}]^2 of "
        f"{config.consistency_images} test images; diagonal shifts 0..{config.curve_max_shift} on "
        f"{config.curve_images}."
    )
    save_figures(FIGURES, rows, records, workdir)
    payload = {
        "config": config.to_dict(),
        "summary": rows,
        "differences": differences,
        "runs": records,
    }
    return write_results(workdir, header, [table, differences_md], payload)


STUDY_FIELDS = {
    "consistency_images": (positive_int, "an integer >= 1"),
    "curve_images": (positive_int, "an integer >= 1"),
    "max_shift": (lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
    "curve_max_shift": (lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
}


def run(config, workdir: str) -> str:
    check_study_fields(config, STUDY_FIELDS)
    records = run_study(config, lambda name: parse_arm(name, config), workdir, measure)
    return report(config, records, workdir)


if __name__ == "__main__":
    launch(run, "configs/experiments/blur_pool.py[:size]")
