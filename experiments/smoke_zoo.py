"""Smoke-trains zoo architectures (configs/smoke.py) one after another and tabulates the results.

  TFDS_DATA_DIR=../shared/tfds python experiments/smoke_zoo.py --out=experiments/results/smoke_zoo
  python experiments/smoke_zoo.py --models=resnet50,mobilenet_v2 --out=...   # a subset

Each model runs in its own workdir under `--workdir` (default runs/smoke); a finished model is not
re-run (its result is read back), so the script can be interrupted and restarted. Writes
`<out>.jsonl` (one record per model) and `<out>.md` (the table the README quotes). A run passes
(`passes`) when its training loss stays finite and ends lower than it started (mean of the last
50 logged steps vs the first 50) and its test accuracy reaches the entry's `min_accuracy`
(default: twice chance): the network learns and does not diverge. The table says which did not.
"""

import importlib.util
import json
import os
import pathlib
import sys
import time

from absl import flags

from cnnjax import cli
from cnnjax.errors import ConfigError, unknown_choice

ROOT = pathlib.Path(__file__).resolve().parents[1]


def define_flags() -> None:
    """The command's flags (defined when it runs, so that importing this module defines none)."""
    flags.DEFINE_list("models", None, "Models to run (default: every entry of SMOKE).")
    flags.DEFINE_string("workdir", "runs/smoke", "Parent folder of the runs.")
    flags.DEFINE_string("out", "experiments/results/smoke_zoo", "Output path prefix.")


def load_smoke():
    spec = importlib.util.spec_from_file_location("smoke", ROOT / "configs" / "smoke.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_one(smoke, name: str, workdir: str) -> dict:
    from cnnjax import models
    from cnnjax.analysis.devices import host_description
    from cnnjax.data import dataset_spec
    from cnnjax.train import train_and_evaluate
    from cnnjax.train.metrics import read_metrics

    config = smoke.get_config(name)
    config.progress = False
    start = time.perf_counter()
    result = train_and_evaluate(config, workdir)
    seconds = time.perf_counter() - start
    train = [r for r in read_metrics(workdir) if r["split"] == "train"]
    info = models.model_info(name)
    chance = 1.0 / dataset_spec(config.dataset).num_classes
    record = {
        "model": name,
        "dataset": config.dataset,
        "input_shape": list(config.input_shape or info.input_shape),
        "steps": config.num_steps,
        "batch_size": config.batch_size,
        "lr": config.optimizer.lr,
        "first_loss": train[0]["loss"],
        "last_loss": train[-1]["loss"],
        "test_accuracy": result["accuracy"],
        "test_count": result["count"],
        "chance": chance,
        "min_accuracy": smoke.SMOKE[name].get("min_accuracy", 2 * chance),
        "images_per_sec": sum(r["images_per_sec"] for r in train[1:]) / max(1, len(train) - 1),
        "wall_seconds": round(seconds, 1),
        "machine": host_description(),
    }
    return record


def passes(record: dict) -> bool:
    """Learns without diverging: a finite, falling loss and at least the minimum test accuracy."""
    first, last = record["first_loss"], record["last_loss"]
    falling = last is not None and first is not None and last < first
    minimum = record.get("min_accuracy", 2 * record["chance"])
    return bool(falling and record["test_accuracy"] >= minimum)


def markdown(records: list[dict]) -> str:
    header = (
        "model",
        "data (input)",
        "steps x batch",
        "train loss (first -> last 50 steps)",
        "test acc",
        "img/s",
        "wall",
        "ok",
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in records:
        shape = "x".join(str(d) for d in r["input_shape"])
        lines.append(
            f"| {r['model']} | {r['dataset']} ({shape}) | {r['steps']} x {r['batch_size']} | "
            f"{r['first_loss']:.3f} -> {r['last_loss']:.3f} | {100 * r['test_accuracy']:.2f}% | "
            f"{r['images_per_sec']:.0f} | {r['wall_seconds'] / 60:.1f} min | "
            f"{'yes' if passes(r) else 'NO'} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    smoke = load_smoke()
    names = flags.FLAGS.models or list(smoke.SMOKE)
    unknown = [name for name in names if name not in smoke.SMOKE]
    if unknown:  # before hours of training the others
        raise ConfigError(unknown_choice("smoke model", unknown[0], smoke.SMOKE))
    out = pathlib.Path(flags.FLAGS.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    records_path = out.with_suffix(".jsonl")
    done = {}
    if records_path.exists():
        done = {r["model"]: r for r in map(json.loads, records_path.read_text().splitlines())}
    for name in names:
        if name in done:
            print(f"{name}: done before ({100 * done[name]['test_accuracy']:.2f}%)", flush=True)
            continue
        record = run_one(smoke, name, os.path.join(flags.FLAGS.workdir, name))
        done[name] = record
        with open(records_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        print(json.dumps(record), flush=True)
    ordered = [done[n] for n in smoke.SMOKE if n in done]
    out.with_suffix(".md").write_text(markdown(ordered))
    failed = [r["model"] for r in ordered if not passes(r)]
    print(f"{len(ordered) - len(failed)}/{len(ordered)} passed; failed: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    define_flags()
    cli.run(main, on_interrupt=cli.RESUME)
