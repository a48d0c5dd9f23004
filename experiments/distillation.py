"""Knowledge distillation (Hinton et al. 2015): a small student alone against the same student
trained on a large teacher's soft targets, on MNIST.

  python -m experiments.distillation \
      --config=configs/experiments/distillation.py:cpu --workdir=runs/distillation \
      [--config.arms=alone,T4] [--config.seeds=0,1]

The teacher is one run (`teacher/seed0`); every student arm x seed is a run of
`config.student` with `distill.teacher` set to it (arm "T<t>": temperature t, soft weight
`config.soft_weight`) or not (arm "alone"). Runs are resumable and finished ones skipped. Per
student: test error and the fraction of test images on which it predicts the teacher's class.
Writes results.md, results.json and test_error.png in the workdir.
"""

from __future__ import annotations

import os

import numpy as np

from cnnjax.analysis.shift_invariance import make_predict
from cnnjax.errors import ConfigError
from cnnjax.models.counting import count_params
from experiments.ablation import (
    Arm,
    markdown_table,
    run_ablation,
    summarize,
    write_results,
)
from experiments.common import launch, machine, take
from experiments.plots import pyplot, save_figures

# Hinton et al. 2015, Sec. 3: MNIST test errors (of 10,000) of their nets.
PUBLISHED = (
    "Hinton et al. 2015 (Sec. 3, MNIST, 2 pixel jitter and dropout for the teacher): teacher "
    "2x1200 67 test errors (0.67%); student 2x800 alone 146 errors (1.46%), distilled at T = 20 "
    "74 errors (0.74%)"
)


def parse_arm(name: str, teacher_dir: str, soft_weight: float) -> Arm:
    """ "alone", or "T<t>" for distillation at temperature t > 0."""
    if name == "alone":
        return Arm("alone", {}, "labels only")
    try:
        temperature = float(name[1:]) if name.startswith("T") else None
    except ValueError:
        temperature = None
    if temperature is None or not temperature > 0 or not np.isfinite(temperature):
        raise ConfigError(
            f"unknown arm {name!r} (valid: alone, or T<temperature> such as T4; temperature > 0)"
        )
    overrides = {
        "distill.teacher": teacher_dir,
        "distill.temperature": temperature,
        "distill.soft_weight": soft_weight,
    }
    return Arm(name, overrides, f"distilled, T = {temperature:g}")


def _arms(config, teacher_dir: str) -> list[Arm]:
    names = [name.strip() for name in config.arms.split(",") if name.strip()]
    if not 0 <= config.soft_weight <= 1:
        raise ConfigError(f"soft_weight must be in [0, 1], got {config.soft_weight!r}")
    return [parse_arm(name, teacher_dir, config.soft_weight) for name in names]


def _predictions(run) -> tuple[np.ndarray, np.ndarray]:
    images, labels = take(run.eval_source, len(run.eval_source))
    variables = {"params": run.state.params, "batch_stats": run.state.batch_stats}
    return make_predict(run.model, variables, run.preprocess)(images), labels


COLUMNS = {
    "test_error": "test error (%)",
    "teacher_agreement": "agrees with the teacher (%)",
}
PERCENT = ("test_error", "teacher_agreement")


def error_figure(rows, records=None):
    """Test error per arm (mean ± std over seeds), the teacher's as a line."""
    plt = pyplot()
    students = [row for row in rows if row["arm"] != "teacher"]
    fig, ax = plt.subplots(figsize=(6, 3.8), constrained_layout=True)
    ax.bar(
        [row["arm"] for row in students],
        [100 * row["test_error"] for row in students],
        yerr=[100 * np.nan_to_num(row["test_error_std"]) for row in students],
        capsize=3,
    )
    teacher = next(row for row in rows if row["arm"] == "teacher")
    ax.axhline(100 * teacher["test_error"], color="gray", ls=":", label="teacher")
    ax.set(ylabel="MNIST test error (%)", title="student alone vs distilled")
    ax.legend()
    return fig


FIGURES = {"test_error": error_figure}


def add_errors(records: list[dict]) -> None:
    for record in records:
        record["test_error"] = 1.0 - record["test_accuracy"]


def report(config, records: list[dict], workdir: str) -> str:
    add_errors(records)
    rows = summarize(records, list(COLUMNS))
    minutes = sum(r["wall_seconds"] for r in records) / 60
    teacher, student = records[0], records[1]
    header = (
        f"# Knowledge distillation ({config.size} size)\n\n"
        "Command: `python -m experiments.distillation "
        f"--config=configs/experiments/distillation.py:{config.size} "
        "--workdir=runs/distillation` (records: `distillation_cpu_runs/`; figure: "
        "`distillation_test_error.png`).\n\n"
        f"On {config.student.dataset}: teacher {teacher['parameters']:,} parameters "
        f"(hidden {tuple(config.teacher.model_kwargs.hidden)}, seed 0), student "
        f"{student['parameters']:,} (hidden {tuple(config.student.model_kwargs.hidden)}); "
        f"student seeds {list(config.seeds)}, soft weight {config.soft_weight}; {machine()}; "
        f"{minutes:.0f} min of training. Published: {PUBLISHED}."
    )
    tables = [markdown_table(rows, COLUMNS, percent=PERCENT)]
    save_figures(FIGURES, rows, records, workdir)
    payload = {"config": config.to_dict(), "summary": rows, "runs": records}
    return write_results(workdir, header, tables, payload)


def run(config, workdir: str) -> str:
    teacher_dir = os.path.join(os.path.abspath(workdir), "teacher", "seed0")
    arms = _arms(config, teacher_dir)
    seeds = list(config.seeds)
    teacher_predictions = {}

    def measure_teacher(run, arm):
        predicted, labels = _predictions(run)
        teacher_predictions["labels"] = predicted
        return {
            "parameters": count_params(run.state.params),
            "test_errors": int(np.sum(predicted != labels)),
            "teacher_agreement": 1.0,
        }

    def measure_student(run, arm):
        if "labels" not in teacher_predictions:
            raise RuntimeError("the teacher's predictions are measured first")
        predicted, labels = _predictions(run)
        return {
            "parameters": count_params(run.state.params),
            "test_errors": int(np.sum(predicted != labels)),
            "teacher_agreement": float(np.mean(predicted == teacher_predictions["labels"])),
        }

    records = run_ablation(
        config.teacher, [Arm("teacher", {}, "teacher")], [0], workdir, measure_teacher, True
    )
    records += run_ablation(config.student, arms, seeds, workdir, measure_student)
    return report(config, records, workdir)


if __name__ == "__main__":
    launch(run, "configs/experiments/distillation.py[:size]")
