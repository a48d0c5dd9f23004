"""The per-layer table that `trace.trace_model` returns: rows, outputs, totals, text/HTML/JSON.

Kept apart from the tracing so that a table saved as JSON (`LayerTable.to_json`) can be loaded and
rendered (`LayerTable.from_json`) without tracing anything.
"""

from __future__ import annotations

import dataclasses
import html
import json
from typing import Any


@dataclasses.dataclass
class LayerRow:
    """One layer. Per-axis fields are one number when the spatial axes agree, else a tuple.

    Attributes:
      name: module path (`stage1_block1/conv1`); see `trace` for ops run as plain functions.
      op: conv, conv_transpose, dense, matmul, max_pool, avg_pool, min_pool, window_pool,
        global_avg_pool, global_max_pool, global_min_pool, norm or elementwise.
      module: class of the module that ran the op.
      input_shape, output_shape: activation shapes, batch included.
      dtype: output dtype.
      kernel, stride, dilation, groups, padding: window of a conv or pool (None otherwise);
        padding is `((before, after), ...)` per spatial axis.
      params: parameters the module owns directly (counted on its first row only).
      macs, flops: multiply-accumulates and floating-point operations, see `trace`.
      activation_bytes: output elements times dtype size.
      rf, jump, start: receptive field size, effective stride and centre of output 0's RF in
        input pixels; `rf_global` marks an output that depends on the whole input (`rf` is then
        the input size, `jump` and `start` None); all None where the output resolves no input
        axis (an input without spatial axes).
    """

    name: str
    op: str
    module: str
    input_shape: tuple
    output_shape: tuple
    dtype: str
    kernel: Any = None
    stride: Any = None
    dilation: Any = None
    groups: int | None = None
    padding: Any = None
    params: int = 0
    macs: int = 0
    flops: int = 0
    activation_bytes: int = 0
    rf: Any = None
    jump: Any = None
    start: Any = None
    rf_global: bool = False


@dataclasses.dataclass
class TensorInfo:
    """Shape and receptive field of one model output (the logits, or a named intermediate)."""

    shape: tuple
    dtype: str
    rf: Any = None
    jump: Any = None
    start: Any = None
    rf_global: bool = False


def _tuples(value):
    """JSON lists back to the tuples they were (no field holds a real list)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def format_cell(value) -> str:
    """One table cell: "-" for None, "AxB" for tuples, thousands separators for ints."""
    if value is None:
        return "-"
    if isinstance(value, tuple):
        return "x".join(str(v) if isinstance(v, int) else format_cell(v) for v in value)
    if isinstance(value, str | bool):
        return str(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def text_table(header: list[str], cells: list[list[str]], left: int = 2) -> str:
    """Aligned columns: the first `left` left-aligned (names), the rest right-aligned (numbers).

    Returns the header, a rule, one line per row and a closing rule.
    """
    widths = [max(len(x) for x in col) for col in zip(header, *cells)]

    def line(row):
        return "  ".join(
            x.ljust(w) if i < left else x.rjust(w) for i, (x, w) in enumerate(zip(row, widths))
        ).rstrip()

    rule = "-" * len(line(header))
    return "\n".join([line(header), rule, *map(line, cells), rule])


def html_table(header: list[str], cells: list[list[str]], caption: str) -> str:
    """The same table as HTML (what notebooks display)."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(x)}</td>" for x in row) + "</tr>" for row in cells
    )
    return f"<table><caption>{html.escape(caption)}</caption><tr>{head}</tr>{body}</table>"


def elide(cells: list[list[str]], max_rows: int | None) -> list[list[str]]:
    """At most `max_rows` rows: the first and last halves, with a "..." row between them."""
    if max_rows is None or len(cells) <= max_rows:
        return cells
    head = max_rows // 2
    gap = ["..."] + [""] * (len(cells[0]) - 1)
    return cells[:head] + [gap] + cells[len(cells) - (max_rows - head) :]


@dataclasses.dataclass
class LayerTable:
    """Rows of a traced model, its outputs and totals; `str(table)` renders a text table.

    Attributes:
      model: registry name or module class.
      input_shape: the traced input shape, batch included.
      rows: `LayerRow`s in program order.
      outputs: `TensorInfo` per model output: "logits" and the intermediates' names for registry
        models (`(logits, {name: array})`), key paths such as "0" otherwise.
      other_flops: FLOPs of the ops on activations that belong to no row (bias adds,
        activations, residual adds, average pools' divisions).
      unused_params: parameters per module path that the traced call never used (auxiliary
        heads that only run in training, as in GoogLeNet and Inception v3).
    """

    model: str
    input_shape: tuple
    rows: list[LayerRow]
    outputs: dict[str, TensorInfo]
    other_flops: int = 0
    unused_params: dict[str, int] = dataclasses.field(default_factory=dict)

    COLUMNS = (
        *"name op output_shape kernel stride dilation groups".split(),  # the layer
        *"params macs flops".split(),  # its costs
        *"rf jump start".split(),  # its receptive field
    )
    TOTALS = ("params", "macs", "flops", "activation_bytes")

    @property
    def params(self) -> int:
        """All parameters: the rows' plus `unused_params`."""
        return sum(r.params for r in self.rows) + sum(self.unused_params.values())

    @property
    def macs(self) -> int:
        return sum(r.macs for r in self.rows)

    @property
    def flops(self) -> int:
        """The rows' FLOPs plus `other_flops`."""
        return sum(r.flops for r in self.rows) + self.other_flops

    @property
    def activation_bytes(self) -> int:
        """Sum of the rows' output bytes (not a peak: see the memory analysis for that)."""
        return sum(r.activation_bytes for r in self.rows)

    def to_dict(self) -> dict:
        """Plain data (lists for tuples, totals included); `from_dict` inverts it."""
        return {
            "model": self.model,
            "input_shape": list(self.input_shape),
            "rows": [dataclasses.asdict(r) for r in self.rows],
            "outputs": {k: dataclasses.asdict(v) for k, v in self.outputs.items()},
            "other_flops": self.other_flops,
            "unused_params": dict(self.unused_params),
            "totals": {k: getattr(self, k) for k in self.TOTALS},
        }

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict) -> LayerTable:
        def build(kind, fields):
            return kind(**{k: _tuples(v) for k, v in fields.items()})

        return cls(
            model=data["model"],
            input_shape=tuple(data["input_shape"]),
            rows=[build(LayerRow, r) for r in data["rows"]],
            outputs={k: build(TensorInfo, v) for k, v in data["outputs"].items()},
            other_flops=data["other_flops"],
            unused_params=dict(data["unused_params"]),
        )

    @classmethod
    def from_json(cls, text: str) -> LayerTable:
        return cls.from_dict(json.loads(text))

    def _cells(self) -> list[list[str]]:
        cells = []
        for r in self.rows:
            row = [format_cell(getattr(r, c)) for c in self.COLUMNS]
            if r.rf_global:
                row[self.COLUMNS.index("rf")] = "global"
            cells.append(row)
        return cells

    def summary(self) -> str:
        """One line: the model, its input and the totals."""
        return (
            f"{self.model} {format_cell(self.input_shape)}: {len(self.rows)} rows, "
            f"{self.params:,} params, {self.macs:,} MACs, {self.flops:,} FLOPs "
            f"({self.other_flops:,} outside rows), {self.activation_bytes:,} activation bytes"
        )

    def render(self, max_rows: int | None = None) -> str:
        """Text table, one line per row; with `max_rows`, the middle rows are elided."""
        header = [c.removesuffix("_shape") for c in self.COLUMNS]
        cells = elide(self._cells(), max_rows)
        return text_table(header, cells) + "\n" + self.summary()

    def __str__(self) -> str:
        return self.render()

    def _repr_html_(self) -> str:
        return html_table(list(self.COLUMNS), self._cells(), self.summary())
