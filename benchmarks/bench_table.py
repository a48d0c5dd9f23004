"""Training and inference speed of several networks against their PyTorch twins, as one table.

    nice -n 10 python benchmarks/bench_table.py            # writes benchmarks/results/bench_cpu.md
    python benchmarks/bench_table.py --impl xla --models resnet20 \
        --out benchmarks/results/bench_cpu_xla.md           # XLA's own convolutions
    python benchmarks/bench_table.py --models resnet20,densenet_bc_100 --repeats 3 \
        --out benchmarks/results/bench_cpu_repeats.md       # run-to-run spread

Runs `cnnjax.bench.run(..., compare="torch")` (see `python -m cnnjax.bench --help`) for each
entry of `ENTRIES` in one process, and writes the markdown table with the JSON records beside it
(`.jsonl`). Needs PyTorch and torchvision (the `ref` extra).
"""

from __future__ import annotations

import json
import pathlib
import sys

from absl import flags

from cnnjax import bench, cli
from cnnjax.errors import ConfigError, unknown_choice

DEFAULT_OUT = pathlib.Path(__file__).resolve().parent / "results" / "bench_cpu.md"
# (model, batch, input shape, classes): the CIFAR-sized networks of issue 7.
ENTRIES = [
    ("resnet20", 128, (32, 32, 3), 10),
    ("vgg16_cifar", 128, (32, 32, 3), 10),
    ("mobilenet_v2", 128, (32, 32, 3), 10),
    ("densenet_bc_100", 64, (32, 32, 3), 10),
]


def define_flags() -> None:
    """The command's flags (defined when it runs, so that importing this module defines none)."""
    flags.DEFINE_enum("impl", "auto", ["auto", "xla", "onednn"], "Convolution kernels.")
    flags.DEFINE_string("models", ",".join(e[0] for e in ENTRIES), "Comma-separated ENTRIES.")
    flags.DEFINE_integer("windows", 5, "Timed windows (the median is reported).")
    flags.DEFINE_integer("steps", 3, "Steps per timed window.")
    flags.DEFINE_integer("repeats", 1, "Runs of each model (run-to-run spread).", lower_bound=1)
    flags.DEFINE_string("out", str(DEFAULT_OUT), "Markdown table (the JSON records beside it).")


README_LABELS = {"mobilenet_v2": "mobilenet_v2 (32x32, 10 classes)"}


def readme_table(records: list[dict]) -> str:
    """README's CPU-performance table: the first run of each model in `records`."""
    lines = [
        "| model | batch | JAX train img/s | PyTorch train img/s | train ratio | JAX eval img/s "
        "| PyTorch eval img/s | eval ratio | compile s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in records:
        if r.get("repeat", 0):
            continue
        lines.append(
            f"| {README_LABELS.get(r['model'], r['model'])} | {r['batch_size']} | "
            f"{r['jax_train_ips']:.1f} | {r['torch_train_ips']:.1f} | {r['train_ratio']:.2f} | "
            f"{r['jax_eval_ips']:.1f} | {r['torch_eval_ips']:.1f} | {r['eval_ratio']:.2f} | "
            f"{r['compile_s']:.1f} |"
        )
    return "\n".join(lines)


def read_records(path) -> list[dict]:
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines()]


def main() -> int:
    args = flags.FLAGS
    out = pathlib.Path(args.out)
    chosen = args.models.split(",")
    unknown = [name for name in chosen if name not in [e[0] for e in ENTRIES]]
    if unknown:
        raise ConfigError(unknown_choice("model of ENTRIES", unknown[0], [e[0] for e in ENTRIES]))
    import jax  # heavy imports after the command line's errors are reported

    records = []
    for name, batch, shape, classes in ENTRIES:
        if name not in chosen:
            continue
        for repeat in range(args.repeats):
            record = bench.run(
                name,
                batch,
                shape,
                compare="torch",
                impl=args.impl,
                windows=args.windows,
                steps=args.steps,
                num_classes=classes,
            )
            record["repeat"] = repeat
            print(bench.render(record), flush=True)
            records.append(record)
    first = records[0]
    lines = [
        "# Training and inference speed on CPU: cnnjax (JAX) vs PyTorch, same run",
        "",
        f"`python benchmarks/bench_table.py --impl {args.impl} --windows {args.windows} "
        f"--steps {args.steps} --models {args.models} --repeats {args.repeats}`: "
        f"{first['machine']}, jax {jax.__version__} ({first['backend']}),"
        f" oneDNN {first['onednn'] or 'unavailable'} (cnnjax's FFI path), torch "
        f"{first.get('torch')} with {first.get('threads', 'all')} threads, channels-last. "
        "Images/second of the median of the timed windows; random float32 inputs, SGD with "
        "momentum 0.9, cross-entropy; compile = first train step (trace + XLA compile + run).",
        "",
        "| model | batch | params (both) | JAX train img/s | PyTorch train img/s | train ratio "
        "| JAX eval img/s | PyTorch eval img/s | eval ratio | compile s | train GFLOP/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in records:
        same = "" if r["params_match"] else f" (torch {r['torch_params']:,})"
        lines.append(
            f"| {r['model']} | {r['batch_size']} | {r['params']:,}{same} | "
            f"{r['jax_train_ips']:.1f} | {r['torch_train_ips']:.1f} | **{r['train_ratio']:.2f}** | "
            f"{r['jax_eval_ips']:.1f} | {r['torch_eval_ips']:.1f} | **{r['eval_ratio']:.2f}** | "
            f"{r['compile_s']:.1f} | {r['train_gflops']:.1f} |"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    define_flags()
    cli.run(main)
