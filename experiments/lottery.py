"""Lottery tickets (Frankle & Carbin 2019): iterative magnitude pruning with reset to the
initialization, against a random reinitialization of the same masks.

  python -m experiments.lottery \
      --config=configs/experiments/lottery.py:cpu --workdir=runs/lottery \
      [--config.seeds=0,1] [--config.rounds=4]

Runs live in `workdir/<arm>_r<round>/seed<k>/` (arm `ticket` or `random`; round 0 is the dense
net, a ticket of nothing pruned). The starting point of every pruned run is written first as a
checkpoint folder in `workdir/starts/` (the masked initialization) that the run's
`init_from.workdir` names, and `prune.method = "fixed"` keeps its zeros at zero. Every run is
resumable and finished ones are skipped, so the rounds can be spread over several sessions.
Writes results.md, results.json, tickets.png and curves.png in the workdir.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax import models
from cnnjax.compress import prune
from cnnjax.data import dataset_spec
from cnnjax.errors import ConfigError
from cnnjax.layers.components import resolve_components
from cnnjax.train.state import init_variables
from cnnjax.train.transfer import read_checkpoint, write_checkpoint
from experiments.ablation import (
    Arm,
    check_study_fields,
    differences_table,
    markdown_table,
    paired_differences,
    positive_int,
    run_ablation,
    summarize,
    write_results,
)
from experiments.common import launch, machine
from experiments.plots import pyplot, save_figures

ARMS = ("ticket", "random")
PUBLISHED = (
    "Frankle & Carbin 2019 (Fig. 3, 4; MNIST LeNet-300-100, Adam 1.2e-3, 50,000 iterations, "
    "5 trials): winning tickets reach the dense net's test accuracy (about 98%) or better "
    "down to 3.6% of the weights, and their early-stop iteration falls from about 14,000 to "
    "about 5,000 (at 21% to 7% remaining) before rising again; randomly reinitialized tickets "
    "stop later and lose accuracy from about 20% of the weights on"
)


def run_name(arm: str, round_index: int) -> str:
    return f"{arm}_r{round_index:02d}"


def round_sparsities(per_round, round_index: int) -> dict[str, float]:
    """`{kernel: fraction pruned}` after `round_index` rounds of pruning `per_round[kernel]` of
    the remaining weights each round."""
    return {name: 1.0 - (1.0 - rate) ** round_index for name, rate in per_round.items()}


def initialization(train_config, seed: int) -> dict:
    """`{"params", "batch_stats"}` the training loop starts `train_config` from at `seed`."""
    spec = dataset_spec(train_config.dataset)
    model = models.create_model(
        train_config.model,
        num_classes=spec.num_classes,
        **resolve_components(train_config.model_kwargs.to_dict()),
    )
    shape = tuple(train_config.input_shape) or models.model_info(train_config.model).input_shape
    return init_variables(model, shape, seed)


def masked(variables: dict, masks) -> dict:
    params = jax.tree.map(lambda p, m: jnp.where(m, p, 0), variables["params"], masks)
    return {**variables, "params": params}


def weights_remaining(params) -> float:
    """Fraction of the kernels' weights that are not zero."""
    kernels = [np.asarray(leaf) for leaf in jax.tree.leaves(params) if prune.is_prunable(leaf)]
    return sum(int(np.count_nonzero(k)) for k in kernels) / sum(k.size for k in kernels)


def _check(config) -> None:
    check_study_fields(
        config,
        {
            "rounds": (positive_int, "an integer >= 1"),
            "random_init_offset": (positive_int, "an integer >= 1"),
        },
    )
    bad = [r for r in config.random_rounds if not (positive_int(r) and r <= config.rounds)]
    if bad:
        raise ConfigError(
            f"random_rounds must be rounds in 1..rounds={config.rounds}, got {list(bad)}"
        )
    for name, rate in config.per_round.items():
        if not (isinstance(rate, int | float) and 0 < rate < 1):
            raise ConfigError(f"per_round[{name!r}] must be in (0, 1), got {rate!r}")
    # Every kernel named must exist: found on the model before anything trains.
    prune.layer_sparsities(initialization(config.train, 0)["params"], dict(config.per_round))
    seeds = list(config.seeds)
    if not seeds or not all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds
    ):
        raise ConfigError(f"seeds must be integers >= 0, got {list(config.seeds)}")


def read_curve(run_dir: str) -> dict[str, list]:
    """Validation loss/accuracy and test accuracy per evaluation, from the run's metrics.jsonl."""
    evals, tests = {}, {}
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            record = json.loads(line)
            if record.get("split") == "eval":
                evals[record["step"]] = record
            elif record.get("split") == "test":
                tests[record["step"]] = record
    steps = sorted(evals)
    return {
        "step": steps,
        "validation_loss": [evals[s]["loss"] for s in steps],
        "validation_accuracy": [evals[s]["accuracy"] for s in steps],
        "test_accuracy": [tests[s]["accuracy"] for s in steps],
    }


def measurements(run, run_dir: str, kind: str, round_index: int) -> dict:
    """Weights remaining, the early-stop iteration (lowest validation loss) and the test accuracy
    there and at the end, and the whole curve."""
    curve = read_curve(run_dir)
    stop = int(np.argmin(curve["validation_loss"]))
    return {
        "kind": kind,
        "round": round_index,
        "weights_remaining": weights_remaining(run.state.params),
        "early_stop_step": curve["step"][stop],
        "early_stop_test_accuracy": curve["test_accuracy"][stop],
        "final_test_accuracy": curve["test_accuracy"][-1],
        "curve": curve,
    }


def starting_point(config, workdir: str, kind: str, round_index: int, seed: int) -> str:
    """The checkpoint folder a pruned run starts from, written on first use: the mask of round
    `round_index` (the previous ticket's trained kernels pruned further) on theta_0 (`ticket`)
    or on a fresh initialization (`random`)."""
    folder = os.path.join(workdir, "starts", f"{run_name(kind, round_index)}_seed{seed}")
    if os.path.isdir(folder):
        return folder
    if kind == "ticket":
        trained, _ = read_checkpoint(
            os.path.join(workdir, run_name("ticket", round_index - 1), f"seed{seed}")
        )
        sparsities = prune.layer_sparsities(
            trained["params"], round_sparsities(config.per_round, round_index)
        )
        masks = prune.magnitude_masks(
            trained["params"], sparsities, previous=prune.nonzero_masks(trained["params"])
        )
        start = masked(initialization(config.train, seed), masks)
    else:
        ticket, _ = read_checkpoint(starting_point(config, workdir, "ticket", round_index, seed))
        fresh = initialization(config.train, seed + config.random_init_offset)
        start = masked(fresh, prune.nonzero_masks(ticket["params"]))
    return write_checkpoint(folder, start)


def run(config, workdir: str) -> str:
    _check(config)
    workdir = os.path.abspath(workdir)
    records = []
    for round_index in range(config.rounds + 1):
        kinds = ["ticket"] + (["random"] if round_index in config.random_rounds else [])
        for kind in kinds:
            for seed in config.seeds:
                name = run_name(kind, round_index)
                overrides = {}
                if round_index:
                    start = starting_point(config, workdir, kind, round_index, seed)
                    overrides = {"init_from.workdir": start, "prune.method": "fixed"}
                label = "dense" if round_index == 0 else f"{kind}, round {round_index}"
                run_dir = os.path.join(workdir, name, f"seed{seed}")
                records += run_ablation(
                    config.train,
                    [Arm(name, overrides, label)],
                    [seed],
                    workdir,
                    lambda run, arm, d=run_dir, k=kind, r=round_index: measurements(run, d, k, r),
                )
    return report(config, records, workdir)


COLUMNS = {
    "weights_remaining": "weights left (%)",
    "early_stop_step": "early-stop iteration",
    "early_stop_error": "test error at early stop (%)",
    "final_error": "test error at the end (%)",
}
PERCENT = ("weights_remaining", "early_stop_error", "final_error")
DIFFERENCES = {
    "early_stop_step": "early-stop iteration",
    "early_stop_error": "test error at early stop (points)",
    "final_error": "test error at the end (points)",
}


def add_errors(records: list[dict]) -> None:
    for record in records:
        record["early_stop_error"] = 1.0 - record["early_stop_test_accuracy"]
        record["final_error"] = 1.0 - record["final_test_accuracy"]


def baseline_of(arm: str) -> str | None:
    """Tickets against the dense net; each random control against the ticket of its round."""
    kind, round_name = arm.rsplit("_r", 1)
    return run_name("ticket", 0) if kind == "ticket" else run_name("ticket", int(round_name))


def _by_kind(rows, kind):
    rows = [row for row in rows if row["arm"].startswith(kind) or row["arm"] == "ticket_r00"]
    return sorted(rows, key=lambda row: -row["weights_remaining"])


def tickets_figure(rows, records=None):
    """Test error at early stop and the early-stop iteration against the weights left."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    for kind, style in (("ticket", "o-"), ("random", "s--")):
        chosen = _by_kind(rows, kind)
        x = [100 * row["weights_remaining"] for row in chosen]
        for ax, metric, scale in (
            (axes[0], "early_stop_error", 100),
            (axes[1], "early_stop_step", 1),
        ):
            ax.errorbar(
                x,
                [scale * row[metric] for row in chosen],
                yerr=[scale * np.nan_to_num(row[metric + "_std"]) for row in chosen],
                fmt=style,
                capsize=3,
                label="reset to theta_0" if kind == "ticket" else "random reinit",
            )
    for ax, label in zip(axes, ("test error at early stop (%)", "early-stop iteration")):
        ax.set(xscale="log", xlabel="weights left (%)", ylabel=label)
        ax.invert_xaxis()
        ax.legend()
    return fig


def curves_figure(rows, records):
    """Test accuracy during training of a few rounds (seed-mean), tickets and random ones."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4), constrained_layout=True)
    rounds = sorted({r["round"] for r in records if r["kind"] == "random"})
    middle = len(rounds) // 2
    shown = sorted({0, *rounds[middle : middle + 1], *rounds[-1:]})
    for round_index in shown:
        for kind, style in (("ticket", "-"), ("random", "--")):
            runs = [r for r in records if r["round"] == round_index and r["kind"] == kind]
            if not runs:
                continue
            steps = runs[0]["curve"]["step"]
            accuracy = np.mean([r["curve"]["test_accuracy"] for r in runs], axis=0)
            left = 100 * runs[0]["weights_remaining"]
            name = "dense" if round_index == 0 else kind
            ax.plot(steps, 100 * accuracy, style, label=f"{name}, {left:.1f}% left")
    ax.set(xlabel="iteration", ylabel="test accuracy (%)")
    ax.legend(fontsize=8)
    return fig


FIGURES = {"tickets": tickets_figure, "curves": curves_figure}


def report(config, records: list[dict], workdir: str) -> str:
    add_errors(records)
    records.sort(key=lambda r: (r["kind"] != "ticket", r["round"], r["seed"]))
    rows = summarize(records, list(COLUMNS))
    differences = paired_differences(records, baseline_of, list(DIFFERENCES))
    minutes = sum(r["wall_seconds"] for r in records) / 60
    t = config.train
    header = (
        f"# Lottery tickets ({config.size} size)\n\n"
        "Command: `python -m experiments.lottery "
        f"--config=configs/experiments/lottery.py:{config.size} --workdir=runs/lottery` "
        "(records: `lottery_cpu_runs/`; figures: `lottery_tickets.png`, `lottery_curves.png`)."
        f"\n\n{t.model} on {t.dataset} ({t.data.train_split} to train, {t.data.eval_split} to "
        f"validate, {t.data.test_split} reported), {t.optimizer.name} {t.optimizer.lr:g}, batch "
        f"{t.batch_size}, {t.num_steps:,} iterations a round, evaluated every {t.eval_every}; "
        f"pruned per round: {dict(config.per_round)} of the remaining weights; seeds "
        f"{list(config.seeds)}; {machine()}; {minutes:.0f} min of training summed over the runs "
        "(wall time of each run, which may have shared the machine with others). The early-stop "
        "iteration is the one of the lowest validation loss; the test error is read there and "
        f"at the last iteration. Published: {PUBLISHED}."
    )
    tables = [
        markdown_table(rows, COLUMNS, percent=PERCENT),
        "Seed-paired differences (mean [95% interval]): each ticket against the dense net "
        "(`ticket_r00`), each random control against the ticket of its round.\n\n"
        + differences_table(differences, DIFFERENCES, percent=("early_stop_error", "final_error")),
    ]
    save_figures(FIGURES, rows, records, workdir)
    payload = {"config": config.to_dict(), "summary": rows, "differences": differences}
    payload["runs"] = records
    return write_results(workdir, header, tables, payload)


if __name__ == "__main__":
    launch(run, "configs/experiments/lottery.py[:size]")
