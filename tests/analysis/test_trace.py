"""Per-layer trace: agreement with the registry (per family; every model with `-m slow`),
attribution, conventions, output.

Everything is traced on abstract shapes (`eval_shape` / `make_jaxpr`): no model is compiled.
"""

import functools
import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from jax import lax

from cnnjax import models
from cnnjax.analysis import count_macs, count_params, jaxpr_macs
from cnnjax.analysis.trace import LayerTable, trace_model
from cnnjax.errors import ConfigError, ShapeError
from cnnjax.layers import BatchNorm, Conv2d, conv_impl, global_avg_pool, max_pool2d

# CapsNet's logits are the lengths of its class capsules, computed after its last layer (the
# reconstruction decoder runs after them and writes its own output).
LOGITS_NOT_FROM_LAST_ROW = {"capsnet"}

# One model per family kind by default (a plain conv net, a residual net, a dense net, branches
# with unused auxiliary heads, depthwise convs, ConvNeXt's per-position dense layers, capsules, an
# MLP, a 1-D net); every registry model with `-m slow` (0.2-5 s each: the rest are deeper or wider
# variants of the same code).
FAST_REGISTRY = {
    "lenet5",
    "vgg16_bn",
    "resnet20",
    "densenet121",
    "googlenet",
    "mobilenet_v1_050",
    "convnext_tiny",
    "capsnet",
    "lenet300_100",
    "tcn1d",
}
assert FAST_REGISTRY <= set(models.list_models()), FAST_REGISTRY - set(models.list_models())


@pytest.mark.parametrize(
    "name",
    [
        n if n in FAST_REGISTRY else pytest.param(n, marks=pytest.mark.slow)
        for n in models.list_models()
    ],
)
def test_registry_model_rows_match_shapes_params_and_macs(name):
    info = models.model_info(name)
    model = models.create_model(name)
    # The reference is computed as `ModelInfo.params` and `ModelInfo.macs` compute theirs, from one
    # shared trace (the two properties would trace the model three more times).
    variables = info.abstract_variables()
    x = jax.ShapeDtypeStruct((1, *info.input_shape), jnp.float32)
    with conv_impl("xla", force=True):  # what the analysis traces: conv_general_dilated
        jaxpr, (logits, intermediates) = jax.make_jaxpr(
            lambda v, x: model.apply(v, x, train=False), return_shape=True
        )(variables, x)  # return_shape gives what jax.eval_shape gives
    table = trace_model(name, variables=variables)

    assert table.outputs["logits"].shape == logits.shape
    assert {k: v.shape for k, v in table.outputs.items() if k != "logits"} == {
        k: a.shape for k, a in intermediates.items()
    }
    if name not in LOGITS_NOT_FROM_LAST_ROW:
        assert table.rows[-1].output_shape == logits.shape
    assert sum(r.params for r in table.rows) + sum(table.unused_params.values()) == count_params(
        variables["params"]
    )
    # Only auxiliary classifiers (run in training only) may go unused by the eval pass.
    assert all(path.lower().startswith("aux") for path in table.unused_params)
    assert table.macs == jaxpr_macs(jaxpr) > 0
    assert len({r.name for r in table.rows}) == len(table.rows)
    # One row per conv and per matrix product of the program.
    counts = _count_primitives(jaxpr.jaxpr)
    assert sum(r.op.startswith("conv") for r in table.rows) == counts["conv_general_dilated"]
    assert sum(r.op in ("dense", "matmul") for r in table.rows) == counts["dot_general"]


def _count_primitives(jaxpr, counts=None):
    counts = {"conv_general_dilated": 0, "dot_general": 0} if counts is None else counts
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in counts:
            counts[eqn.primitive.name] += 1
        for value in eqn.params.values():
            for item in value if isinstance(value, tuple | list) else (value,):
                inner = getattr(item, "jaxpr", item)
                if hasattr(inner, "eqns"):
                    _count_primitives(inner, counts)
    return counts


@functools.cache
def traced(name):
    """`trace_model(name)`, traced once for the tests that only read the table."""
    return trace_model(name)


@pytest.mark.parametrize("name", ["lenet5", "capsnet", "googlenet", "tcn1d"])
def test_totals_equal_model_info(name):
    info = models.model_info(name)
    table = traced(name)
    assert table.params == info.params
    assert table.macs == info.macs


class _Inner(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = Conv2d(4, 3, impl="explicit", name="c")(x)  # a custom_vjp conv
        return self.helper(x)

    def helper(self, x):
        return jax.jit(lambda y: nn.relu(y) * 2)(x)  # a method calling a method, a nested jit


class _Outer(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = Conv2d(4, 3, name="stem")(x)
        block = _Inner(name="blk")
        x = block(block(x))  # shared weights: the same module path runs twice
        x = max_pool2d(x, 2)  # a plain function in the top-level module
        x = BatchNorm(use_running_average=True, name="bn")(x)
        return nn.Dense(3, name="head")(global_avg_pool(x))


def test_attribution_through_custom_vjp_jit_shared_modules_and_functions():
    table = trace_model(_Outer(), input_shape=(8, 8, 1))
    rows = {r.name: r for r in table.rows}
    assert list(rows) == [
        "stem",
        "blk/c",
        "blk/c#2",
        "max_pool_0",
        "bn",
        "global_avg_pool_0",
        "head",
    ]
    assert [r.op for r in table.rows] == [
        "conv",
        "conv",
        "conv",
        "max_pool",
        "norm",
        "global_avg_pool",
        "dense",
    ]
    assert rows["blk/c"].module == "Conv2d" and rows["max_pool_0"].module == "_Outer"
    # The shared conv's parameters are counted once, on its first call.
    assert rows["blk/c"].params == 3 * 3 * 4 * 4 + 4 and rows["blk/c#2"].params == 0
    assert rows["bn"].params == 2 * 4 and rows["head"].params == 4 * 3 + 3
    variables = jax.eval_shape(lambda: _Outer().init(jax.random.key(0), jnp.zeros((1, 8, 8, 1))))
    assert table.params == count_params(variables["params"])
    x = jax.ShapeDtypeStruct((1, 8, 8, 1), jnp.float32)
    assert table.macs == count_macs(lambda v, x: _Outer().apply(v, x), variables, x)
    assert [r.rf for r in table.rows[:4]] == [3, 5, 7, 8]
    assert rows["max_pool_0"].jump == 2 and rows["max_pool_0"].start == 0.5
    assert rows["global_avg_pool_0"].rf_global and rows["head"].rf == 8  # the whole 8x8 input


class _TwoPools(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        same = dict(window=3, strides=1, padding=1)
        return max_pool2d(max_pool2d(x, **same), **same)  # two identical rows in one call


def test_functional_ops_are_numbered_per_module():
    table = trace_model(_TwoPools(), input_shape=(6, 6, 2))
    assert [r.name for r in table.rows] == ["max_pool_0", "max_pool_1"]
    assert [r.rf for r in table.rows] == [3, 5]


class _Scanned(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        w = self.param("w", nn.initializers.ones, (3, 1, 1))

        def body(h, _):
            numbers = ("NWC", "WIO", "NWC")
            return lax.conv_general_dilated(h, w, (1,), "SAME", dimension_numbers=numbers), None

        return lax.scan(body, x, None, length=4)[0]


def test_a_scanned_layer_counts_its_iterations():
    table = trace_model(_Scanned(), input_shape=(16, 1))
    (row,) = table.rows
    assert (row.name, row.op, row.params) == ("conv_0", "conv", 3)
    x = jax.ShapeDtypeStruct((1, 16, 1), jnp.float32)
    variables = {"params": {"w": jax.ShapeDtypeStruct((3, 1, 1), jnp.float32)}}
    assert row.macs == count_macs(lambda v, x: _Scanned().apply(v, x), variables, x) == 4 * 16 * 3
    assert row.rf == table.outputs["output"].rf == 9  # four 3-taps


def test_flop_conventions():
    table = trace_model(_Outer(), input_shape=(8, 8, 1))
    rows = {r.name: r for r in table.rows}
    for name in ("stem", "blk/c", "head"):
        assert rows[name].flops == 2 * rows[name].macs
    assert rows["max_pool_0"].flops == 4 * 4 * 4 * (2 * 2)  # one per window element per output
    assert rows["global_avg_pool_0"].flops == 4 * 4 * 4  # one per input element
    assert rows["bn"].flops > 0 and rows["bn"].flops % (4 * 4 * 4) == 0
    # Outside rows: 3 conv bias adds, relu and x2 twice (8x8x4 each), the mean's division (4),
    # the dense bias add (3).
    assert table.other_flops == 7 * 8 * 8 * 4 + 4 + 3
    assert table.flops == sum(r.flops for r in table.rows) + table.other_flops


def test_batch_and_dtype_scale_shapes_bytes_and_macs():
    one = traced("lenet5")
    four = trace_model("lenet5", batch=4, dtype=jnp.bfloat16)
    assert four.input_shape == (4, 32, 32, 1)
    assert four.rows[0].output_shape == (4, 28, 28, 6)
    assert four.rows[0].activation_bytes == 4 * 28 * 28 * 6 * 2
    for row in one.rows:
        assert row.activation_bytes == math.prod(row.output_shape) * 4
    assert four.macs == 4 * one.macs
    assert four.params == one.params


def test_rendering_has_a_header_and_one_line_per_conv():
    table = trace_model("vgg16")
    text = str(table)
    lines = text.splitlines()
    assert lines[0].split() == [
        "name",
        "op",
        "output",
        "kernel",
        "stride",
        "dilation",
        "groups",
        "params",
        "macs",
        "flops",
        "rf",
        "jump",
        "start",
    ]
    conv_lines = [line for line in lines if line.split()[1:2] == ["conv"]]
    assert [line.split()[0] for line in conv_lines] == [
        r.name for r in table.rows if r.op == "conv"
    ]
    assert len(conv_lines) == 13 and conv_lines[-1].split()[0] == "conv5_3"
    assert "global" in text and f"{table.macs:,} MACs" in lines[-1]
    short = table.render(max_rows=6).splitlines()
    assert len(short) == 2 + 7 + 2 and short[5].startswith("...")
    html = table._repr_html_()
    assert html.count("<tr>") == len(table.rows) + 1 and "conv5_3" in html


def test_json_round_trips():
    table = traced("googlenet")  # concatenations, unused auxiliary heads, global RFs
    data = json.loads(table.to_json())
    assert data["totals"] == {
        "params": table.params,
        "macs": table.macs,
        "flops": table.flops,
        "activation_bytes": table.activation_bytes,
    }
    again = LayerTable.from_json(table.to_json(indent=1))
    assert again == table
    assert str(again) == str(table)


def test_unknown_model_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown model 'resnet5'; did you mean"):
        trace_model("resnet5")


def test_module_needs_an_input_shape():
    with pytest.raises(ConfigError, match="input_shape is required"):
        trace_model(_Outer())


def test_too_small_input_raises_the_layers_shape_error():
    with pytest.raises(ShapeError, match="c3: kernel .* larger than the padded input"):
        trace_model("lenet5", input_shape=(8, 8, 1))
