"""Receptive-field rules per jaxpr primitive, and `propagate`, which walks a program with them.

The RF values live here too, below `receptive_field` (which computes with them by hand and calls
`propagate`): `ReceptiveField` along one axis, whose `then` is the window formula of that module's
docstring, and `TensorRF`, one `Axis` per input spatial axis of a tensor, or `GLOBAL`.

`propagate` carries one `TensorRF` per jaxpr variable (None for values computed from parameters
alone), recursing into `pjit`, `custom_vjp_call` (the explicit-backprop convs), `custom_jvp_call`
(activations), `remat`, `cond` (the costliest branch, as `costs.py` counts it) and `scan` (the
body iterated on its carry), and reports every first-order equation with its name stack to a
`visit` callback (`trace.py` builds its rows that way); a `while` loop's outputs are global (its
trip count is unknown). Rules:

* conv (`conv_general_dilated`) and window pools (`reduce_window*`) apply the window formula of
  `receptive_field` on each spatial axis (input dilation: transposed convs);
* elementwise ops and merges (residual adds, channel concatenation of Inception branches, DenseNet
  buffer writes) take the union of their operands' RFs, as intervals
  `start -+ (size - 1) / 2`: the largest RF, with its alignment, whenever its interval contains
  the others' (at every merge of every registry model; a causal branch added to a centred one
  would give more); the jump is the largest branch's;
* `pad`, `slice`, `split` and `concatenate` along a spatial axis shift `start`; a concatenation
  along space is padding of its largest operand with border pieces, whose RFs are ignored (reflect
  and circular padding trace to slices of the edges and a concatenation);
* `reshape` that splits a spatial axis into `(outer, b)` makes `outer` a window of `b` pixels at
  stride `b` (reshape-based adaptive pooling, space-to-depth); size-1 spatial axes may be squeezed
  away and keep their RF (LeNet-5's 1x1 C5 map still has a 32-pixel RF);
* ops that mix all positions make the RF global: reductions over a spatial axis (global pooling,
  GroupNorm statistics), reshapes merging a spatial axis with others (flattening before a dense
  layer), contractions over space, gathers, scatters, sorts and cumulative sums along space, and
  any unknown op whose operands do not broadcast to its output.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from jax.extend import core as jcore

from cnnjax.analysis.costs import jaxpr_macs


@dataclasses.dataclass(frozen=True)
class ReceptiveField:
    """RF along one axis: `size` input pixels centred at `start + i * jump` for feature `i`."""

    size: float = 1
    jump: float = 1
    start: float = 0.0

    def then(self, kernel=1, stride=1, dilation=1, padding=0, upsample=1) -> ReceptiveField:
        """The RF after a window op; `padding` is the amount before, `upsample` input dilation."""
        jump = self.jump / upsample
        grow = (kernel - 1) * dilation
        return ReceptiveField(
            self.size + grow * abs(jump), jump * stride, self.start + (grow / 2 - padding) * jump
        )

    @property
    def padding(self) -> float:
        """Araujo et al.'s effective padding: `(size - 1) / 2 - start`."""
        return (self.size - 1) / 2 - self.start


class Axis(NamedTuple):
    """The RF of input axis `src` (0: H, 1: W), held by tensor axis `pos` (None: squeezed away)."""

    src: int
    pos: int | None
    rf: ReceptiveField


@dataclasses.dataclass(frozen=True)
class TensorRF:
    """RF of one tensor: one `Axis` per input spatial axis, or global (depends on everything)."""

    axes: tuple[Axis, ...] = ()
    is_global: bool = False

    def per_axis(self, n: int) -> list[ReceptiveField | None]:
        """The RF of input axes `0 .. n-1` (None for an axis the tensor does not resolve)."""
        found = {a.src: a.rf for a in self.axes}
        return [found.get(i) for i in range(n)]


GLOBAL = TensorRF(is_global=True)


def _merge(states) -> TensorRF | None:
    """Union of the RFs of merged tensors (elementwise ops, concatenation, buffer writes)."""
    states = [s for s in states if s is not None]
    if not states:
        return None
    if any(s.is_global for s in states):
        return GLOBAL
    by_src: dict[int, list[Axis]] = {}
    for s in states:
        for a in s.axes:
            by_src.setdefault(a.src, []).append(a)
    merged = []
    for src, group in sorted(by_src.items()):
        big = max(group, key=lambda a: a.rf.size)
        lo = min(a.rf.start - (a.rf.size - 1) / 2 for a in group)
        hi = max(a.rf.start + (a.rf.size - 1) / 2 for a in group)
        pos = next((a.pos for a in group if a.pos is not None), None)
        merged.append(Axis(src, pos, ReceptiveField(hi - lo + 1, big.rf.jump, (hi + lo) / 2)))
    return TensorRF(tuple(merged))


def _move(state, eqn_in, moves: dict, windows: dict | None = None) -> TensorRF | None:
    """Relocates axes to `moves[pos]`, growing those in `windows` by `ReceptiveField.then`.

    `moves[pos] == "global"`: the axis mixes with others. Axes missing from `moves` disappear:
    detached (`pos=None`, RF kept) if of size 1, else reduced over, which makes the RF global.
    """
    if state is None or state.is_global:
        return state
    axes = []
    for a in state.axes:
        if a.pos is None:
            axes.append(a)
            continue
        new = moves.get(a.pos, "drop")
        if new == "global" or (new == "drop" and eqn_in.aval.shape[a.pos] > 1):
            return GLOBAL
        rf = a.rf.then(*windows[a.pos]) if windows and a.pos in windows else a.rf
        axes.append(Axis(a.src, None if new == "drop" else new, rf))
    return TensorRF(tuple(axes))


def _shape(v) -> tuple[int, ...]:
    return tuple(getattr(v.aval, "shape", ()))


def _elementwise(eqn, ins):
    out, same = _shape(eqn.outvars[0]), []
    for v, s in zip(eqn.invars, ins):
        shape = _shape(v)
        if s is not None and shape != out:
            if len(shape) == len(out) and all(a in (1, b) for a, b in zip(shape, out)):
                # Implicit broadcasting of size-1 axes (a per-position statistic, a bias).
                s = _move(s, v, {a: a for a in range(len(out)) if shape[a] == out[a]})
            elif any(a.pos is not None for a in s.axes):
                return [GLOBAL] * len(eqn.outvars)  # an op we do not know: assume the worst
        same.append(s)
    return [_merge(same)] * len(eqn.outvars)


def _conv(eqn, ins):
    p, (lhs, rhs) = eqn.params, eqn.invars[:2]
    dn = p["dimension_numbers"]
    kernel = [_shape(rhs)[a] for a in dn.rhs_spec[2:]]
    moves = dict(zip(dn.lhs_spec, dn.out_spec))
    windows = {
        a: (k, s, d, lo, u)
        for a, k, s, d, (lo, _), u in zip(
            dn.lhs_spec[2:],
            kernel,
            p["window_strides"],
            p["rhs_dilation"],
            p["padding"],
            p["lhs_dilation"],
        )
    }
    # A kernel computed from the input (never in the registry) would mix all positions.
    return [_merge([_move(ins[0], lhs, moves, windows), None if ins[1] is None else GLOBAL])]


def _reduce_window(eqn, ins):
    p, n = eqn.params, len(eqn.outvars)
    windows = {
        a: (k, s, d, lo, u)
        for a, (k, s, d, (lo, _), u) in enumerate(
            zip(
                p["window_dimensions"],
                p["window_strides"],
                p["window_dilation"],
                p["padding"],
                p["base_dilation"],
            )
        )
    }
    moves = {a: a for a in windows}
    return [_move(ins[i], eqn.invars[i], moves, windows) for i in range(n)]


def _reduce(eqn, ins):
    axes = set(eqn.params["axes"])
    rank = len(_shape(eqn.invars[0]))
    moves = {a: a - sum(r < a for r in axes) for a in range(rank) if a not in axes}
    return [_move(ins[0], eqn.invars[0], moves)] * len(eqn.outvars)


def _reshape_groups(old, new):
    """Pairs `(old axes, new axes)` of runs with equal products (size-1 axes join a run)."""
    groups, i, j = [], 0, 0
    while i < len(old) or j < len(new):
        gi, gj, pi, pj = [], [], 1, 1
        if i < len(old):
            gi, pi, i = [i], old[i], i + 1
        if j < len(new):
            gj, pj, j = [j], new[j], j + 1
        while pi != pj:
            if pi < pj:
                gi, pi, i = [*gi, i], pi * old[i], i + 1
            else:
                gj, pj, j = [*gj, j], pj * new[j], j + 1
        groups.append((gi, gj))
    return groups


def _reshape(eqn, ins):
    state, old, new = ins[0], _shape(eqn.invars[0]), _shape(eqn.outvars[0])
    if state is None or state.is_global or 0 in old:
        return [state]
    moves, windows = {}, {}
    for olds, news in _reshape_groups(old, new):
        big_old, big_new = [a for a in olds if old[a] > 1], [b for b in news if new[b] > 1]
        for a in olds:
            if old[a] == 1:
                continue  # dropped: a size-1 spatial axis keeps its RF, detached
            if big_old != [a]:
                moves[a] = "global"  # merges a spatial axis with others (flatten)
            else:
                moves[a] = big_new[0]
                block = math.prod(new[b] for b in big_new[1:])
                if block > 1:  # split (outer, block): outer pixels are windows of `block`
                    windows[a] = (block, block)
    return [_move(state, eqn.invars[0], moves, windows)]


def _transpose(eqn, ins):
    perm = eqn.params["permutation"]
    return [_move(ins[0], eqn.invars[0], {old: new for new, old in enumerate(perm)})]


def _broadcast(eqn, ins):
    dims, out = eqn.params["broadcast_dimensions"], _shape(eqn.outvars[0])
    shape = _shape(eqn.invars[0])
    # A size-1 axis broadcast to many positions is the same value everywhere: detach it.
    moves = {a: (b if shape[a] == out[b] else "drop") for a, b in enumerate(dims)}
    return [_move(ins[0], eqn.invars[0], moves)]


def _squeeze(eqn, ins):
    gone, rank = set(eqn.params["dimensions"]), len(_shape(eqn.invars[0]))
    moves = {a: a - sum(g < a for g in gone) for a in range(rank) if a not in gone}
    return [_move(ins[0], eqn.invars[0], moves)]


def _shifted(state, shifts: dict, strides: dict | None = None) -> TensorRF | None:
    """Moves `start` by `shifts[pos]` input steps (and scales `jump` by `strides[pos]`)."""
    if state is None or state.is_global:
        return state
    axes = []
    for a in state.axes:
        if a.pos in shifts:
            j, step = a.rf.jump, (strides or {}).get(a.pos, 1)
            a = a._replace(rf=ReceptiveField(a.rf.size, j * step, a.rf.start + shifts[a.pos] * j))
        axes.append(a)
    return TensorRF(tuple(axes))


def _pad(eqn, ins):
    # Interior padding `i` spreads the input out: one input step is `i + 1` output steps.
    config = dict(enumerate(eqn.params["padding_config"]))
    shifts = {a: -lo / (i + 1) for a, (lo, _, i) in config.items()}
    return [
        _merge([_shifted(ins[0], shifts, {a: 1 / (c[2] + 1) for a, c in config.items()}), ins[1]])
    ]


def _slice(eqn, ins):
    p, rank = eqn.params, len(_shape(eqn.invars[0]))
    strides = p["strides"] or (1,) * rank
    return [_shifted(ins[0], dict(enumerate(p["start_indices"])), dict(enumerate(strides)))]


def _concatenate(eqn, ins):
    axis, live = eqn.params["dimension"], [s for s in ins if s is not None]
    if not any(a.pos == axis for s in live for a in s.axes):
        return [_merge(ins)]  # channel concatenation (Inception, DenseNet)
    sizes = [_shape(v)[axis] for v in eqn.invars]
    main = max(range(len(ins)), key=lambda i: (ins[i] is not None, sizes[i]))
    moved = _shifted(ins[main], {axis: -sum(sizes[:main])})
    # The other pieces are borders (reflected or wrapped copies of the main operand's edges):
    # their own coordinates do not line up with the output's, so only a global one counts.
    return [GLOBAL if any(s.is_global for s in live) else moved]


def _split(eqn, ins):
    axis, sizes = eqn.params["axis"], eqn.params["sizes"]
    return [_shifted(ins[0], {axis: sum(sizes[:i])}) for i in range(len(sizes))]


def _dot_general(eqn, ins):
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lrank, rrank = len(_shape(eqn.invars[0])), len(_shape(eqn.invars[1]))
    lfree = [a for a in range(lrank) if a not in lc and a not in lb]
    rfree = [a for a in range(rrank) if a not in rc and a not in rb]
    lmoves = {a: i for i, a in enumerate(lb)} | {a: len(lb) + i for i, a in enumerate(lfree)}
    rmoves = {a: i for i, a in enumerate(rb)}
    rmoves |= {a: len(lb) + len(lfree) + i for i, a in enumerate(rfree)}
    return [_merge([_move(ins[0], eqn.invars[0], lmoves), _move(ins[1], eqn.invars[1], rmoves)])]


def _along_axis(eqn, ins):
    """cumsum, sort, ...: along a spatial axis they mix positions."""
    axis = eqn.params.get("axis", eqn.params.get("dimension"))
    hit = any(a.pos == axis for s in ins if s is not None for a in s.axes)
    return [GLOBAL if hit else _merge(ins)] * len(eqn.outvars)


def _dynamic_slice(eqn, ins):
    """A window at a data-dependent offset: global along the axes it cuts."""
    cut = {
        a for a, (n, k) in enumerate(zip(_shape(eqn.invars[0]), eqn.params["slice_sizes"])) if k < n
    }
    hit = any(a.pos in cut for s in ins if s is not None for a in s.axes)
    return [GLOBAL if hit else _merge(ins)]


def _mixing(eqn, ins):
    return [GLOBAL if any(s is not None for s in ins) else None] * len(eqn.outvars)


RULES: dict[str, Callable] = {
    "conv_general_dilated": _conv,
    "reshape": _reshape,
    "transpose": _transpose,
    "broadcast_in_dim": _broadcast,
    "squeeze": _squeeze,
    "pad": _pad,
    "slice": _slice,
    "concatenate": _concatenate,
    "split": _split,
    "dot_general": _dot_general,
    "dynamic_slice": _dynamic_slice,
    "dynamic_update_slice": lambda eqn, ins: [_merge(ins)],
    "rev": lambda eqn, ins: [ins[0]],  # only met inside reflect padding
}
RULES |= {f"reduce_window{op}": _reduce_window for op in ("", "_max", "_min", "_sum")}
RULES |= {f"reduce_{op}": _reduce for op in ("sum", "max", "min", "prod", "and", "or", "xor")}
RULES |= {name: _reduce for name in ("argmax", "argmin")}
RULES |= {f"cum{op}": _along_axis for op in ("sum", "prod", "max", "min", "logsumexp")}
RULES |= {"sort": _along_axis}
RULES |= {n: _mixing for n in ("gather", "scatter", "fft", "top_k")}
RULES |= {f"scatter-{op}": _mixing for op in ("add", "mul", "min", "max")}

Visit = Callable[[Any, tuple[str, ...], list, list, int], None]


def _sub_jaxprs(eqn) -> list:
    found = []
    for value in eqn.params.values():
        for item in value if isinstance(value, tuple | list) else (value,):
            if hasattr(getattr(item, "jaxpr", item), "eqns"):
                found.append(item)
    return found


def _shift_all(state, by: int):
    """Adds `by` to every position (scan slices off or stacks a leading axis)."""
    if state is None or state.is_global:
        return state
    if by < 0 and any(a.pos == 0 for a in state.axes):
        return GLOBAL
    axes = tuple(a if a.pos is None else a._replace(pos=a.pos + by) for a in state.axes)
    return TensorRF(axes)


def _higher_order(eqn, ins, subs, visit, stack, mult):
    name, p = eqn.primitive.name, eqn.params
    if name == "cond":  # the branches are alternatives: follow the costliest, like costs.py
        return propagate(max(p["branches"], key=jaxpr_macs), ins[1:], visit, stack, mult)
    if name == "scan":
        # Iterate the body on the carry until its RF stops changing (or `length` times), then
        # visit it once, with the last iteration's RFs and the multiplicity `length`.
        nc, nk, n = p["num_consts"], p["num_carry"], p["length"]
        consts, carry = ins[:nc], ins[nc : nc + nk]
        xs = [_shift_all(s, -1) for s in ins[nc + nk :]]
        for _ in range(n - 1):
            new = propagate(p["jaxpr"], [*consts, *carry, *xs])[:nk]
            carry, done = new, new == carry
            if done:
                break
        outs = propagate(p["jaxpr"], [*consts, *carry, *xs], visit, stack, mult * n)
        return outs[:nk] + [_shift_all(s, 1) for s in outs[nk:]]
    if len(subs) == 1 and len(getattr(subs[0], "jaxpr", subs[0]).invars) == len(ins):
        return propagate(subs[0], ins, visit, stack, mult)  # pjit, custom_vjp/jvp, remat
    for sub in subs:  # while and anything else: count the layers, RF conservatively global
        inner = getattr(sub, "jaxpr", sub)
        propagate(sub, ins[-len(inner.invars) :] if inner.invars else [], visit, stack, mult)
    return _mixing(eqn, ins)


def propagate(jaxpr, ins: Sequence, visit: Visit | None = None, stack=(), mult: int = 1) -> list:
    """Propagates RFs through a (closed) jaxpr, inlining nested jaxprs.

    Args:
      jaxpr: a `Jaxpr` or `ClosedJaxpr` (its constants have no RF).
      ins: one `TensorRF` or None per input variable.
      visit: called as `visit(eqn, name_stack, in_rfs, out_rfs, multiplicity)` for every
        first-order equation, in program order; `name_stack` is the tuple of `jax.named_scope`
        names around it, outer jaxprs' included.
      stack: name stack of the equation that holds `jaxpr`.
      mult: how many times `jaxpr` runs per call (scan length).

    Returns:
      One `TensorRF` or None per output variable.
    """
    inner = getattr(jaxpr, "jaxpr", jaxpr)
    env = dict(zip(inner.invars, ins))

    def read(v):
        return None if isinstance(v, jcore.Literal) else env.get(v)

    for eqn in inner.eqns:
        here = stack + tuple(n for n in str(eqn.source_info.name_stack).split("/") if n)
        in_rfs = [read(v) for v in eqn.invars]
        subs = [] if eqn.primitive.name in RULES else _sub_jaxprs(eqn)
        if subs:
            outs = _higher_order(eqn, in_rfs, subs, visit, here, mult)
        else:
            outs = RULES.get(eqn.primitive.name, _elementwise)(eqn, in_rfs)
            if visit is not None:
                visit(eqn, here, in_rfs, outs, mult)
        env.update(zip(eqn.outvars, outs))
    return [read(v) for v in inner.outvars]
