"""Speed and memory of the memory-efficient DenseNet against the default, measured side by side.

    python benchmarks/memory_efficient_densenet.py [--model densenet_bc_100 --batch 64]

Compiles both training steps (`memory_efficient=False/True`), reads XLA's memory analysis of
each and times them in alternating windows (`cnnjax.bench.median_ips`), and prints the analytic
saved activations (`cnnjax.analysis.memory.training_memory`); `--repeats` times the pair again
for the run-to-run spread. Writes `benchmarks/results/memory_efficient_densenet.json`, which the
README's analysis section quotes (tests/test_readme_records.py checks it does).
"""

from __future__ import annotations

import datetime
import pathlib

from absl import flags

from cnnjax import bench, cli

DEFAULT_OUT = pathlib.Path(__file__).resolve().parent / "results" / "memory_efficient_densenet.json"


def define_flags() -> None:
    """The command's flags (defined when it runs, so that importing this module defines none)."""
    flags.DEFINE_string("model", "densenet_bc_100", "A DenseNet of the registry.")
    flags.DEFINE_integer("batch", 64, "Images per step.", lower_bound=1)
    flags.DEFINE_integer("windows", 5, "Timed windows (the median is reported).", lower_bound=1)
    flags.DEFINE_integer("steps", 3, "Steps per timed window.", lower_bound=1)
    flags.DEFINE_integer("repeats", 2, "Timed comparisons (run-to-run spread).", lower_bound=1)
    flags.DEFINE_string("out", str(DEFAULT_OUT), "JSON record of the measurements.")


def main() -> int:
    import jax  # heavy imports after the command line's errors are reported

    from cnnjax import models
    from cnnjax.analysis.devices import host_description
    from cnnjax.analysis.memory import training_memory
    from cnnjax.train.files import write_json_atomic

    args = flags.FLAGS
    info = models.model_info(args.model)
    shape, classes = tuple(info.input_shape), 10 if info.input_shape[0] == 32 else 1000
    runners, facts = {}, {}
    for efficient in (False, True):
        kwargs = {"memory_efficient": efficient}
        facts[efficient], steps = bench.prepare_jax(
            args.model, shape, args.batch, classes, "auto", model_kwargs=kwargs
        )
        runners[efficient] = steps["train"]
        saved = training_memory(args.model, args.batch, "sgd", compile=False, model_kwargs=kwargs)
        facts[efficient]["saved_activations_mib"] = saved.activations / 2**20
    timings = [
        bench.median_ips(runners, args.batch, args.windows, args.steps) for _ in range(args.repeats)
    ]
    print(f"{args.model}, batch {args.batch}, training step (SGD momentum):")
    for efficient in (False, True):
        f = facts[efficient]
        print(
            f"  memory_efficient={efficient!s:5}: {timings[0][efficient]:7.1f} img/s, XLA step "
            f"memory {f['xla_train_step_bytes'] / 2**20:8.1f} MiB, analytic saved activations "
            f"{f['saved_activations_mib']:8.1f} MiB, compile {f['compile_s']:.1f} s"
        )
    ratios = [ips[True] / ips[False] for ips in timings]
    print(f"  speed ratio efficient / default: {', '.join(f'{r:.2f}' for r in ratios)}")
    record = {
        "command": f"python benchmarks/memory_efficient_densenet.py --model {args.model} "
        f"--batch {args.batch} --windows {args.windows} --steps {args.steps} "
        f"--repeats {args.repeats}",
        "model": args.model,
        "batch": args.batch,
        "machine": host_description(),
        "jax": jax.__version__,
        "date": datetime.date.today().isoformat(),
        "speed_ratios": ratios,
        **{
            f"{'efficient' if efficient else 'default'}_{key}": value
            for efficient in (False, True)
            for key, value in {
                "train_ips": [ips[efficient] for ips in timings],
                "xla_train_step_bytes": facts[efficient]["xla_train_step_bytes"],
                "saved_activations_mib": facts[efficient]["saved_activations_mib"],
                "compile_s": facts[efficient]["compile_s"],
            }.items()
        },
    }
    write_json_atomic(args.out, record)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    define_flags()
    cli.run(main)
