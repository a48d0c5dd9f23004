"""One report per model: the layer table, costs, training memory and a roofline estimate.

`summarize("resnet50", batch=32, device="a100")` joins what the other analysis modules compute:

* `trace.trace_model`: one row per layer (shapes, window, params, MACs, FLOPs, activation bytes,
  receptive field) at batch `B`;
* `roofline.estimate_layers`: per row, bytes moved (input + own parameters + output, once
  each: `roofline.layer_bytes_moved`), arithmetic intensity and the roofline time on a device
  profile (`devices`), for the forward pass at batch `B`;
* `memory.training_memory`: parameters, gradients, optimizer state, BN statistics, input and
  saved activations of one training step at batch `B` (analytic; `compile_memory=True` adds
  XLA's `memory_analysis()` of the compiled step, which takes minutes for ImageNet models).

Conventions of the time estimates. The forward time is the sum of the rows' roofline times,
layers one after another. Ops outside rows (activations, bias and residual adds) are assumed
fused into their neighbours and cost no traffic, which is what XLA does on GPU and TPU. The
training step is estimated as 3x the forward time: the backward pass of a conv or dense layer
computes two products of the forward's size (gradients with respect to input and weights) and
moves about twice its traffic. These are floors: real kernels reach 50-80% of either roof.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import numpy as np

from cnnjax.analysis.devices import DeviceProfile, get_device, measure_device
from cnnjax.analysis.layer_table import (
    LayerRow,
    LayerTable,
    elide,
    format_cell,
    html_table,
    text_table,
)
from cnnjax.analysis.memory import TrainingMemory, training_memory
from cnnjax.analysis.roofline import LayerEstimate, RooflineReport, estimate_layers
from cnnjax.analysis.trace import trace_model
from cnnjax.errors import ConfigError

__all__ = ["ModelSummary", "summarize", "TRAIN_STEP_FACTOR"]

# Training step time / forward time in the estimate (see the module docstring).
TRAIN_STEP_FACTOR = 3.0
COLUMNS = (
    *"name op input output kernel stride dilation groups".split(),  # the layer
    *"params macs flops act_bytes".split(),  # its costs
    *"rf jump start".split(),  # its receptive field
    *"flop/byte time_us bound".split(),  # the roofline estimate
)


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    """ "32,32,3" -> (32, 32, 3); None stays None."""
    if text is None:
        return None
    try:
        shape = tuple(int(x) for x in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise ConfigError(f"--input={text!r} is not a shape: give positive sizes, e.g. 224,224,3")
    return shape


def human_bytes(n: float) -> str:
    """Bytes in binary units: 1536 -> "1.50 KiB"."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:,.0f} B" if unit == "B" else f"{n:,.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_count(n: float) -> str:
    """Counts with SI prefixes: 4_089_184_256 -> "4.09 G"."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:g}"


def _shape(shape: tuple) -> str:
    """A shape without its batch axis: (8, 32, 32, 3) -> "32x32x3"."""
    return "x".join(map(str, shape[1:])) if shape else "-"


def bytes_moved(row: LayerRow) -> int:
    """Bytes a row moves: its input, its own parameters and its output, once each."""
    itemsize = np.dtype(row.dtype).itemsize
    elements = np.prod(row.input_shape or row.output_shape) + row.params + np.prod(row.output_shape)
    return int(elements) * itemsize


@dataclasses.dataclass
class ModelSummary:
    """What `summarize` returns; `str()` renders it, `to_dict()` gives plain data (JSON).

    Attributes:
      table: the per-layer `LayerTable` at batch `batch`.
      batch: examples per step.
      device: the `DeviceProfile` of the roofline estimate.
      precision: the device peak used (None: float32 where listed).
      roofline: per-row forward estimates, in the order of `table.rows`.
      memory: training memory of one step (None for a module not in the registry).
    """

    table: LayerTable
    batch: int
    device: DeviceProfile
    precision: str | None
    roofline: RooflineReport
    memory: TrainingMemory | None

    @property
    def forward_time_s(self) -> float:
        return self.roofline.total_time_s

    @property
    def train_step_time_s(self) -> float:
        return TRAIN_STEP_FACTOR * self.roofline.total_time_s

    @property
    def bottleneck(self) -> tuple[LayerRow, LayerEstimate]:
        """The row with the longest estimated time, and its estimate."""
        k = max(range(len(self.roofline.layers)), key=lambda i: self.roofline.layers[i].time_s)
        return self.table.rows[k], self.roofline.layers[k]

    def totals(self) -> dict[str, Any]:
        """Per-model totals; MACs and FLOPs per example and for the batch."""
        t = self.table
        return {
            "params": t.params,
            "macs_per_example": t.macs // self.batch,
            "flops_per_example": t.flops // self.batch,
            "macs": t.macs,
            "flops": t.flops,
            "other_flops": t.other_flops,
            "activation_bytes": t.activation_bytes,
        }

    def to_dict(self) -> dict[str, Any]:
        row, est = self.bottleneck
        layers = [
            {
                **dataclasses.asdict(r),
                **{k: v for k, v in dataclasses.asdict(e).items() if k not in ("name", "flops")},
            }
            for r, e in zip(self.table.rows, self.roofline.layers)
        ]
        out = {
            "model": self.table.model,
            "input_shape": list(self.table.input_shape[1:]),
            "batch": self.batch,
            "totals": self.totals(),
            "device": {
                "name": self.device.name,
                "precision": self.precision,
                "peak_flops": self.roofline.peak_flops,
                "memory_bandwidth": self.roofline.bandwidth,
                "source": self.device.source,
            },
            "roofline": {
                "forward_time_s": self.forward_time_s,
                "train_step_time_s": self.train_step_time_s,
                "train_step_factor": TRAIN_STEP_FACTOR,
                "memory_bound_fraction": self.roofline.memory_bound_fraction,
                "bottleneck": {"name": row.name, "op": row.op, **dataclasses.asdict(est)},
            },
            "training_memory": None,
            "outputs": {k: dataclasses.asdict(v) for k, v in self.table.outputs.items()},
            "unused_params": dict(self.table.unused_params),
            "layers": layers,
        }
        if self.memory is not None:
            m = self.memory
            out["training_memory"] = {
                "optimizer": m.optimizer,
                "params": m.params,
                "grads": m.grads,
                "optimizer_state": m.optimizer_state,
                "batch_stats": m.batch_stats,
                "inputs": m.inputs,
                "activations": m.activations,
                "total": m.analytic,
                "xla_total": None if m.xla is None else m.xla.total,
            }
        return out

    def _cells(self) -> list[list[str]]:
        cells = []
        for r, e in zip(self.table.rows, self.roofline.layers):
            values = [
                r.name,
                r.op,
                _shape(r.input_shape),
                _shape(r.output_shape),
                r.kernel,
                r.stride,
                r.dilation,
                r.groups,
                r.params,
                r.macs,
                r.flops,
                r.activation_bytes,
                "global" if r.rf_global else r.rf,
                r.jump,
                r.start,
                f"{e.intensity:.1f}",
                f"{e.time_s * 1e6:.2f}",
                e.bound,
            ]
            cells.append([v if isinstance(v, str) else format_cell(v) for v in values])
        return cells

    def report(self) -> list[str]:
        """The totals as lines of text (what follows the table)."""
        t, b = self.totals(), self.batch
        row, est = self.bottleneck
        peak = self.roofline.peak_flops
        lines = [
            f"model        {self.table.model}, input {_shape(self.table.input_shape)}"
            f", batch {b} (table: shapes per example; MACs, FLOPs, bytes and times per batch)",
            f"params       {t['params']:,} ({human_bytes(4 * t['params'])} as float32)",
            f"MACs         {t['macs_per_example']:,} per example "
            f"({human_count(t['macs_per_example'])}); FLOPs {t['flops_per_example']:,} per "
            "example (2 per MAC in conv/dense + pools, "
            f"norms and {t['other_flops'] // b:,} elementwise)",
            f"activations  {human_bytes(t['activation_bytes'])} summed over the layers' outputs "
            f"at batch {b} (not a peak)",
        ]
        if self.memory is not None:
            m = self.memory
            parts = [
                ("params", m.params),
                ("grads", m.grads),
                (f"{m.optimizer} state", m.optimizer_state),
                ("BN stats", m.batch_stats),
                ("input", m.inputs),
                ("saved activations", m.activations),
            ]
            detail = " + ".join(f"{k} {human_bytes(v)}" for k, v in parts if v)
            lines.append(f"train memory {human_bytes(m.analytic)} at batch {b} = {detail}")
            if m.xla is not None:
                xla = human_bytes(m.xla.total)
                lines.append(
                    f"             XLA memory_analysis of the train step: {xla} "
                    f"(analytic / XLA {m.ratio:.2f})"
                )
        lines += [
            f"device       {self.device.name}: {peak / 1e12:g} TFLOP/s "
            f"({self.precision or 'float32'}), {self.roofline.bandwidth / 1e9:,.0f} GB/s, "
            f"ridge {peak / self.roofline.bandwidth:.1f} FLOP/byte",
            f"roofline     forward {self.forward_time_s * 1e3:.3f} ms, training step ~"
            f"{self.train_step_time_s * 1e3:.3f} ms ({TRAIN_STEP_FACTOR:g}x forward); "
            f"{self.roofline.memory_bound_fraction:.0%} of the time in memory-bound layers",
            f"bottleneck   {row.name} ({row.op}): {est.time_s * 1e6:.2f} us, {est.bound}-bound, "
            f"{est.intensity:.1f} FLOP/byte",
        ]
        return lines

    def render(self, max_rows: int | None = None) -> str:
        """The layer table (middle rows elided beyond `max_rows`) and the totals."""
        table = text_table(list(COLUMNS), elide(self._cells(), max_rows))
        return table + "\n" + "\n".join(self.report())

    def __str__(self) -> str:
        return self.render()

    def _repr_html_(self) -> str:
        return html_table(list(COLUMNS), self._cells(), " | ".join(self.report()))


def summarize(
    model: str | nn.Module,
    input_shape: tuple[int, ...] | None = None,
    batch: int = 1,
    device: str | DeviceProfile = "a100",
    precision: str | None = None,
    optimizer: str = "sgd",
    memory: bool = True,
    compile_memory: bool = False,
) -> ModelSummary:
    """Layer table, totals, training memory and roofline estimate of a model.

    Args:
      model: a registry name (`cnnjax.models.list_models()`) or a Linen module (then
        `input_shape` is required and there is no training-memory estimate).
      input_shape: one example's shape `(H, W, C)` or `(L, C)`; default: the model's.
      batch: batch size of the trace, the memory estimate and the roofline.
      device: a device profile or its name (`devices.list_devices(aliases=True)`), or
        "measured" to measure this machine (`devices.measure_device`, a few seconds).
      precision: which peak of the device (default float32 where listed).
      optimizer: "sgd" (momentum 0.9), "adam" or "adamw", for the optimizer state.
      memory: estimate training memory (traces one training step, abstractly).
      compile_memory: also compile the train step for XLA's memory analysis (slow).

    Raises:
      ConfigError: unknown model, device, precision or optimizer, or a module without
        `input_shape`.
      ShapeError: the input is too small for the architecture.
    """
    if isinstance(device, str):
        profile = measure_device() if device == "measured" else get_device(device)
    else:
        profile = device
    profile.peak(precision)  # an unknown precision fails before any tracing
    table = trace_model(model, input_shape, batch=batch)
    roofline = estimate_layers(
        [(r.name, r.flops, bytes_moved(r)) for r in table.rows], profile, precision
    )
    mem = None
    if memory and isinstance(model, str):
        shape = tuple(table.input_shape[1:])
        mem = training_memory(model, batch, optimizer, compile=compile_memory, input_shape=shape)
    return ModelSummary(table, batch, profile, precision, roofline, mem)
