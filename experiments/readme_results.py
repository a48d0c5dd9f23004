"""The README's Results table: each row's command run as a user runs it, recorded, rendered.

  python -m experiments.readme_results --rows=default,price_updown --workdir=runs/readme
  python -m experiments.readme_results --render_only     # the page from the records

Each row runs its `python -m cnnjax.main` command in a subprocess with a fresh workdir
(`<workdir>/<row>`; an existing one is refused, so that a record is always one whole run), times
the whole command, reads the final evaluation and the logged training speed from its
`metrics.jsonl`, and replaces the row's record in `experiments/results/readme_results.jsonl`.
Every record states the machine (CPU model, cores), the CPU seconds of the run and of every other
process during it (other jobs on the cores slow the wall time, not the accuracy), JAX, commit
and date.
The `price_baselines` row measures `cnnjax.data.series.baselines()` instead. The page
`experiments/results/readme_results.md` is rendered from the records, and README.md carries the
same table and reference numbers (tests/test_readme_records.py checks that).
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import re
import resource
import subprocess
import sys
import time

from absl import flags

from cnnjax import cli
from cnnjax.errors import ConfigError, unknown_choice

ROOT = pathlib.Path(__file__).resolve().parents[1]
RECORDS = ROOT / "experiments" / "results" / "readme_results.jsonl"

# name: (config argument, extra overrides, table row it belongs to)
RUNS = {
    "default": ("configs/default.py", (), "default"),
    "default_seed1": ("configs/default.py", ("--config.seed=1",), "default"),
    "default_seed2": ("configs/default.py", ("--config.seed=2",), "default"),
    "lenet5_mnist": ("configs/lenet5_mnist.py", (), "lenet5_mnist"),
    "resnet20_short": ("configs/resnet20_cifar10.py:short", (), "resnet20_short"),
    "price_updown": ("configs/price_updown.py", (), "price_updown"),
    "price_updown_tcn": ("configs/price_updown.py:tcn1d", (), "price_updown_tcn"),
}
BASELINES = "price_baselines"

# Table rows: (row, model label, data label, published result cited next to ours)
ROWS = [
    ("default", "LeNet-5 (ReLU, max pool)", "scikit-learn digits, 359 test images", ""),
    ("lenet5_mnist", "LeNet-5 (ReLU, max pool)", "MNIST",
     "99.05% (LeNet-5, LeCun et al. 1998)"),
    ("resnet20_short", "ResNet-20", "CIFAR-10 (JPEG q75 copy)",
     "91.25% with the full 64k-step recipe on true CIFAR-10 (He et al. 2016)"),
    ("price_updown", "1-D CNN `cnn1d`",
     "`price_updown`: simulated price-like series, 4,991 test windows",
     "(synthetic data: references below)"),
    ("price_updown_tcn", "causal TCN `tcn1d`", "same", ""),
]  # fmt: skip

# Reference accuracies of the price task, in the order the README lists them.
BASELINE_LABELS = [
    ("majority", "majority class"),
    ("last_sign", "sign of the last return"),
    ("momentum", "sign of the last {momentum_k:.0f} returns (k chosen on train)"),
    ("logistic", "logistic regression on the window"),
    ("hmm_filter", "the exact Bayes (HMM) regime filter that knows every generator parameter"),
    ("oracle", "an oracle that sees the true regime"),
]
BUSY_SHARE = 0.25  # other processes' average use of a core above which a wall time is marked

_STARTED = re.compile(
    r"^(\w+): ([\d,]+) parameters; ([\d,]+) training examples of (\w+); (\d+) steps of (\d+)$",
    re.MULTILINE,
)


def define_flags() -> None:
    """The command's flags (defined when it runs, so that importing this module defines none)."""
    flags.DEFINE_list("rows", [], f"Runs to (re)measure: {', '.join([*RUNS, BASELINES])}.")
    flags.DEFINE_string("workdir", "runs/readme", "Parent folder of the runs' workdirs.")
    flags.DEFINE_bool("render_only", False, "Only rewrite the page from the records.")


def command(name: str, workdir: str) -> list[str]:
    config, overrides, _ = RUNS[name]
    return ["python", "-m", "cnnjax.main", f"--config={config}", f"--workdir={workdir}", *overrides]


def measure_run(name: str, workdir: str) -> dict:
    """Runs `name`'s command in a fresh `workdir` and returns its record."""
    from cnnjax.analysis.devices import host_description
    from cnnjax.train.metrics import read_metrics

    argv = command(name, workdir)
    busy_before, children_before = _busy_cpu_seconds(), _children_cpu_seconds()
    began = time.perf_counter()
    done = subprocess.run([sys.executable, *argv[1:]], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - began
    own = _children_cpu_seconds() - children_before
    others = None if busy_before is None else _busy_cpu_seconds() - busy_before - own
    if done.returncode != 0:
        raise ConfigError(f"{' '.join(argv)} failed: {done.stderr.strip().splitlines()[-1:]}")
    started = _STARTED.search(done.stdout)
    records = read_metrics(workdir)
    final = [r for r in records if r["split"] == "eval"][-1]
    speeds = [r["images_per_sec"] for r in records if r["split"] == "train"][1:]  # 1st: compile
    model, params, train_size, dataset, steps, batch = started.groups()
    return {
        "run": name,
        "command": " ".join(argv),
        "model": model,
        "params": int(params.replace(",", "")),
        "dataset": dataset,
        "train_examples": int(train_size.replace(",", "")),
        "steps": int(steps),
        "batch_size": int(batch),
        "accuracy": final["accuracy"],
        "correct": final["correct"],
        "count": final["count"],
        "wall_seconds": round(wall, 1),
        "train_images_per_sec": sum(speeds) / len(speeds) if speeds else None,
        "cpu_seconds": round(own, 1),
        "other_cpu_seconds": None if others is None else round(max(others, 0.0), 1),
        **_provenance(host_description()),
    }


def _busy_cpu_seconds() -> float | None:
    """CPU seconds all processes of this machine have run since boot (Linux), else None."""
    try:
        fields = open("/proc/stat").readline().split()[1:]
    except OSError:
        return None
    user, nice, system, _, _, irq, softirq, steal = map(int, fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure_baselines() -> dict:
    from cnnjax.analysis.devices import host_description
    from cnnjax.data.series import baselines

    return {"run": BASELINES, "command": "cnnjax.data.series.baselines()", **baselines(),
            **_provenance(host_description())}  # fmt: skip


def _provenance(machine: str) -> dict:
    import jax

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {"machine": machine, "jax": jax.__version__, "commit": commit,
            "date": datetime.date.today().isoformat()}  # fmt: skip


def read_records(path=RECORDS) -> dict[str, dict]:
    path = pathlib.Path(path)
    if not path.exists():
        return {}
    return {r["run"]: r for r in map(json.loads, path.read_text().splitlines())}


def _wall(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds} s" if seconds < 60 else f"{seconds // 60} min {seconds % 60:02d} s"


def _percent(record: dict) -> str:
    return f"{100 * record['accuracy']:.2f}% ({record['correct']:,}/{record['count']:,})"


def render_table(records: dict[str, dict]) -> str:
    """The README's Results table (markdown) from the records."""
    lines = [
        "| model | data | command | test accuracy | wall time | train img/s | published |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row, model, data, published in ROWS:
        runs = [records[name] for name, (_, _, r) in RUNS.items() if r == row and name in records]
        if not runs:
            continue
        first = runs[0]
        accuracy = _percent(first)
        if len(runs) > 1:
            seeds = ", ".join(re.search(r"seed=(\d+)", r["command"]).group(1) for r in runs[1:])
            others = ", ".join(f"{100 * r['accuracy']:.2f}%" for r in runs[1:])
            accuracy += f"; seeds {seeds}: {others}"
        if row == "resnet20_short":
            epochs = first["steps"] * first["batch_size"] / first["train_examples"]
            accuracy += f" after {first['steps']:,} steps ({epochs:.1f} epochs)"
        walls = sorted(r["wall_seconds"] for r in runs)
        wall = _wall(walls[0]) if len(walls) == 1 else f"{_wall(walls[0])}-{_wall(walls[-1])}"
        wall = re.sub(r"^(\d+) s-(\d+) s$", r"\1-\2 s", wall)  # "26-32 s"
        if any(_busy(r) for r in runs):
            wall += "*"
        speed = first["train_images_per_sec"]
        cells = [
            f"{model}, {first['params']:,} params",
            data,
            f"`{first['command']}`",
            accuracy,
            wall,
            f"{speed:,.0f}" if speed else "",
            published,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _busy(record: dict) -> bool:
    """Whether other processes used more than `BUSY_SHARE` of a core on average during the run
    (their CPU seconds: the machine's busy time minus the run's own)."""
    others = record.get("other_cpu_seconds")
    return others is not None and others > BUSY_SHARE * record["wall_seconds"]


def render_baselines(record: dict) -> str:
    """The README's list of reference accuracies of the price task."""
    parts = [f"{label.format(**record)} {100 * record[key]:.2f}%" for key, label in BASELINE_LABELS]
    return ", ".join(parts[:-1]) + ", and " + parts[-1]


def render_page(records: dict[str, dict]) -> str:
    machines = sorted({r["machine"] for r in records.values()})
    return "\n".join(
        [
            "# README results: the recorded runs",
            "",
            "`python -m experiments.readme_results --rows=<run>` runs each command in a fresh "
            "workdir and records it in `readme_results.jsonl`; this page and README.md's Results "
            f"table are rendered from those records. Machines: {'; '.join(machines)}. A * marks "
            f"a wall time measured while other processes used more than {BUSY_SHARE:.0%} of a core "
            "on average (their CPU seconds during the run are in the record); accuracies do not "
            "depend on it.",
            "",
            render_table(records),
            "",
            *(
                [f"Price-task references (`{BASELINES}`): {render_baselines(records[BASELINES])}."]
                if BASELINES in records
                else []
            ),
            "",
        ]
    )


def main() -> int:
    from cnnjax.train.files import write_text_atomic

    args = flags.FLAGS
    for name in args.rows:
        if name not in RUNS and name != BASELINES:
            raise ConfigError(unknown_choice("run", name, [*RUNS, BASELINES]))
        workdir = os.path.join(args.workdir, name)
        if name in RUNS and os.path.exists(workdir):
            raise ConfigError(f"{workdir} exists: a record is one whole run, use a new --workdir")
    for name in [] if args.render_only else args.rows:
        record = (
            measure_baselines()
            if name == BASELINES
            else measure_run(name, os.path.join(args.workdir, name))
        )
        records = read_records()
        records[name] = record
        write_text_atomic(str(RECORDS), "".join(json.dumps(r) + "\n" for r in records.values()))
        print(json.dumps(record), flush=True)
    page = RECORDS.with_suffix(".md")
    write_text_atomic(str(page), render_page(read_records()))
    print(f"wrote {page}")
    return 0


if __name__ == "__main__":
    define_flags()
    cli.run(main)
