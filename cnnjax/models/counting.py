"""Parameter and multiply-accumulate (MAC) counts read off a model's traced program.

MACs are counted from the jaxpr, not from XLA's cost model: every `conv_general_dilated`
contributes `output elements x (kernel window x input channels per group)` and every
`dot_general` `output elements x contracted size`, the convention of the papers (and of fvcore
and thop): padded taps count, elementwise ops, pooling and normalization do not. Nothing is
computed: tracing runs on abstract shapes, so counting ResNet-152 costs a trace, not a forward.

The counting sits at the models rank because the registry's `ModelInfo.params` and `.macs` use it;
`cnnjax.analysis.costs` re-exports the counts, and the per-layer table (`analysis/trace.py`) and
the XLA cross-check (`analysis/xla_check.py`) build on the per-equation primitives here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from cnnjax.layers.backend import conv_impl


def count_params(tree: Any) -> int:
    """Number of scalars in a pytree of arrays or `ShapeDtypeStruct`s."""
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def conv_macs(eqn) -> int:
    """MACs of one `conv_general_dilated` equation: output elements x kernel per output channel."""
    out = eqn.outvars[0].aval.shape
    rhs = eqn.invars[1].aval.shape
    out_feature_axis = eqn.params["dimension_numbers"].rhs_spec[0]
    # Each output element reads the whole kernel of one output channel.
    return math.prod(out) * (math.prod(rhs) // rhs[out_feature_axis])


def dot_macs(eqn) -> int:
    """MACs of one `dot_general` equation: output elements x contracted size."""
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval.shape
    return math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contract)


def sub_jaxprs(eqn):
    """(jaxpr, multiplicity) pairs nested in an equation (jit, custom_vjp, scan, cond, ...)."""
    found = []
    for value in eqn.params.values():
        for item in value if isinstance(value, tuple | list) else (value,):
            inner = getattr(item, "jaxpr", item)
            if hasattr(inner, "eqns"):
                found.append(inner)
    if eqn.primitive.name == "cond":  # branches are alternatives: count the most expensive
        return [(max(found, key=jaxpr_macs), 1)] if found else []
    repeat = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
    return [(j, repeat) for j in found]


def jaxpr_macs(jaxpr) -> int:
    """Multiply-accumulates of convolutions and matrix products in a (closed) jaxpr."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            total += conv_macs(eqn)
        elif name == "dot_general":
            total += dot_macs(eqn)
        else:
            total += sum(jaxpr_macs(inner) * n for inner, n in sub_jaxprs(eqn))
    return total


def count_macs(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """MACs of one call `fn(*args, **kwargs)`; arrays may be `jax.ShapeDtypeStruct`s."""
    with conv_impl("xla", force=True):  # the portable program: conv_general_dilated equations
        return jaxpr_macs(jax.make_jaxpr(lambda *a: fn(*a, **kwargs))(*args))
