"""Speed and memory of the memory-efficient DenseNet against the default, measured side by side.

    python benchmarks/memory_efficient_densenet.py [--model densenet_bc_100 --batch 64]

Compiles both training steps (`memory_efficient=False/True`), reads XLA's memory analysis of
each and times them in alternating windows (`cnnjax.bench.median_ips`), and prints the analytic
saved activations (`cnnjax.analysis.memory.training_memory`). The README's analysis section quotes
its results on this machine.
"""

from __future__ import annotations

from absl import flags

from cnnjax import bench, cli


def define_flags() -> None:
    """The command's flags (defined when it runs, so that importing this module defines none)."""
    flags.DEFINE_string("model", "densenet_bc_100", "A DenseNet of the registry.")
    flags.DEFINE_integer("batch", 64, "Images per step.", lower_bound=1)
    flags.DEFINE_integer("windows", 5, "Timed windows (the median is reported).")
    flags.DEFINE_integer("steps", 3, "Steps per timed window.")


def main() -> int:
    from cnnjax import models  # heavy imports after the command line's errors are reported
    from cnnjax.analysis.memory import training_memory

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
    ips = bench.median_ips(runners, args.batch, args.windows, args.steps)
    print(f"{args.model}, batch {args.batch}, training step (SGD momentum):")
    for efficient in (False, True):
        f = facts[efficient]
        print(
            f"  memory_efficient={efficient!s:5}: {ips[efficient]:7.1f} img/s, XLA step memory "
            f"{f['xla_train_step_bytes'] / 2**20:8.1f} MiB, analytic saved activations "
            f"{f['saved_activations_mib']:8.1f} MiB, compile {f['compile_s']:.1f} s"
        )
    print(f"  speed ratio efficient / default: {ips[True] / ips[False]:.2f}")
    return 0


if __name__ == "__main__":
    define_flags()
    cli.run(main)
