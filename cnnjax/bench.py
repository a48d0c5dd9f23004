"""Training and inference speed of a registry model, optionally against PyTorch in the same run.

  python -m cnnjax.bench --model resnet20 --batch_size 128 [--compare torch|parent] [--json]
      [--input 32,32,3] [--impl auto|xla|onednn] [--windows 5] [--steps 4] [--threads N]
      [--model_fields '{"hidden": [120, 40]}'] [--variables model.cnnz]

`--model_fields` sets module fields of the model (a JSON object, e.g. the widths of a
channel-pruned model made compact); `--variables` runs the parameters of a compressed model file
(`cnnjax.compress.save`, e.g. `python -m cnnjax.compress --compact`), whose model name and fields
come from the file. `--compare parent` also measures the registry model with its default fields
(the dense parent of a compact model) in the same run, with the ratios.

JAX: the repository's jitted `train_step` (state donated, SGD with momentum 0.9, float32 images)
and a jitted eval-mode forward pass. PyTorch (`--compare torch`, needs the `ref` extra): the twin
from `cnnjax.testing.torch_reference` with the same layers and parameter count, channels-last,
SGD with momentum 0.9, `torch.inference_mode` for evaluation, as many threads as JAX has cores.
Each is warmed up (compilation, oneDNN kernel generation, allocator), then timed over `--windows`
windows of `--steps` steps; images/second is the median window's. The windows of the four
measurements (JAX train, PyTorch train, JAX eval, PyTorch eval) alternate, so that a change in
the machine's load during the run affects both sides of each ratio alike. Also reported: the
time of the first train step (compile_s: tracing + XLA compilation + first run), the process's
peak memory once the JAX model is compiled and warmed up, XLA's memory analysis of the train
step, and the achieved GFLOP/s (3x the forward FLOPs per training image, 2x MACs) against this
machine's measured float32 matmul peak.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import statistics
import time

from absl import flags

from cnnjax import cli
from cnnjax.errors import CnnjaxError, ConfigError


def define_flags() -> None:
    """The command's flags (defined when it runs: benchmarks/*.py import this module's functions
    and define flags of their own)."""
    flags.DEFINE_string("model", None, "Registry name.")
    flags.DEFINE_integer("batch_size", 128, "Images per step.")
    flags.DEFINE_string("input", None, "H,W,C (default: the model's input shape).")
    flags.DEFINE_integer(
        "num_classes", None, "Output classes (default: the model's).", lower_bound=1
    )
    flags.DEFINE_enum(
        "compare",
        None,
        ["torch", "parent"],
        "Also measure the PyTorch twin, or the model with its default fields.",
    )
    flags.DEFINE_string("model_fields", None, 'Module fields as JSON, e.g. {"hidden": [64]}.')
    flags.DEFINE_string("variables", None, "A compressed model file (.cnnz) to run.")
    flags.DEFINE_enum("impl", "auto", ["auto", "xla", "onednn"], "Convolution kernels.")
    flags.DEFINE_integer("windows", 5, "Timed windows (the median is reported).")
    flags.DEFINE_integer("steps", 4, "Steps per timed window.")
    flags.DEFINE_integer(
        "threads", None, "PyTorch threads (default: os.cpu_count()).", lower_bound=1
    )
    flags.DEFINE_bool("json", False, "Print one JSON object.")
    flags.DEFINE_alias("batch-size", "batch_size")


def median_ips(runners: dict, batch: int, windows: int, steps: int) -> dict[str, float]:
    """Images/second of each runner: the median of `windows` timed windows of `steps` calls.

    The runners take turns window by window (round robin), so that slow drifts in the machine's
    load are shared between them rather than falling on whichever was measured last.
    """
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(windows):
        for name, run_step in runners.items():
            start = time.perf_counter()
            for _ in range(steps):
                run_step()
            rates[name].append(steps * batch / (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in rates.items()}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def prepare_jax(name, input_shape, batch, num_classes, impl, model_kwargs=None, variables=None):
    """(facts, {"train": step, "eval": forward}) of our model, compiled and warmed up; from
    `variables` (`{"params", "batch_stats"}` of the model) if given, else a fresh init."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from cnnjax import models
    from cnnjax.layers import conv_impl
    from cnnjax.train.optim import make_optimizer
    from cnnjax.train.state import create_train_state, init_variables
    from cnnjax.train.steps import Preprocess, train_step
    from cnnjax.train.transfer import merge_variables

    info = models.model_info(name)
    model = models.create_model(name, num_classes=num_classes, **dict(model_kwargs or {}))
    if variables is not None:  # refused unless every array has the model's shape
        variables = merge_variables(init_variables(model, input_shape, 0), variables)
    tx, _ = make_optimizer({"name": "sgd", "lr": 0.01, "momentum": 0.9}, {"name": "constant"}, 1)
    rng = np.random.default_rng(0)
    data = {
        "image": jnp.asarray(rng.standard_normal((batch, *input_shape), np.float32)),
        "label": jnp.asarray(rng.integers(0, num_classes, batch), jnp.int32),
    }
    channels = input_shape[-1]
    preprocess = Preprocess(mean=(0.0,) * channels, std=(1.0,) * channels)
    with conv_impl(impl, force=True):  # traced (and so fixed) inside the block
        state = create_train_state(model, tx, input_shape, seed=0, variables=variables)
        step = jax.jit(
            functools.partial(train_step, preprocess=preprocess, loss=info.loss), donate_argnums=0
        )
        forward = jax.jit(lambda v, x: model.apply(v, x, train=False)[0])
        start = time.perf_counter()
        compiled = step.lower(state, data).compile()
        state, metrics = compiled(state, data)
        jax.block_until_ready(metrics)
        compile_s = time.perf_counter() - start
        memory = compiled.memory_analysis()
        # Copies: the train step donates (deletes) the state's buffers.
        variables = jax.tree.map(
            jnp.copy, {"params": state.params, "batch_stats": state.batch_stats}
        )
        jax.block_until_ready(forward(variables, data["image"]))

    holder = {"state": state}

    def train():
        holder["state"], out = compiled(holder["state"], data)
        jax.block_until_ready(out["loss"])

    def evaluate():
        jax.block_until_ready(forward(variables, data["image"]))

    for _ in range(2):
        train(), evaluate()
    facts = {
        "params": sum(p.size for p in jax.tree.leaves(state.params)),
        "compile_s": compile_s,
        "xla_train_step_bytes": int(
            memory.argument_size_in_bytes
            + memory.output_size_in_bytes
            - memory.alias_size_in_bytes
            + memory.temp_size_in_bytes
        ),
        "peak_rss_mb": peak_rss_mb(),
    }
    return facts, {"train": train, "eval": evaluate}


def prepare_torch(name, input_shape, batch, num_classes, threads) -> tuple[dict, dict]:
    """(facts, {"train": step, "eval": forward}) of the PyTorch twin, warmed up."""
    import torch

    from cnnjax.testing.torch_reference import create_torch_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create_torch_model(name, num_classes).to(memory_format=torch.channels_last)
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    h, w, c = input_shape
    images = torch.randn(batch, c, h, w).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, num_classes, (batch,))
    loss_fn = torch.nn.CrossEntropyLoss()

    def train():
        if not model.training:
            model.train()
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(images), labels).backward()
        optimizer.step()

    def evaluate():
        if model.training:
            model.eval()
        with torch.inference_mode():
            model(images)

    for _ in range(2):
        train(), evaluate()
    facts = {"params": params, "torch": torch.__version__, "threads": threads}
    return facts, {"train": train, "eval": evaluate}


def _model_source(name, model_fields, variables_path):
    """`(name, fields, variables, num_classes, input_shape)`: from the file if one is given."""
    import json as json_module

    from cnnjax.layers.components import resolve_components

    fields = {}
    if model_fields:
        try:
            fields = json_module.loads(model_fields)
        except ValueError:
            fields = None
        if not isinstance(fields, dict):
            raise ConfigError(
                f"--model_fields={model_fields!r} is not a JSON object of module fields, e.g. "
                "'{\"hidden\": [120, 40]}'"
            )
    if not variables_path:
        return name, resolve_components(fields), None, None, None
    if model_fields:
        raise ConfigError("--model_fields and --variables exclude each other: the file has fields")
    from cnnjax.compress import fileformat

    header, _ = fileformat.read_header(variables_path)
    stored, variables = fileformat.load(variables_path)
    if name is not None and name != stored:
        raise ConfigError(f"--variables={variables_path} holds {stored!r}, not --model={name!r}")
    fields = resolve_components(dict(header.get("model_fields") or {}))
    shape = tuple(header["input_shape"]) if header.get("input_shape") else None
    return stored, fields, variables, header.get("num_classes"), shape


def run(
    name,
    batch,
    input_shape=None,
    compare=None,
    impl="auto",
    windows=5,
    steps=4,
    threads=None,
    num_classes=None,
    model_fields=None,
    variables_path=None,
) -> dict:
    """The benchmark as a dict (what `--json` prints); see the module docstring."""
    import jax

    from cnnjax import models
    from cnnjax.analysis.devices import host_description, measure_device
    from cnnjax.ext import onednn

    for flag, value in (("batch_size", batch), ("windows", windows), ("steps", steps)):
        if value < 1:
            raise ConfigError(f"--{flag}={value} must be at least 1")
    if name is None and not variables_path:
        raise ConfigError("give --model or --variables")
    name, fields, variables, file_classes, file_shape = _model_source(
        name, model_fields, variables_path
    )
    info = models.model_info(name)
    input_shape = models.input_shape_of(name, input_shape or file_shape)
    if num_classes is None:
        num_classes = file_classes or info.num_classes
    ours, jax_runners = prepare_jax(name, input_shape, batch, num_classes, impl, fields, variables)
    runners = {"jax_train": jax_runners["train"]}
    if compare == "torch":
        twin, torch_runners = prepare_torch(
            name, input_shape, batch, num_classes, threads or os.cpu_count()
        )
        runners["torch_train"] = torch_runners["train"]
    elif compare == "parent":
        parent, parent_runners = prepare_jax(name, input_shape, batch, num_classes, impl)
        runners["parent_train"] = parent_runners["train"]
    runners["jax_eval"] = jax_runners["eval"]
    if compare == "torch":
        runners["torch_eval"] = torch_runners["eval"]
    elif compare == "parent":
        runners["parent_eval"] = parent_runners["eval"]
    ips = median_ips(runners, batch, windows, steps)
    from cnnjax.analysis.trace import trace_model

    def macs_of(kwargs):
        model = models.create_model(name, num_classes=num_classes, **kwargs)
        return trace_model(model, input_shape).macs

    macs = macs_of(fields)
    train_flops = 3 * 2 * macs  # forward + input gradient + weight gradient
    peak = measure_device(matmul_size=1024, copy_mib=64, repeats=3).peak()
    result = {
        "model": name,
        "model_fields": {k: v for k, v in fields.items() if _jsonable(v)},
        "variables": variables_path,
        "batch_size": batch,
        "input_shape": list(input_shape),
        "num_classes": num_classes,
        "params": ours["params"],
        "macs": macs,
        "backend": jax.default_backend(),
        "impl": impl,
        "onednn": onednn.version() if onednn.available() else None,
        "jax": jax.__version__,
        "machine": host_description(),
        "jax_train_ips": ips["jax_train"],
        "jax_eval_ips": ips["jax_eval"],
        "compile_s": ours["compile_s"],
        "jax_peak_rss_mb": ours["peak_rss_mb"],
        "xla_train_step_mb": ours["xla_train_step_bytes"] / 2**20,
        "train_gflops": ips["jax_train"] * train_flops / 1e9,
        "matmul_peak_gflops": peak / 1e9,
        "torch_train_ips": None,
        "torch_eval_ips": None,
        "train_ratio": None,
        "eval_ratio": None,
        "parent_train_ips": None,
        "parent_eval_ips": None,
    }
    if compare == "torch":
        result.update(
            torch_train_ips=ips["torch_train"],
            torch_eval_ips=ips["torch_eval"],
            train_ratio=ips["jax_train"] / ips["torch_train"],
            eval_ratio=ips["jax_eval"] / ips["torch_eval"],
            torch=twin["torch"],
            threads=twin["threads"],
            torch_params=twin["params"],
            params_match=twin["params"] == ours["params"],
        )
    elif compare == "parent":
        result.update(
            parent_train_ips=ips["parent_train"],
            parent_eval_ips=ips["parent_eval"],
            parent_train_ratio=ips["jax_train"] / ips["parent_train"],
            parent_eval_ratio=ips["jax_eval"] / ips["parent_eval"],
            parent_params=parent["params"],
            parent_macs=macs_of({}),
        )
    return result


def _jsonable(value) -> bool:
    try:
        json.dumps(value)
    except TypeError:
        return False
    return True


def render(r: dict) -> str:
    lines = [
        f"{r['model']} batch {r['batch_size']} input {'x'.join(map(str, r['input_shape']))} on "
        f"{r['machine']} ({r['backend']}, jax {r['jax']}, conv impl {r['impl']}, oneDNN "
        f"{r['onednn'] or 'unavailable'})",
        f"jax    train {r['jax_train_ips']:8.1f} img/s   eval {r['jax_eval_ips']:8.1f} img/s   "
        f"compile {r['compile_s']:.1f} s   {r['train_gflops']:.1f} GFLOP/s training "
        f"({r['train_gflops'] / r['matmul_peak_gflops']:.0%} of the {r['matmul_peak_gflops']:.0f}"
        f" GFLOP/s matmul peak)   peak RSS {r['jax_peak_rss_mb']:.0f} MB, XLA step "
        f"{r['xla_train_step_mb']:.0f} MB",
    ]
    if r["torch_train_ips"] is not None:
        lines += [
            f"torch  train {r['torch_train_ips']:8.1f} img/s   eval {r['torch_eval_ips']:8.1f} "
            f"img/s   (torch {r['torch']}, {r['torch_params']:,} params, "
            f"{'same count' if r['params_match'] else 'DIFFERENT count'})",
            f"ratio  train {r['train_ratio']:8.2f}x        eval {r['eval_ratio']:8.2f}x",
        ]
    if r["parent_train_ips"] is not None:
        lines += [
            f"parent train {r['parent_train_ips']:8.1f} img/s   eval {r['parent_eval_ips']:8.1f} "
            f"img/s   ({r['parent_params']:,} params, {r['parent_macs']:,} MACs against "
            f"{r['params']:,} and {r['macs']:,}: the registry model's default fields)",
            f"ratio  train {r['parent_train_ratio']:8.2f}x        eval "
            f"{r['parent_eval_ratio']:8.2f}x  (this model over its parent)",
        ]
    return "\n".join(lines)


def main() -> None:
    from cnnjax.analysis.summary import parse_shape  # heavy imports after flag errors

    f = flags.FLAGS
    try:
        result = run(
            f.model,
            f.batch_size,
            parse_shape(f.input),
            f.compare,
            f.impl,
            f.windows,
            f.steps,
            f.threads,
            f.num_classes,
            f.model_fields,
            f.variables,
        )
    except ImportError as error:
        raise CnnjaxError(
            f"{error}; --compare torch needs PyTorch: pip install -e '.[ref]'"
        ) from error
    print(json.dumps(result) if f.json else render(result))


if __name__ == "__main__":
    define_flags()
    cli.run(main)
