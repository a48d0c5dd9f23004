"""Receptive fields (RF) of convolutional networks: by hand for a layer list, or from a jaxpr.

Along one spatial axis, output feature `i` of a layer depends on the input pixels centred at
`start + i * jump` and spanning `size` pixels (Araujo, Norris & Sim 2019, "Computing receptive
fields of convolutional neural networks", Distill; Dumoulin & Visin 2016). A window op (conv or
pool) with kernel `k`, stride `s`, dilation `d` and padding `p` before the input maps them as

    size'  = size + (k - 1) d |jump|
    jump'  = jump s
    start' = start + ((k - 1) d / 2 - p) jump

starting from `(1, 1, 0)` on the input: pixel `i` is centred at `i`. The effective padding of
Araujo et al. is `(size - 1) / 2 - start`. Input dilation `u` (transposed convs) divides `jump` by
`u` first, which makes sizes fractional: the RF of an upsampling op is an approximation.

`receptive_field(layers)` applies the formula to a single-path stack given by hand;
`trace_receptive_fields(fn, x)` follows it through the program of any function, branches,
residual adds and global pooling included (the rules, and the RF types they carry, are in
`rf_rules`). A merge of branches has the union of their RFs, which is the largest one, with its
alignment, when that one contains the others (as in every registry model); an op that mixes all
positions (global pooling, flattening into a dense layer) makes the RF global.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax

from cnnjax.analysis.rf_rules import Axis, ReceptiveField, TensorRF, propagate
from cnnjax.errors import ConfigError
from cnnjax.layers.backend import conv_impl
from cnnjax.layers.shapes import resolve_padding


class Layer(NamedTuple):
    """A conv or pool along one axis; padding: before-amount, `(before, after)` or a name."""

    kernel: int
    stride: int = 1
    dilation: int = 1
    padding: Any = 0


def _as_layer(spec) -> Layer:
    if isinstance(spec, int):
        spec = Layer(spec)
    elif isinstance(spec, dict):
        spec = Layer(**spec)
    elif not isinstance(spec, Layer):
        spec = Layer(*spec)
    k, s, d = spec.kernel, spec.stride, spec.dilation
    if any(not isinstance(v, int) or v < 1 for v in (k, s, d)):
        raise ConfigError(f"kernel, stride and dilation must be positive ints, got {spec}")
    before = resolve_padding(spec.padding, k, d, ndim=1)[0][0]
    return Layer(k, s, d, before)


def receptive_fields(layers: Sequence, start: ReceptiveField | None = None) -> list:
    """RF after each layer of a single-path stack (conv, pool) along one axis.

    Args:
      layers: `Layer`s, `(kernel, stride, dilation, padding)` tuples (trailing fields optional),
        dicts of those fields, or bare kernel sizes. `padding`: "valid", "same", "full", an int
        (before the input) or `(before, after)`; only the amount before moves `start`.
      start: the RF of the stack's input (default: the input image, `(1, 1, 0)`).

    Returns:
      One `ReceptiveField` per layer, e.g. `[3, 7, 15]` in size for 3x3 convs dilated 1, 2, 4.
    """
    rf, out = start or ReceptiveField(), []
    for spec in layers:
        layer = _as_layer(spec)
        rf = rf.then(layer.kernel, layer.stride, layer.dilation, layer.padding)
        out.append(rf)
    return out


def receptive_field(layers: Sequence, start: ReceptiveField | None = None) -> ReceptiveField:
    """RF of the last layer of a single-path stack; see `receptive_fields`."""
    rfs = receptive_fields(layers, start)
    return rfs[-1] if rfs else start or ReceptiveField()


def input_rf(ndim: int, spatial: Sequence[int] | None = None) -> TensorRF:
    """The RF of a model input of rank `ndim`: spatial axes `1 .. ndim-2` unless given."""
    spatial = range(1, ndim - 1) if spatial is None else spatial
    return TensorRF(tuple(Axis(i, p, ReceptiveField()) for i, p in enumerate(spatial)))


def trace_receptive_fields(fn: Callable, *args, argnum: int = 0, spatial=None):
    """RF of every output of `fn(*args)` w.r.t. `args[argnum]`, traced abstractly.

    Args:
      fn: a function of arrays, e.g. `lambda x: model.apply(variables, x, train=False)`.
      *args: arrays or `jax.ShapeDtypeStruct`s; `args[argnum]` is the input image(s).
      argnum: which argument the RF is measured on.
      spatial: its spatial axes (default: all but the first and the last).

    Returns:
      The output pytree with a `TensorRF` (or None, for outputs independent of the input) per leaf.
    """
    with conv_impl("xla", force=True):  # conv_general_dilated equations, not FFI calls
        closed, shapes = jax.make_jaxpr(fn, return_shape=True)(*args)
    leaves = [jax.tree.leaves(a) for a in args]
    ins: list = []
    for i, group in enumerate(leaves):
        ins += [input_rf(len(x.shape), spatial) if i == argnum else None for x in group]
    outs = propagate(closed, ins)
    return jax.tree.unflatten(jax.tree.structure(shapes), outs)


def _one(values):
    """One number when all axes agree, else a tuple; integral floats become ints."""
    values = tuple(int(v) if float(v).is_integer() else float(v) for v in values)
    return values[0] if len(set(values)) == 1 else values


def describe(state: TensorRF | None, input_spatial: Sequence[int]) -> dict:
    """`size`, `jump`, `start` (one number when the axes agree) and `is_global` of a tensor.

    A global RF reports the input size, with no jump or start; a tensor that resolves no input
    axis (computed from parameters, or an input without spatial axes) reports None for all.
    """
    if state is not None and state.is_global:
        return dict(size=_one(input_spatial), jump=None, start=None, is_global=True)
    rfs = state.per_axis(len(input_spatial)) if state is not None else [None]
    if not rfs or None in rfs:
        return dict(size=None, jump=None, start=None, is_global=False)
    fields = {k: _one(getattr(r, k) for r in rfs) for k in ("size", "jump", "start")}
    return fields | {"is_global": False}
