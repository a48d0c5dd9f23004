"""Compresses a trained run into a file: `python -m cnnjax.compress`.

  python -m cnnjax.compress --model=lenet300_100 --checkpoint=runs/mlp --method=prune_share \
      --sparsity=0.9 --bits=5 --out=mlp.cnnz

Reads the run's latest (or `--which=best`) checkpoint, checks that it is a checkpoint of
`--model`, applies `--method` without retraining ("none": the weights as they are, losslessly;
"prune": magnitude pruning of every kernel to `--sparsity`, per layer or `--scope=global`;
"share": k-means weight sharing with `--bits`-bit codebooks, linear init; "prune_share": both;
"prune_filters": the `--sparsity` fraction of the filters of every layer but the classifier with
the smallest L1 norms, Li et al. 2017). `--compact` then takes the zero filters out
(`cnnjax.compress.compact.make_compact`: a smaller dense model of the same family, its new width
fields stored in the file, so `python -m cnnjax.bench --variables FILE --compare parent` measures
it against the dense model). It writes the compressed file (`cnnjax.compress.save`: relative
sparse indices, Huffman coding) and prints the per-layer table and the compression rate (4
bytes x every parameter / the file's size). Retraining after pruning and sharing, which recovers
the accuracy, is the training loop's `prune` and `share` sections
(experiments/deep_compression.py).
"""

from __future__ import annotations

import json
import os

from absl import flags

from cnnjax import cli
from cnnjax.errors import CheckpointError, ConfigError, DataError, unknown_choice

METHODS = ("none", "prune", "share", "prune_share", "prune_filters")
SCOPES = ("layer", "global")
WHICH = ("latest", "best")


def define_flags() -> None:
    """The command's flags (defined when it runs, so that importing this module defines none)."""
    flags.DEFINE_string("model", None, "Registry name of the model the checkpoint holds.")
    flags.DEFINE_string("checkpoint", None, "Run folder (a training workdir).")
    flags.DEFINE_string("method", None, f"One of {', '.join(METHODS)}.")
    flags.DEFINE_string("out", None, "Path of the compressed file to write.")
    flags.DEFINE_float("sparsity", 0.9, "Fraction of each kernel's weights pruned, in [0, 1).")
    flags.DEFINE_string("scope", "layer", "Pruning threshold per 'layer' or 'global'.")
    flags.DEFINE_integer("bits", 5, "Codebook bits per shared kernel, >= 1.")
    flags.DEFINE_integer("index_bits", 0, "Relative-index bits; 0 = each layer's best width.")
    flags.DEFINE_string("which", "latest", "Checkpoint: 'latest' or 'best'.")
    flags.DEFINE_bool("compact", False, "Take zero filters out: a smaller model of the family.")


def check_arguments(values: dict) -> None:
    """Every flag's value checked before anything is read or written.

    Raises:
      ConfigError: an unknown method, scope or checkpoint kind, a sparsity outside [0, 1), bits
        or index_bits out of range.
      DataError: an `--out` whose folder does not exist.
    """
    for name, choices in (("method", METHODS), ("scope", SCOPES), ("which", WHICH)):
        if values[name] not in choices:
            raise ConfigError(unknown_choice(f"--{name}", values[name], choices))
    if "prune" in values["method"] and not 0 <= values["sparsity"] < 1:
        raise ConfigError(f"--sparsity must be in [0, 1), got {values['sparsity']!r}")
    if "share" in values["method"] and not 1 <= values["bits"] <= 16:
        raise ConfigError(f"--bits must be an integer in [1, 16], got {values['bits']!r}")
    if not 0 <= values["index_bits"] <= 16:
        raise ConfigError(
            f"--index_bits must be in [0, 16] (0 = each layer's best), got {values['index_bits']}"
        )
    folder = os.path.dirname(os.path.abspath(values["out"]))
    if not os.path.isdir(folder):
        raise DataError(f"cannot write --out={values['out']}: {folder} is not a folder")


def read_run(model_name: str, workdir: str, which: str):
    """`(saved config, variables)` of a run folder, refused if it trained another model."""
    from cnnjax import models
    from cnnjax.layers.components import resolve_components
    from cnnjax.train.state import init_variables
    from cnnjax.train.transfer import merge_variables, read_checkpoint

    info = models.model_info(model_name)  # an unknown name: one error line with the choices
    saved_path = os.path.join(workdir, "config.json")
    if not os.path.isfile(saved_path):
        raise CheckpointError(f"--checkpoint: {saved_path} does not exist (a run folder?)")
    with open(saved_path) as f:
        saved = json.load(f)
    if saved["model"] != model_name:
        raise CheckpointError(
            f"--checkpoint={workdir} is a checkpoint of {saved['model']!r}, not of "
            f"--model={model_name!r}"
        )
    from cnnjax.data import dataset_spec

    spec = dataset_spec(saved["dataset"])
    model = models.create_model(
        model_name, num_classes=spec.num_classes, **resolve_components(saved["model_kwargs"])
    )
    input_shape = tuple(saved.get("input_shape") or ()) or info.input_shape
    loaded, _ = read_checkpoint(workdir, which, field="--checkpoint")
    fresh = init_variables(model, input_shape, 0)
    variables = merge_variables(fresh, loaded, (), source=workdir)  # refuses other shapes
    return saved, spec, input_shape, variables


def compress_params(params, method: str, sparsity: float, scope: str, bits: int, producers=()):
    """The params after `method` (no retraining) and the codebook bits to store them with;
    "prune_filters" prunes the filters of the `producers` (the layers whose outputs another
    layer reads: not the classifier)."""
    from cnnjax.compress import prune, quantize

    if method == "prune_filters":
        sparsities = {f"{name}/kernel": sparsity for name in producers}
        return prune.apply_masks(params, prune.filter_masks(params, sparsities)), None
    if "prune" in method:
        sparsities = prune.layer_sparsities(params, sparsity)
        params = prune.apply_masks(params, prune.magnitude_masks(params, sparsities, scope))
    if "share" in method:
        params, _ = quantize.share_params(params, bits)
        return params, bits
    return params, None


def layer_table(report: list[dict]) -> str:
    """One line per stored array: name, shape, weights, kept, encoding, bytes, rate."""
    from cnnjax.analysis.layer_table import text_table

    rows = []
    for entry in report:
        stored = sum(entry["bytes"].values())
        rows.append(
            [
                entry["name"],
                "x".join(map(str, entry["shape"])) or "scalar",
                f"{entry['weights']:,}",
                f"{100 * entry['nonzero'] / max(entry['weights'], 1):.1f}%",
                entry["encoding"],
                f"{stored:,}",
                f"{4 * entry['weights'] / max(stored, 1):.1f}x",
            ]
        )
    header = ["array", "shape", "weights", "kept", "encoding", "bytes", "rate"]
    return text_table(header, rows)


def main() -> None:
    values = {name: flags.FLAGS[name].value for name in (
        "model", "checkpoint", "method", "out", "sparsity", "scope", "bits", "index_bits", "which",
        "compact",
    )}  # fmt: skip
    check_arguments(values)
    from cnnjax import models
    from cnnjax.compress import compact, fileformat
    from cnnjax.layers.components import resolve_components
    from cnnjax.train.loop import channel_stats

    saved, spec, input_shape, variables = read_run(
        values["model"], values["checkpoint"], values["which"]
    )
    module = models.create_model(
        values["model"],
        num_classes=spec.num_classes,
        **resolve_components(saved["model_kwargs"]),
    )
    producers = ()
    if values["method"] == "prune_filters" or values["compact"]:
        if not compact.compactable(module):
            compact.make_compact(module, variables)  # raises, naming the families it knows
        producers = compact.producers(module)
    params, bits = compress_params(
        variables["params"],
        values["method"],
        values["sparsity"],
        values["scope"],
        values["bits"],
        producers,
    )
    fields = dict(saved["model_kwargs"])
    variables = {**variables, "params": params}
    if values["compact"]:
        widths, variables, widths_report = compact.make_compact(module, variables)
        fields.update(widths)
        for row in widths_report:
            print(
                f"{row['layer']}: {row['kept']} of {row['width']} units kept"
                + ("" if row["exact"] else " (removed constants folded away from the border)")
            )
        params = variables["params"]
    mean, std = channel_stats(spec, input_shape[-1])
    data = saved.get("data", {})
    report = fileformat.save(
        values["out"],
        values["model"],
        variables,
        model_fields=fields,
        num_classes=spec.num_classes,
        input_shape=input_shape,
        preprocess={
            "mean": list(mean),
            "std": list(std),
            "normalize": data.get("normalize", True),
            "fit": data.get("fit") or spec.fit,
        },
        bits=bits,
        index_bits=values["index_bits"] or None,
    )
    print(layer_table(report))
    size = os.path.getsize(values["out"])
    print(
        f"{values['out']}: {size:,} bytes, compression rate "
        f"{fileformat.compression_rate(values['out']):.1f}x against float32 parameters"
    )


if __name__ == "__main__":
    define_flags()
    cli.run(main, required=["model", "checkpoint", "method", "out"])
