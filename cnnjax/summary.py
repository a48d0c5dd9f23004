"""Per-layer table and totals of a registry model, from the command line.

  python -m cnnjax.summary --model resnet50 [--input 224,224,3] [--batch 32] [--device a100]
      [--precision tf32] [--optimizer sgd] [--max_rows 30] [--xla_memory] [--json]

Prints one row per layer (shapes, window, params, MACs, FLOPs, activation bytes, receptive
field, arithmetic intensity, roofline time, bound) and the totals: params, MACs and FLOPs per
example, training memory at the batch size, roofline forward and training-step time on the
device and the bottleneck layer. `--json` prints the same as one JSON object. From Python or a
notebook: `cnnjax.analysis.summary.summarize(...)` returns the `ModelSummary` this prints.
Errors in the input (unknown model or device, an input too small for the architecture) print
one `error:` line and exit with status 2.
"""

import json

from absl import flags

from cnnjax import cli


def define_flags() -> None:
    """The command's flags (defined when it runs, so that importing this module defines none)."""
    flags.DEFINE_string("model", None, "Registry name (cnnjax.models.list_models()).")
    flags.DEFINE_string("input", None, "One example's shape, H,W,C (or L,C); default: the model's.")
    flags.DEFINE_integer(
        "batch", 1, "Batch size of the table, the memory and the roofline.", lower_bound=1
    )
    flags.DEFINE_string("device", "a100", "Device profile or alias, or 'measured' (this machine).")
    flags.DEFINE_string("precision", None, "Device peak: float32 (default), tf32, bf16, fp16.")
    flags.DEFINE_string("optimizer", "sgd", "Optimizer of the memory estimate: sgd, adam, adamw.")
    flags.DEFINE_integer("max_rows", None, "Elide the middle of longer tables.", lower_bound=1)
    flags.DEFINE_bool(
        "xla_memory", False, "Also compile the train step for XLA's memory analysis (slow)."
    )
    flags.DEFINE_bool("json", False, "Print one JSON object instead of the text report.")


def main() -> None:
    from cnnjax.analysis.summary import parse_shape, summarize  # heavy imports after flag errors

    f = flags.FLAGS
    result = summarize(
        f.model,
        input_shape=parse_shape(f.input),
        batch=f.batch,
        device=f.device,
        precision=f.precision,
        optimizer=f.optimizer,
        compile_memory=f.xla_memory,
    )
    print(json.dumps(result.to_dict()) if f.json else result.render(f.max_rows))


if __name__ == "__main__":
    define_flags()
    cli.run(main, required=["model"])
