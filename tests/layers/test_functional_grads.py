"""Every public operator of `cnnjax.layers.functional`, forward and backward, over its arguments.

`OPS` lists, for each operator, the arrays it is differentiated with respect to (`inputs`), the
values tried for each of its other arguments (`axes`; `DIFF` marks a value that is itself a
differentiated array, e.g. a learned per-channel padding value), and the arguments left fixed
with the reason (`exempt`). A test checks that these name every parameter of the signature, so
an argument added to an operator without a test fails here. Each case runs in float64 and
compares the reverse-mode gradient with central finite differences of the forward function
(`jax.test_util.check_grads`: an independent reference), for every output.

Cases: every value of every axis once, the others at their first value (the default suite, except
the other values of continuous settings such as epsilon, which take the same code path); those,
and 24 seeded random combinations of all axes per operator, under `-m slow`.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import random
import zlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from cnnjax.layers import backprop
from cnnjax.layers import functional as F
from cnnjax.layers.padding import PAD_MODES

DIFF = "<differentiated array>"
LAYER = {"layer": "the layer's name in error messages"}
KEY = jax.random.key(7)


def normal(*shape, low=None):
    def make(rng, kw):
        if low is None:
            return rng.normal(size=shape)
        return rng.uniform(low, low + 1.0, size=shape)  # away from kinks at 0

    return make


def grouped_kernel(*window, c_in, c_out):
    def make(rng, kw):
        return rng.normal(size=(*window, c_in // kw.get("groups", 1), c_out))

    return make


@dataclasses.dataclass(frozen=True)
class Op:
    """An operator and the arguments its tests vary (see the module docstring)."""

    name: str
    inputs: dict[str, Callable]  # differentiated arrays: name -> make(rng, kwargs)
    axes: dict[str, list] = dataclasses.field(default_factory=dict)
    exempt: dict[str, str] = dataclasses.field(default_factory=dict)
    fixed: dict[str, object] = dataclasses.field(default_factory=dict)
    arrays: dict[str, Callable] = dataclasses.field(default_factory=dict)  # makers of DIFF values
    valid: Callable[[dict], bool] = lambda kw: True
    complete: frozenset[str] = frozenset()  # axes listing every choice there is (even just one)


CONV_AXES = {
    "bias": [None, DIFF],
    "strides": [1, 2, (1, 2)],
    "padding": ["valid", "same", 1, ((1, 0), (0, 2))],
    "dilation": [1, 2],
    "groups": [1, 2],
    "padding_mode": list(PAD_MODES),
    "padding_value": [0.0, 1.5, DIFF],
}


def _conv_valid(kw):
    pads_value = kw.get("padding_value", 0.0)
    return pads_value == 0.0 or kw.get("padding_mode") == "constant"


def _output_padding_fits(kw):
    """Output padding must be below the stride or the dilation on each axis (as PyTorch)."""

    def pair(value):
        return (value, value) if isinstance(value, int) else tuple(value)

    strides, dilation = pair(kw.get("strides", 1)), pair(kw.get("dilation", 1))
    extra = pair(kw.get("output_padding", 0))
    return all(e < max(s, d) for e, s, d in zip(extra, strides, dilation))


OPS = [
    Op("adaptive_avg_pool2d", {"x": normal(1, 7, 5, 2)},
       {"output_size": [3, (2, 4), (None, 2), 1]}, LAYER),
    Op("adaptive_max_pool2d", {"x": normal(1, 7, 5, 2)},
       {"output_size": [3, (2, 4), (None, 2), 1]}, LAYER),
    Op("avg_pool2d", {"x": normal(1, 7, 6, 2)},
       {"window": [2, 3, (2, 3)], "strides": [None, 1, (2, 1)],
        "padding": ["valid", "same", 1, ((0, 1), (1, 0))], "count_include_pad": [True, False],
        "ceil_mode": [False, True]}, LAYER),
    Op("batch_norm",
       {"x": normal(4, 3, 3, 2), "running_mean": normal(2), "running_var": normal(2, low=0.5)},
       {"scale": [None, DIFF], "bias": [None, DIFF], "train": [True, False],
        "momentum": [0.9, 0.5], "epsilon": [1e-5, 1e-2], "unbiased_running_var": [True, False]},
       arrays={"scale": normal(2), "bias": normal(2)}),
    Op("bilinear_pool", {"x": normal(1, 3, 3, 2)},
       {"y": [None, DIFF], "eps": [1e-10, 1e-3], "precision": [None, "highest"]}, LAYER,
       arrays={"y": normal(1, 3, 3, 3)}),
    Op("blur_avg_pool2d", {"x": normal(1, 8, 8, 2)},
       {"window": [2, 3], "strides": [2, 1], "filter_size": [3, 1, 2, 5],
        "padding": ["valid", "same", 1], "pad_mode": ["reflect", "zeros", "symmetric",
        "replicate", "circular", "constant"], "count_include_pad": [True, False]},
       LAYER),
    Op("blur_pool2d", {"x": normal(1, 8, 8, 2)},
       {"filter_size": [3, 1, 2, 4, 5, 7], "strides": [2, 1, (2, 1)],
        "pad_mode": ["reflect", "zeros", "symmetric", "replicate", "circular", "constant"]},
       LAYER),
    Op("channel_dropout", {"x": normal(2, 4, 4, 3)}, {"rate": [0.5, 0.0, 0.9]},
       {"key": "a PRNG key (fixed: the mask is then a constant of x)"}, {"key": KEY}),
    Op("conv", {"x": normal(1, 6, 6, 4), "kernel": grouped_kernel(3, 3, c_in=4, c_out=4)},
       {**CONV_AXES, "flip_kernel": [False, True], "precision": [None, "highest"],
        "impl": ["auto", "xla"]}, LAYER, arrays={"bias": normal(4), "padding_value": normal(4)},
       valid=_conv_valid),
    Op("conv1d", {"x": normal(1, 9, 4), "kernel": grouped_kernel(3, c_in=4, c_out=4)},
       {"bias": [None, DIFF], "strides": [1, 2], "padding": ["valid", "same", 2],
        "dilation": [1, 2], "groups": [1, 2]},
       {"kwargs": "passed on to conv (its tests vary them)"}, arrays={"bias": normal(4)}),
    Op("conv2d", {"x": normal(1, 6, 6, 4), "kernel": grouped_kernel(3, 3, c_in=4, c_out=4)},
       {"bias": [None, DIFF], "strides": [1, 2], "padding": ["valid", "same", 1],
        "dilation": [1, 2], "groups": [1, 2]},
       {"kwargs": "passed on to conv (its tests vary them)"}, arrays={"bias": normal(4)}),
    Op("conv_transpose",
       {"x": normal(1, 4, 4, 4), "kernel": grouped_kernel(3, 3, c_in=4, c_out=4)},
       {"bias": [None, DIFF], "strides": [1, 2, (2, 1)], "padding": [0, 1, ((1, 0), (0, 1))],
        "output_padding": [0, 1], "dilation": [1, 2], "groups": [1, 2],
        "precision": [None, "highest"]}, LAYER, arrays={"bias": normal(4)},
       valid=_output_padding_fits),
    Op("conv_transpose2d",
       {"x": normal(1, 4, 4, 4), "kernel": grouped_kernel(3, 3, c_in=4, c_out=4)},
       {"bias": [None, DIFF], "strides": [1, 2], "padding": [0, 1], "output_padding": [0, 1]},
       {"kwargs": "passed on to conv_transpose (its tests vary them)"},
       arrays={"bias": normal(4)}, valid=_output_padding_fits),
    Op("dropout", {"x": normal(2, 4, 4, 3)}, {"rate": [0.5, 0.0, 0.9]},
       {"key": "a PRNG key (fixed: the mask is then a constant of x)"}, {"key": KEY}),
    Op("explicit_conv", {"x": normal(1, 6, 6, 4), "kernel": grouped_kernel(3, 3, c_in=4, c_out=4)},
       {"strides": [(1, 1), (2, 1)], "pads": [((0, 0), (0, 0)), ((1, 1), (1, 1)),
                                              ((1, 0), (0, 2))],
        "dilation": [(1, 1), (2, 1)], "groups": [1, 2], "precision": [None, "highest"],
        "backward": list(backprop.BACKWARD_KERNELS)}, complete=frozenset({"backward"})),
    Op("gelu", {"x": normal(3, 5)}, {"approximate": [False, True]}),
    Op("global_avg_pool", {"x": normal(2, 3, 4, 3)}, {"keepdims": [False, True]}),
    Op("global_max_pool", {"x": normal(2, 3, 4, 3)}, {"keepdims": [False, True]}),
    Op("layer_norm", {"x": normal(2, 3, 4)},
       {"scale": [None, DIFF], "bias": [None, DIFF], "epsilon": [1e-6, 1e-2]},
       arrays={"scale": normal(4), "bias": normal(4)}),
    Op("local_response_norm", {"x": normal(1, 3, 3, 7)},
       {"size": [5, 3, 1, 2], "alpha": [1e-4, 0.1], "beta": [0.75, 0.5], "k": [2.0, 1.0]}),
    Op("lp_pool2d", {"x": normal(1, 6, 7, 2, low=0.1)},  # x >= 0: see the test below
       {"p": [2.0, 1.0, 3.0, 4.5], "window": [2, 3], "strides": [None, 1],
        "ceil_mode": [False, True], "padding": ["valid", 1]}, LAYER),
    Op("max_blur_pool2d", {"x": normal(1, 8, 8, 2)},
       {"window": [2, 3], "strides": [2, 1], "filter_size": [3, 1, 5],
        "padding": ["valid", "same"], "pad_mode": ["reflect", "zeros", "symmetric", "replicate",
                                                   "circular", "constant"]}, LAYER),
    Op("max_pool2d", {"x": normal(1, 9, 8, 2)},
       {"window": [2, 3, (2, 3)], "strides": [None, 1, (2, 1)], "padding": ["valid", "same", 1],
        "dilation": [1, 2, (2, 1)], "ceil_mode": [False, True]}, LAYER),
    Op("min_pool2d", {"x": normal(1, 9, 8, 2)},
       {"window": [2, 3, (2, 3)], "strides": [None, 1, (2, 1)], "padding": ["valid", "same", 1],
        "dilation": [1, 2, (2, 1)], "ceil_mode": [False, True]}, LAYER),
    Op("pad", {"x": normal(1, 5, 4, 3)},
       {"padding": [1, (1, 2), ((0, 2), (1, 0)), "same", "valid"], "mode": list(PAD_MODES),
        "value": [0.0, 1.5, DIFF], "kernel_size": [1, 3], "dilation": [1, 2]},
       arrays={"value": normal(3)},
       valid=lambda kw: kw.get("value", 0.0) == 0.0 or kw.get("mode") == "constant"),
    Op("spatial_pyramid_pool", {"x": normal(1, 8, 8, 2)},
       {"levels": [(1, 2, 4), (1, 3), (2,)], "method": ["max", "avg"]}, LAYER),
    Op("stochastic_pool2d", {"x": normal(1, 6, 6, 2, low=0.2)},
       {"window": [2, 3], "strides": [None, 1], "train": [False, True], "padding": ["valid", 1]},
       {**LAYER, "key": "a PRNG key (fixed: the samples are then constants of x)"}, {"key": KEY}),
]  # fmt: skip
FORWARD_ONLY = {"binomial_filter": "returns constant filter taps (numpy): nothing to differentiate"}


# Continuous settings: their other values take the same code path as the first one, so CI runs
# them only at their first value and `-m slow` runs the rest.
CONTINUOUS = frozenset({"momentum", "epsilon", "eps", "precision", "alpha", "beta", "k"})


def cases(op: Op, combinations: int = 0, continuous: bool = False) -> list[dict]:
    """One case per value of each axis (the others at their first value; with `continuous`,
    only the other values of `CONTINUOUS` axes), or, with `combinations`, that many seeded
    random combinations of all axes."""
    first = {name: values[0] for name, values in op.axes.items()}
    if combinations:
        rng = random.Random(f"{op.name}-combinations")
        found = []
        for _ in range(combinations * 20):
            kw = {name: rng.choice(values) for name, values in op.axes.items()}
            if op.valid(kw) and kw not in found:
                found.append(kw)
            if len(found) == combinations:
                break
        return found
    found = [] if continuous else [first]
    for name, values in op.axes.items():
        if (name in CONTINUOUS) != continuous:
            continue
        for value in values[1:]:
            kw = {**first, name: value}
            if name == "padding_value" or name == "value":  # only meaningful with a constant
                kw["padding_mode" if "padding_mode" in op.axes else "mode"] = "constant"
            if op.valid(kw):
                found.append(kw)
    return found


def check_case(op: Op, kw: dict) -> None:
    fn = getattr(F, op.name)
    with jax.enable_x64(True):
        # crc32, not hash(): Python salts str hashes per process, and a case must replay.
        rng = np.random.default_rng(zlib.crc32(f"{op.name}{sorted(kw.items())!r}".encode()))
        names = list(op.inputs)
        arrays = [jnp.asarray(make(rng, kw)) for make in op.inputs.values()]
        static = dict(op.fixed)
        for name, value in kw.items():
            if isinstance(value, str) and value == DIFF:
                names.append(name)
                arrays.append(jnp.asarray(op.arrays[name](rng, kw)))
            else:
                static[name] = value

        def f(*values):
            return fn(**static, **dict(zip(names, values)))

        f = jax.jit(f)
        outputs = jax.tree.leaves(f(*arrays))
        assert all(np.all(np.isfinite(np.asarray(out))) for out in outputs)
        check_grads(f, tuple(arrays), order=1, modes=("rev",), atol=1e-5, rtol=1e-5)


def case_ids(op, kws):
    return [f"{op.name}-{i}-" + ",".join(f"{k}={v!r}"[:24] for k, v in kw.items()) for i, kw in
            enumerate(kws)]  # fmt: skip


CASES = [(op, kw) for op in OPS for kw in cases(op)]
CONTINUOUS_CASES = [(op, kw) for op in OPS for kw in cases(op, continuous=True)]
COMBINATIONS = [(op, kw) for op in OPS if op.axes for kw in cases(op, combinations=24)]


@pytest.mark.parametrize("op, kw", CASES, ids=[i for op in OPS for i in case_ids(op, cases(op))])
def test_gradient_matches_finite_differences_for_each_argument_value(op, kw):
    check_case(op, kw)


@pytest.mark.slow
@pytest.mark.parametrize(
    "op, kw",
    CONTINUOUS_CASES,
    ids=[i for op in OPS for i in case_ids(op, cases(op, continuous=True))],
)
def test_gradient_matches_finite_differences_for_other_continuous_settings(op, kw):
    check_case(op, kw)


@pytest.mark.slow
@pytest.mark.parametrize("op, kw", COMBINATIONS, ids=[f"{op.name}-{i}" for i, (op, _) in
                                                      enumerate(COMBINATIONS)])  # fmt: skip
def test_gradient_matches_finite_differences_for_random_combinations(op, kw):
    check_case(op, kw)


def test_the_table_names_every_operator_and_every_parameter():
    assert {op.name for op in OPS} | set(FORWARD_ONLY) == set(F.__all__)
    for op in OPS:
        params = set(inspect.signature(getattr(F, op.name)).parameters)
        covered = set(op.inputs) | set(op.axes) | set(op.exempt) | set(op.fixed)
        assert params == covered, (op.name, params ^ covered)
        for name, values in op.axes.items():
            assert len(values) > 1 or name in op.complete, (op.name, name)
            if DIFF in values:
                assert name in op.arrays, (op.name, name)


@pytest.mark.parametrize("size", range(1, 8))
def test_binomial_filter_is_the_normalized_row_of_pascals_triangle(size):
    taps = F.binomial_filter(size)
    row = np.array([math.comb(size - 1, i) for i in range(size)], dtype=np.float64)
    np.testing.assert_allclose(taps, np.outer(row, row) / row.sum() ** 2, rtol=1e-6)


def test_the_gradient_check_can_fail():
    broken = jax.custom_vjp(jnp.sin)  # a backward pass off by a factor 2
    broken.defvjp(lambda v: (jnp.sin(v), v), lambda v, g: (g * 2 * jnp.cos(v),))
    with jax.enable_x64(True), pytest.raises(AssertionError):
        check_grads(broken, (jnp.linspace(0.1, 1.0, 5),), order=1, modes=("rev",))


def test_lp_pool_of_negative_input_with_a_fractional_power_is_nan_as_documented():
    x = -jnp.ones((1, 2, 2, 1))
    assert np.isnan(F.lp_pool2d(x, 4.5)).all()  # as PyTorch: not silently 0
    np.testing.assert_allclose(F.lp_pool2d(x, 2.0), 2.0)  # even integer powers are defined
    assert F.lp_pool2d(jnp.zeros((1, 2, 2, 1)), 4.5).item() == 0.0
