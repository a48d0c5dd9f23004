"""Per-layer table of a Flax model, read off its traced program: shapes, costs, receptive fields.

`trace_model("resnet50")` traces `model.apply` on abstract shapes (`jax.eval_shape` of `init`,
`jax.make_jaxpr` of `apply`; no weights, no compilation: an ImageNet model takes a second or two)
and returns a `LayerTable` (`layer_table.py`) with one row per convolution, dense layer (any
`dot_general`), window pool (`reduce_window*` over space) and global pool (a reduction over
space), plus one row per normalization module and per module that owns parameters but runs none
of those ops (ConvNeXt's layer scale). Receptive fields come from `rf_rules.propagate`, MACs from
the counting rules of `models/counting.py`, so the table's totals equal `ModelInfo.params` and
`.macs`.

Attribution. Every module method call is wrapped by an `nn.intercept_methods` interceptor in
`jax.named_scope("@flax:<k>")`, `k` indexing a record of the call (module path
`module.scope.path`, class, call number). JAX keeps the scope stack of each equation in
`eqn.source_info.name_stack` (equations of nested `jit`/`custom_vjp`/`custom_jvp` jaxprs hold it
relative to their caller; `propagate` prepends the caller's), and the innermost marker names the
module. Flax's own profiling scopes (`flax_profile`, on by default) would give similar paths, but
they use `module.name`, add `.method` suffixes, repeat a module whose methods call each other and
can be switched off; the scope path is also the key path of the module's parameters, which is how
`params` are looked up. Limits: ops in `setup` belong to the calling module; a module called
twice (shared weights) gives rows `path` and `path#2`; ops a module runs as plain functions
(`max_pool2d` called in a model's `__call__`) are named after that module, `path/max_pool_0`
(`max_pool_0` at the top level); a reshape-based adaptive pool is not a row (its bins of one
pixel, as in VGG at 224x224, are no pooling at all; the RF still accounts for real bins).

Conventions. MACs as in `models/counting.py` (padded taps count). FLOPs: `2 x MACs` for conv and
dense rows; one per window element per output for window pools; one per input element for global
pools; for a normalization row, one per output element of each of its arithmetic ops on
activations (parameter-only arithmetic such as BN's `scale * rsqrt(var + eps)` is not counted,
nor is data movement). The same count over all other ops on activations (bias adds, activations,
residual adds, average pools' divisions) is `LayerTable.other_flops`, part of the total.
Activation bytes are each row's output tensor, batch included.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.analysis.layer_table import LayerRow, LayerTable, TensorInfo
from cnnjax.analysis.receptive_field import describe, input_rf
from cnnjax.analysis.rf_rules import propagate
from cnnjax.errors import ConfigError, ShapeError
from cnnjax.layers.backend import conv_impl
from cnnjax.models.counting import conv_macs, count_params, dot_macs

__all__ = ["LayerRow", "LayerTable", "TensorInfo", "trace_model"]

MARK = "@flax:"
# Data movement: no arithmetic, no FLOPs.
_MOVES = {
    "reshape", "broadcast_in_dim", "convert_element_type", "copy", "copy_p", "transpose",
    "squeeze", "expand_dims", "slice", "dynamic_slice", "dynamic_update_slice", "concatenate",
    "pad", "gather", "scatter", "rev", "split", "iota", "select_n", "stop_gradient",
}  # fmt: skip
_POOLS = {"reduce_window_max": "max", "reduce_window_min": "min", "reduce_window_sum": "avg"}
_REDUCTIONS = {"reduce_sum": "avg", "reduce_max": "max", "reduce_min": "min"}


@dataclasses.dataclass
class _Call:
    """One module method call: its module path, class and how many times that path ran."""

    path: tuple[str, ...]
    cls: str
    number: int
    input_shape: tuple = ()
    anchors: list = dataclasses.field(default_factory=list)
    flops: int = 0
    last: Any = None  # (aval, rf) of the last activation the call produced


class _Recorder:
    """Intercepts module calls (marking their ops) and turns equations into rows."""

    def __init__(self, spatial: tuple[int, ...]):
        self.calls: list[_Call] = []
        self.order: list = []  # ("row", k, row) per layer, in program order
        self.ends: dict[int, int] = {}  # position in `order` of each call's last own op
        self.active: list[tuple] = []  # paths of the calls being traced, innermost last
        self.numbers: dict[tuple, int] = {}  # calls so far per module path
        self.spatial = spatial
        self.other_flops = 0

    def intercept(self, next_fun, args, kwargs, context):
        module = context.module
        path = tuple(module.scope.path) if module.scope is not None else ()
        if context.method_name == "setup" or (self.active and self.active[-1] == path):
            return next_fun(*args, **kwargs)  # part of a call already marked
        number = self.numbers[path] = self.numbers.get(path, 0) + 1
        first = next((a for a in jax.tree.leaves(args) if hasattr(a, "shape")), None)
        shape = () if first is None else tuple(first.shape)
        self.calls.append(_Call(path, type(module).__name__, number, shape))
        self.active.append(path)
        try:
            with jax.named_scope(f"{MARK}{len(self.calls) - 1}"):
                return next_fun(*args, **kwargs)
        finally:
            self.active.pop()

    def _call_of(self, stack) -> int:
        marks = [int(s[len(MARK) :]) for s in stack if s.startswith(MARK)]
        if not marks and not self.calls:  # ops before any module call (not from `apply`)
            self.calls.append(_Call((), "", 1))
        return marks[-1] if marks else 0

    def visit(self, eqn, stack, ins, outs, mult):
        k = self._call_of(stack)
        call = self.calls[k]
        self.ends[k] = len(self.order)
        live = [o for o in outs if o is not None]
        if live:
            call.last = (eqn.outvars[0].aval, live[0])
        row = self._anchor(eqn, ins, outs, mult, call)
        if row is not None:
            call.anchors.append(row)
            self.order.append(("row", k, row))
        elif live:
            call.flops += _elementwise_flops(eqn) * mult

    def _anchor(self, eqn, ins, outs, mult, call) -> LayerRow | None:
        """The row of a conv, dot, window pool or global pool equation; None for other ops."""
        fields = self._layer_fields(eqn, ins, call)
        if fields is None:
            return None
        out = eqn.outvars[0].aval
        row = LayerRow(
            name="",
            module=call.cls,
            output_shape=tuple(out.shape),
            dtype=str(out.dtype),
            activation_bytes=math.prod(out.shape) * out.dtype.itemsize,
            **fields,
            **self._rf(outs[0]),
        )
        row.macs, row.flops = row.macs * mult, row.flops * mult
        # Provisional name, the op's index in this call: `rows` prefixes the module path.
        row.name = f"{row.op}_{sum(r.op == row.op for r in call.anchors)}"
        return row

    def _layer_fields(self, eqn, ins, call) -> dict | None:
        name, p = eqn.primitive.name, eqn.params
        shape = tuple(eqn.invars[0].aval.shape) if eqn.invars else ()
        if name == "conv_general_dilated":
            rhs, dn = eqn.invars[1].aval.shape, p["dimension_numbers"]
            macs = conv_macs(eqn)
            return dict(
                op="conv_transpose" if max(p["lhs_dilation"]) > 1 else "conv",
                input_shape=shape,
                kernel=_one(rhs[a] for a in dn.rhs_spec[2:]),
                stride=_one(p["window_strides"]),
                dilation=_one(p["rhs_dilation"]),
                groups=p["feature_group_count"],
                padding=tuple(tuple(x) for x in p["padding"]),
                macs=macs,
                flops=2 * macs,
            )
        if name == "dot_general":
            data = [v for v, s in zip(eqn.invars, ins) if s is not None]  # activations
            macs = dot_macs(eqn)
            return dict(
                op="dense" if len(data) == 1 else "matmul",
                macs=macs,
                flops=2 * macs,
                input_shape=tuple((data or eqn.invars)[0].aval.shape),
            )
        state = ins[0] if ins else None
        if state is None or state.is_global or "Norm" in call.cls:
            return None  # constants (average pools' divisors) and normalization statistics
        axes = [a.pos for a in sorted(state.axes, key=lambda a: a.src) if a.pos is not None]
        if name in _POOLS or name == "reduce_window":
            window = [p["window_dimensions"][a] for a in axes]
            strides = [p["window_strides"][a] for a in axes]
            if not axes or max(window + strides) == 1:
                return None
            out = math.prod(eqn.outvars[0].aval.shape)
            return dict(
                op=f"{_POOLS.get(name, 'window')}_pool",
                input_shape=shape,
                kernel=_one(window),
                stride=_one(strides),
                dilation=_one(p["window_dilation"][a] for a in axes),
                padding=tuple(tuple(p["padding"][a]) for a in axes),
                flops=out * math.prod(p["window_dimensions"]),
            )
        if name in _REDUCTIONS and any(a in p["axes"] and shape[a] > 1 for a in axes):
            op = f"global_{_REDUCTIONS[name]}_pool"
            return dict(op=op, input_shape=shape, flops=math.prod(shape))
        return None

    def _rf(self, state) -> dict:
        d = describe(state, self.spatial)
        return dict(rf=d["size"], jump=d["jump"], start=d["start"], rf_global=d["is_global"])

    def rows(self, params: dict) -> tuple[list[LayerRow], dict[str, int]]:
        """Named rows in program order, and the parameters (per module path) no row owns."""
        parents = {c.path[:i] for c in self.calls for i in range(len(c.path))}
        owned = _own_params(params)
        claimed, rows = set(), []
        # A call's own row (a norm, a layer scale) goes after its last op (a residual add).
        ends = {}
        for k, end in self.ends.items():
            ends.setdefault(end, []).append(("call", k))
        ordered = [x for i, row in enumerate(self.order) for x in (*ends.pop(i, ()), row)]
        for item in ordered + [x for i in sorted(ends) for x in ends[i]]:
            k = item[1]
            call = self.calls[k]
            prefix = "/".join(call.path) + (f"#{call.number}" if call.number > 1 else "")
            leaf = call.path not in parents
            if item[0] == "row":
                row = item[2]
                if leaf and len(call.anchors) == 1 and prefix:
                    row.name = prefix  # the module is the layer
                elif prefix:
                    row.name = f"{prefix}/{row.name}"
            elif call.anchors or not (owned.get(call.path) or "Norm" in call.cls):
                self.other_flops += call.flops
                continue
            else:
                aval, state = call.last or (jax.ShapeDtypeStruct((0,), jnp.float32), None)
                row = LayerRow(
                    name=prefix or call.cls,
                    op="norm" if "Norm" in call.cls else "elementwise",
                    module=call.cls,
                    input_shape=call.input_shape,
                    output_shape=tuple(aval.shape),
                    dtype=str(aval.dtype),
                    flops=call.flops,
                    activation_bytes=math.prod(aval.shape) * aval.dtype.itemsize,
                    **self._rf(state),
                )
            if call.path not in claimed:
                claimed.add(call.path)
                row.params = owned.get(call.path, 0)
            rows.append(row)
        return rows, {"/".join(p): n for p, n in owned.items() if p not in claimed}


def _one(values):
    values = tuple(int(v) for v in values)
    return values[0] if len(set(values)) == 1 else values


def _elementwise_flops(eqn) -> int:
    name = eqn.primitive.name
    if name in _MOVES:
        return 0
    if name.startswith("reduce_") or name in ("argmax", "argmin"):
        return math.prod(eqn.invars[0].aval.shape)
    out = math.prod(eqn.outvars[0].aval.shape)
    if name.startswith("reduce_window"):
        return out * math.prod(eqn.params["window_dimensions"])
    return out


def _own_params(tree, path=()) -> dict[tuple, int]:
    """Parameters each module path owns directly (not those of its submodules)."""
    found, here = {}, 0
    for key, value in (tree or {}).items():
        if isinstance(value, dict) or hasattr(value, "items"):
            found |= _own_params(value, (*path, key))
        else:
            here += count_params(value)
    if here:
        found[path] = here
    return found


def _output_names(shapes) -> list[str]:
    leaves = jax.tree_util.tree_flatten_with_path(shapes)[0]
    names = [jax.tree_util.keystr(k, simple=True, separator="/") or "output" for k, _ in leaves]
    # The registry's convention: (logits, {intermediate name: array}).
    if isinstance(shapes, tuple) and len(shapes) == 2 and isinstance(shapes[1], dict):
        names = ["logits" if n == "0" else n.removeprefix("1/") for n in names]
    return names


def trace_model(
    name_or_module: str | nn.Module,
    input_shape: tuple[int, ...] | None = None,
    batch: int = 1,
    variables: Any = None,
    dtype: Any = jnp.float32,
) -> LayerTable:
    """Per-layer table of a model, traced on abstract shapes.

    Args:
      name_or_module: a registry name (see `cnnjax.models.list_models`) or a Linen module whose
        `apply(variables, x, train=False)` runs the forward pass.
      input_shape: one example's shape, `(H, W, C)` or `(L, C)` (default for a registry name:
        `model_info(name).input_shape`); required for a module.
      batch: batch size `N` of the traced input `(N, *input_shape)`.
      variables: the model's variables (arrays or `ShapeDtypeStruct`s); default: the shapes
        `model.init` would give, computed abstractly.
      dtype: input dtype.

    Returns:
      A `LayerTable`.

    Raises:
      ConfigError: unknown model name, an input shape of the wrong rank for a registry model,
        or a module without `input_shape`.
      ShapeError: the input is too small for the model (raised by the layer that cannot fit).
    """
    if isinstance(name_or_module, str):
        from cnnjax import models

        module, label = models.create_model(name_or_module), name_or_module
        input_shape = models.input_shape_of(name_or_module, input_shape)
    else:
        module, label = name_or_module, type(name_or_module).__name__
        if input_shape is None:
            raise ConfigError(f"trace_model({label}): input_shape is required for a module")
    x = jax.ShapeDtypeStruct((batch, *input_shape), dtype)
    recorder = _Recorder(tuple(input_shape[:-1]))
    try:
        if variables is None:
            init = functools.partial(module.init, train=False)
            variables = jax.eval_shape(init, jax.random.key(0), x)
        variables = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), variables)
        # The portable program: conv_general_dilated equations rather than oneDNN FFI calls.
        with nn.intercept_methods(recorder.intercept), conv_impl("xla", force=True):
            closed, shapes = jax.make_jaxpr(
                lambda v, x: module.apply(v, x, train=False), return_shape=True
            )(variables, x)
    except ShapeError as error:
        raise ShapeError(f"input {input_shape} is too small for {label}: {error}") from error
    n_vars = len(jax.tree.leaves(variables))
    outs = propagate(closed, [None] * n_vars + [input_rf(x.ndim)], recorder.visit)
    rows, unused = recorder.rows(variables.get("params", {}))
    outputs = {}
    for out_name, aval, state in zip(_output_names(shapes), jax.tree.leaves(shapes), outs):
        rf = recorder._rf(state)
        outputs[out_name] = TensorInfo(tuple(aval.shape), str(aval.dtype), **rf)
    return LayerTable(label, tuple(x.shape), rows, outputs, recorder.other_flops, unused)
