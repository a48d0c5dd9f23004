"""Per-operator convolution speed: forward, input gradient and kernel gradient, three ways.

    nice -n 10 python benchmarks/conv_ops.py                 # writes benchmarks/results/conv_ops.md
    python benchmarks/conv_ops.py --cases 3x3_cifar,depthwise_imagenet --repeats 3 --out /tmp/c.md

For each case: GFLOP/s (2 x MACs of the forward convolution per pass, the same count for each of
the three passes) of cnnjax's oneDNN path (`cnnjax.ext.onednn`, through the XLA FFI), of XLA's
native convolution (`lax.conv_general_dilated` and its JAX gradients) and of PyTorch
(`torch.nn.functional.conv2d` on channels-last tensors, its autograd for the two gradients),
each the median of `--repeats` timed calls after a warm-up, in one process. The input gradient
is `vjp` with respect to the input only, the kernel gradient with respect to the kernel only.
PyTorch is skipped when it is not installed.
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import sys
import time

from absl import flags

from cnnjax import cli
from cnnjax.errors import ConfigError, unknown_choice

DEFAULT_OUT = pathlib.Path(__file__).resolve().parent / "results" / "conv_ops.md"
# name: (N, H, W, C_in, C_out, kernel, stride, groups)
CASES = {
    "3x3_resnet20_stage1": (128, 32, 32, 16, 16, 3, 1, 1),
    "3x3_resnet20_stage3": (128, 8, 8, 64, 64, 3, 1, 1),
    "3x3_cifar": (128, 32, 32, 64, 64, 3, 1, 1),
    "3x3_strided_cifar": (128, 32, 32, 32, 64, 3, 2, 1),
    "1x1_cifar": (128, 16, 16, 128, 128, 1, 1, 1),
    "depthwise_cifar": (128, 32, 32, 96, 96, 3, 1, 96),
    "grouped_cifar": (128, 16, 16, 128, 128, 3, 1, 8),
    "3x3_imagenet": (16, 56, 56, 64, 64, 3, 1, 1),
    "7x7_stem_imagenet": (16, 224, 224, 3, 64, 7, 2, 1),
    "1x1_imagenet": (16, 28, 28, 256, 512, 1, 1, 1),
    "depthwise_imagenet": (16, 112, 112, 32, 32, 3, 1, 32),
}


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: compilation and kernel generation
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def jax_passes(conv, x, w) -> dict:
    import jax  # heavy imports after the command line's errors are reported (also in main)
    import jax.numpy as jnp

    forward = jax.jit(conv)
    y = forward(x, w)
    dy = jnp.ones_like(y)
    input_grad = jax.jit(lambda x, w, dy: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0])
    kernel_grad = jax.jit(lambda x, w, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0])
    return {
        "forward": lambda: jax.block_until_ready(forward(x, w)),
        "input_grad": lambda: jax.block_until_ready(input_grad(x, w, dy)),
        "kernel_grad": lambda: jax.block_until_ready(kernel_grad(x, w, dy)),
    }


def torch_passes(torch, n, h, w_, cin, cout, k, stride, groups) -> dict:
    from torch.nn import functional as F

    pad = k // 2
    x = torch.randn(n, cin, h, w_).contiguous(memory_format=torch.channels_last)
    w = torch.randn(cout, cin // groups, k, k).contiguous(memory_format=torch.channels_last)
    xg, wg = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    dy = torch.ones_like(F.conv2d(x, w, None, stride, pad, 1, groups))

    def forward():
        with torch.inference_mode():
            F.conv2d(x, w, None, stride, pad, 1, groups)

    def input_grad():
        torch.autograd.grad(F.conv2d(xg, w, None, stride, pad, 1, groups), xg, dy)

    def kernel_grad():
        torch.autograd.grad(F.conv2d(x, wg, None, stride, pad, 1, groups), wg, dy)

    # Autograd's timings include the forward pass they differentiate; measure it and subtract.
    def forward_with_grad():
        with torch.enable_grad():
            F.conv2d(xg, wg, None, stride, pad, 1, groups)

    return {
        "forward": forward,
        "input_grad": input_grad,
        "kernel_grad": kernel_grad,
        "forward_with_grad": forward_with_grad,
    }


def define_flags() -> None:
    """The command's flags (defined when it runs, so that importing this module defines none)."""
    flags.DEFINE_list("cases", list(CASES), "Comma-separated names of CASES.")
    flags.DEFINE_integer("repeats", 5, "Timed calls per pass (the median is reported).")
    flags.DEFINE_string("out", str(DEFAULT_OUT), "Markdown table.")


def main() -> int:
    args = flags.FLAGS
    unknown = [name for name in args.cases if name not in CASES]
    if unknown:
        raise ConfigError(unknown_choice("case", unknown[0], CASES))
    import jax  # heavy imports after the command line's errors are reported
    from jax import lax

    from cnnjax.ext import onednn

    try:
        import torch

        torch.set_num_threads(os.cpu_count())
    except ImportError:
        torch = None
    from cnnjax.analysis.devices import host_description

    machine = host_description()
    rows, records = [], []
    for name in args.cases:
        n, h, w_, cin, cout, k, stride, groups = CASES[name]
        pads = ((k // 2, k // 2),) * 2
        out = (h + 2 * (k // 2) - k) // stride + 1
        flops = 2 * n * out * out * cout * k * k * cin // groups
        key = jax.random.split(jax.random.key(0))
        x = jax.random.normal(key[0], (n, h, w_, cin))
        w = jax.random.normal(key[1], (k, k, cin // groups, cout))

        def native(x, w, stride=stride, pads=pads, groups=groups):
            return lax.conv_general_dilated(
                x,
                w,
                (stride, stride),
                pads,
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                feature_group_count=groups,
            )

        def ours(x, w, stride=stride, pads=pads, groups=groups):
            return onednn.conv2d(x, w, (stride, stride), pads, (1, 1), groups)

        impls = {"xla": jax_passes(native, x, w)}
        if onednn.available():
            impls["onednn"] = jax_passes(ours, x, w)
        seconds = {
            impl: {p: median_seconds(f, args.repeats) for p, f in passes.items()}
            for impl, passes in impls.items()
        }
        if torch is not None:
            passes = torch_passes(torch, n, h, w_, cin, cout, k, stride, groups)
            t = {p: median_seconds(f, args.repeats) for p, f in passes.items()}
            base = t.pop("forward_with_grad")
            seconds["torch"] = {
                "forward": t["forward"],
                "input_grad": max(t["input_grad"] - base, 1e-9),
                "kernel_grad": max(t["kernel_grad"] - base, 1e-9),
            }
        cells = []
        for p in ("forward", "input_grad", "kernel_grad"):
            rates = {impl: flops / s[p] / 1e9 for impl, s in seconds.items()}
            cells.append(
                " / ".join(
                    f"{rates[i]:.1f}" if i in rates else "-" for i in ("onednn", "xla", "torch")
                )
            )
        shape = f"{n}x{h}x{w_}x{cin} -> {cout}, {k}x{k}/{stride}, groups {groups}"
        rows.append(f"| {name} | {shape} | {flops / 1e9:.2f} | " + " | ".join(cells) + " |")
        records.append(
            {
                "case": name,
                "shape": [n, h, w_, cin, cout, k, stride, groups],
                "flops": flops,
                "seconds": seconds,
                "machine": machine,
                "jax": jax.__version__,
                "torch": torch.__version__ if torch else None,
            }
        )
        print(rows[-1], flush=True)
    lines = [
        "# Convolution passes: GFLOP/s of oneDNN (cnnjax.ext) / XLA native / PyTorch",
        "",
        f"`python benchmarks/conv_ops.py --repeats {args.repeats}`: jax {jax.__version__}, "
        f"oneDNN {onednn.version() if onednn.available() else 'unavailable'}, torch "
        f"{torch.__version__ if torch else 'not installed'} (channels-last), "
        f"{machine}; median of {args.repeats} calls. "
        "Each cell: cnnjax's oneDNN path / XLA's native convolution / PyTorch. PyTorch's "
        "gradient times are autograd's time minus the forward pass it records.",
        "",
        "| case | shape | GFLOP per pass | forward | input gradient | kernel gradient |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
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
