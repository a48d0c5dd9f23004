"""The model summary of every registry model: totals, roofline, bottleneck and the time it takes.

    nice -n 10 python benchmarks/summary_zoo.py                  # all models, batch 32, A100
    python benchmarks/summary_zoo.py --models 'resnet*' --batch 8 --device t4 --out /tmp/s.md

Runs `cnnjax.analysis.summary.summarize` in this process (what `python -m cnnjax.summary` does,
without the interpreter start-up) and writes a markdown table (default
`benchmarks/results/summary_zoo.md`, its records beside it as `.jsonl`): params, MACs per image,
training memory at the batch size, roofline forward and training-step time, share of time in
memory-bound layers, the bottleneck layer, and the seconds each summary took (tracing forward
and training step on abstract shapes; nothing is compiled).
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

from absl import flags

from cnnjax import cli
from cnnjax.errors import ConfigError

DEFAULT_OUT = pathlib.Path(__file__).resolve().parent / "results" / "summary_zoo.md"


def define_flags() -> None:
    """The command's flags (defined when it runs, so that importing this module defines none)."""
    flags.DEFINE_string("models", "*", "Shell pattern of registry names.")
    flags.DEFINE_integer("batch", 32, "Batch size of the memory and the roofline.", lower_bound=1)
    flags.DEFINE_string("device", "a100", "Device profile or alias.")
    flags.DEFINE_string("precision", None, "Device peak: float32 (default), tf32, bf16, fp16.")
    flags.DEFINE_string("out", str(DEFAULT_OUT), "Markdown table.")
    flags.DEFINE_string("note", "", "Appended to the page's description.")


def main() -> int:
    import jax  # heavy imports after the command line's errors are reported

    from cnnjax import models
    from cnnjax.analysis.devices import host_description
    from cnnjax.analysis.summary import human_bytes, human_count, summarize

    args = flags.FLAGS

    names = models.list_models(args.models)
    if not names:
        raise ConfigError(f"no registry model matches --models={args.models!r}")
    rows, seconds, records = [], [], []
    machine = host_description()
    for name in names:
        began = time.perf_counter()
        s = summarize(name, batch=args.batch, device=args.device, precision=args.precision)
        seconds.append(time.perf_counter() - began)
        row, est = s.bottleneck
        totals = s.totals()
        rows.append(
            f"| {name} | {totals['params']:,} | {human_count(totals['macs_per_example'])} | "
            f"{human_bytes(s.memory.analytic)} | {s.forward_time_s * 1e3:.3f} | "
            f"{s.train_step_time_s * 1e3:.3f} | {s.roofline.memory_bound_fraction:.0%} | "
            f"{row.name} ({row.op}, {est.bound}) | {seconds[-1]:.1f} |"
        )
        records.append(
            {
                "model": name,
                "params": totals["params"],
                "macs_per_example": totals["macs_per_example"],
                "train_memory_bytes": s.memory.analytic,
                "summary_seconds": seconds[-1],
                "batch": args.batch,
                "device": s.device.name,
                "machine": machine,
                "jax": jax.__version__,
            }
        )
        print(rows[-1], flush=True)
    device = s.device
    lines = [
        "# Model summary of the zoo",
        "",
        f"`python benchmarks/summary_zoo.py --batch {args.batch} --device {args.device}"
        + (f" --precision {args.precision}" if args.precision else "")
        + "`, "
        f"jax {jax.__version__} on {machine} ({jax.devices()[0].platform}). Device "
        f"profile {device.name} ({s.roofline.peak_flops / 1e12:g} TFLOP/s, "
        f"{s.roofline.bandwidth / 1e9:,.0f} GB/s); training memory with SGD + momentum, "
        "analytic (parameters, gradients, momentum, BN statistics, input, saved activations); "
        "times are roofline floors (training step = 3x forward). The last column is the wall "
        "time of the summary itself (trace + training-step trace, no compilation) on this "
        f"machine: median {sorted(seconds)[len(seconds) // 2]:.1f} s, max {max(seconds):.1f} s, "
        f"{sum(seconds):.0f} s for all {len(seconds)} models. {args.note}".rstrip(),
        "",
        "| model | params | MACs/image | train memory | forward ms | train step ms | "
        "memory-bound | bottleneck layer | summary s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
        *rows,
    ]
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    define_flags()
    cli.run(main)
