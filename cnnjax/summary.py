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

from absl import app, flags, logging

from cnnjax.errors import CnnjaxError, fail

_MODEL = flags.DEFINE_string("model", None, "Registry name (cnnjax.models.list_models()).")
_INPUT = flags.DEFINE_string(
    "input", None, "One example's shape, H,W,C (or L,C); default: the model's."
)
_BATCH = flags.DEFINE_integer("batch", 1, "Batch size of the table, the memory and the roofline.")
_DEVICE = flags.DEFINE_string(
    "device", "a100", "Device profile or alias, or 'measured' (this machine)."
)
_PRECISION = flags.DEFINE_string(
    "precision", None, "Device peak: float32 (default), tf32, bf16, fp16."
)
_OPTIMIZER = flags.DEFINE_string(
    "optimizer", "sgd", "Optimizer of the memory estimate: sgd, adam, adamw."
)
_MAX_ROWS = flags.DEFINE_integer("max_rows", None, "Elide the middle of longer tables.")
_XLA_MEMORY = flags.DEFINE_bool(
    "xla_memory", False, "Also compile the train step for XLA's memory analysis (slow)."
)
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object instead of the text report.")
flags.mark_flag_as_required("model")


def main(argv):
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # keep jax's backend probing out of the report
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}")
    if _BATCH.value < 1:
        fail(f"--batch={_BATCH.value} must be at least 1")
    from cnnjax.analysis.summary import parse_shape, summarize  # heavy imports after flag errors

    try:
        result = summarize(
            _MODEL.value,
            input_shape=parse_shape(_INPUT.value),
            batch=_BATCH.value,
            device=_DEVICE.value,
            precision=_PRECISION.value,
            optimizer=_OPTIMIZER.value,
            compile_memory=_XLA_MEMORY.value,
        )
    except CnnjaxError as error:
        fail(str(error))
    print(json.dumps(result.to_dict()) if _JSON.value else result.render(_MAX_ROWS.value))


if __name__ == "__main__":
    app.run(main)
