"""Receptive fields: the single-path formula, traced stacks, published values, and a gradient check.

Published values are from the receptive-field library of Araujo et al. (the Distill article's
code), `receptive_field/RECEPTIVE_FIELD_TABLE.md` in github.com/google-research/receptive_field,
computed on TF-slim models: RF size, effective stride (our jump) and effective padding
(`(size - 1) / 2 - start`). Where our architectures differ from slim's, the test derives the value
by hand with the formula instead and says so.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cnnjax import models
from cnnjax.analysis.receptive_field import (
    Layer,
    ReceptiveField,
    describe,
    receptive_field,
    receptive_fields,
    trace_receptive_fields,
)
from cnnjax.analysis.trace import trace_model
from cnnjax.errors import ConfigError
from cnnjax.layers import Conv1d, Conv2d, avg_pool2d, max_pool2d
from cnnjax.layers.pooling import adaptive_avg_pool2d
from tests.models.helpers import host_variables

# ---- the formula on layer lists -------------------------------------------------------------


def test_stacked_3x3_convs():
    assert receptive_field([3, 3, 3]) == ReceptiveField(7, 1, 3)  # valid padding: centred at 3
    assert receptive_field([(3, 1, 1, "same")] * 3) == ReceptiveField(7, 1, 0)


def test_dilated_3x3_convs_give_3_7_15():
    rfs = receptive_fields([Layer(3, dilation=d, padding="same") for d in (1, 2, 4)])
    assert [r.size for r in rfs] == [3, 7, 15]
    assert all(r.jump == 1 and r.start == 0 for r in rfs)


def test_conv_pool_chain():
    rfs = receptive_fields([3, (2, 2), 3, (2, 2)])
    assert [(r.size, r.jump) for r in rfs] == [(3, 1), (4, 2), (8, 2), (10, 4)]


def test_alexnet_conv1_and_pool1():
    # slim alexnet_v2: conv1 11 / 4, pool1 19 / 8 (effective padding 0 for both).
    conv1, pool1 = receptive_fields([(11, 4), (3, 2)])
    assert (conv1.size, conv1.jump, conv1.padding) == (11, 4, 0)
    assert (pool1.size, pool1.jump, pool1.padding) == (19, 8, 0)


def test_vgg16_pool5_matches_the_published_table():
    # slim vgg_16/pool5: RF 212, effective stride 32, effective padding 90. (212 is pool5's RF;
    # conv5_3's is 196.)
    blocks = [2, 2, 3, 3, 3]
    layers = [spec for n in blocks for spec in [(3, 1, 1, 1)] * n + [(2, 2)]]
    pool5 = receptive_field(layers)
    assert (pool5.size, pool5.jump, pool5.padding) == (212, 32, 90)


def test_bad_layer_spec_is_a_config_error():
    with pytest.raises(ConfigError, match="positive ints"):
        receptive_field([(3, 0)])


# ---- traced stacks --------------------------------------------------------------------------


class _Stack(nn.Module):
    """Convs and pools from `(kind, kernel, stride, dilation)` specs, 'same' padded convs."""

    specs: tuple

    @nn.compact
    def __call__(self, x, train=False):
        for kind, k, s, d in self.specs:
            if kind == "conv":
                x = Conv2d(2, k, s, padding="same", dilation=d)(x)
            else:
                x = max_pool2d(x, k, s)
        return x


@pytest.mark.parametrize(
    "specs, sizes, jumps",
    [
        ((("conv", 3, 1, 1),) * 3, [3, 5, 7], [1, 1, 1]),
        ((("conv", 3, 1, 1), ("conv", 3, 1, 2), ("conv", 3, 1, 4)), [3, 7, 15], [1, 1, 1]),
        (
            (("conv", 3, 1, 1), ("pool", 2, 2, 1), ("conv", 3, 1, 1), ("pool", 2, 2, 1)),
            [3, 4, 8, 10],
            [1, 2, 2, 4],
        ),
        ((("conv", 11, 4, 1), ("pool", 3, 2, 1)), [11, 19], [4, 8]),
    ],
)
def test_traced_stacks(specs, sizes, jumps):
    table = trace_model(_Stack(specs), input_shape=(64, 64, 1))
    assert [r.rf for r in table.rows] == sizes
    assert [r.jump for r in table.rows] == jumps
    assert table.outputs["output"].rf == sizes[-1]


def test_vgg16_rows():
    rows = {r.name: r for r in trace_model("vgg16").rows}
    # slim vgg_16: conv5_1 132, conv5_2 164, pool5 212 / 32 with effective padding 90.
    assert [rows[f"conv5_{i}"].rf for i in (1, 2, 3)] == [132, 164, 196]
    pool5 = rows["max_pool_4"]
    assert (pool5.rf, pool5.jump, (pool5.rf - 1) / 2 - pool5.start) == (212, 32, 90)
    assert rows["fc6"].rf_global and rows["fc6"].rf == 224 and rows["fc6"].jump is None


def test_alexnet_rows():
    table = trace_model("alexnet")
    rows = {r.name: r for r in table.rows}
    assert (rows["conv1"].rf, rows["conv1"].jump) == (11, 4)
    assert (rows["max_pool_0"].rf, rows["max_pool_0"].jump) == (19, 8)
    # slim alexnet_v2 has the same kernels and strides: conv2 51, conv5 163, pool5 195 / 32.
    assert (rows["conv2"].rf, rows["conv5"].rf) == (51, 163)
    assert (table.outputs["stage2"].rf, table.outputs["stage2"].jump) == (195, 32)


def test_resnet50_final_receptive_field():
    # torchvision's v1.5 (stride on the 3x3 conv), by hand: stem 7/2, pool +2*2 = 11/4; stage1
    # adds 3 * 2*4 = 35; stage2's first 3x3 is strided (+2*4, jump 8), then 3 * 2*8: 91;
    # stage3: +2*8, 5 * 2*16: 267; stage4: +2*16, 2 * 2*32: 427.
    table = trace_model("resnet50")
    assert [table.outputs[f"stage{i}"].rf for i in (1, 2, 3, 4)] == [35, 91, 267, 427]
    assert table.outputs["stage4"].jump == 32
    assert table.outputs["logits"].rf_global


def test_resnet50_v1_matches_the_published_table():
    # The paper's stride on the first 1x1 conv: slim resnet_v1_50 block1..4 = 35, 99, 291, 483.
    # (Slim strides at the end of blocks 1-3, the paper at the start of stages 2-4: the sizes
    # agree because a strided 1x1 conv does not widen the RF, the jumps lag one block here.)
    model = models.create_model("resnet50", stride_in_1x1=True)
    table = trace_model(model, input_shape=(224, 224, 3))
    assert [table.outputs[f"stage{i}"].rf for i in (1, 2, 3, 4)] == [35, 99, 291, 483]
    assert [table.outputs[f"stage{i}"].jump for i in (1, 2, 3, 4)] == [4, 8, 16, 32]


def test_inception_v3_branches_match_the_published_table():
    # slim inception_v3: Mixed_5d 127 / 8, Mixed_6e 927 / 16, Mixed_7c 1311 / 32 (concatenated
    # branches with 1x7 and 7x1 convs: the RF of a concatenation is its largest branch's).
    out = trace_model("inception_v3").outputs
    assert [(out[s].rf, out[s].jump) for s in ("stage1", "stage2", "stage3")] == [
        (127, 8),
        (927, 16),
        (1311, 32),
    ]


def test_mobilenet_v1_matches_the_published_table():
    # slim mobilenet_v1: Conv2d_11_pointwise 219 / 16, Conv2d_13_pointwise 315 / 32.
    out = trace_model("mobilenet_v1").outputs
    assert (out["stage4"].rf, out["stage4"].jump) == (219, 16)
    assert (out["stage5"].rf, out["stage5"].jump) == (315, 32)


def test_tcn_last_step_is_causal():
    table = trace_model("tcn1d")
    model = models.create_model("tcn1d")
    logits = table.outputs["logits"]
    assert logits.rf == model.receptive_field == 61
    # The last of 64 steps (index 63) sees steps 3..63: the window ends at the present.
    assert logits.start + (logits.rf - 1) / 2 == 63


def test_lenet5_c5_keeps_a_local_field_on_its_1x1_map():
    out = trace_model("lenet5").outputs
    assert (out["stage3"].rf, out["stage3"].jump, out["stage3"].start) == (32, 4, 15.5)
    assert not out["logits"].rf_global  # a 1x1 map flattened: still the same 32x32 window


# ---- propagation rules ----------------------------------------------------------------------


def _conv1d(x, k, pads):
    w = jnp.ones((k, 1, 1))
    return lax.conv_general_dilated(x, w, (1,), (pads,), dimension_numbers=("NWC", "WIO", "NWC"))


def test_misaligned_branches_merge_to_their_union():
    # Causal and anti-causal 3-taps: [-2, 0] and [0, 2] around each output, 5 pixels together.
    x = jax.ShapeDtypeStruct((1, 16, 1), jnp.float32)
    rf = trace_receptive_fields(lambda x: _conv1d(x, 3, (2, 0)) + _conv1d(x, 3, (0, 2)), x)
    assert describe(rf, (16,)) == dict(size=5, jump=1, start=0, is_global=False)


@pytest.mark.parametrize(
    "fn, expected",
    [
        (lambda x: adaptive_avg_pool2d(x, 2), dict(size=4, jump=4, start=1.5, is_global=False)),
        (lambda x: adaptive_avg_pool2d(x, 3), dict(size=8, jump=None, start=None, is_global=True)),
        (lambda x: x.reshape(1, -1), dict(size=8, jump=None, start=None, is_global=True)),
        (lambda x: x[:, 1::2, 2:], dict(size=1, jump=(2, 1), start=(1, 2), is_global=False)),
        (lambda x: avg_pool2d(x, 2, padding=1), dict(size=2, jump=2, start=-0.5, is_global=False)),
    ],
    ids=["adaptive_pool_blocks", "adaptive_pool_gather", "flatten", "strided_slice", "padding"],
)
def test_rules(fn, expected):
    x = jax.ShapeDtypeStruct((1, 8, 8, 1), jnp.float32)
    assert describe(trace_receptive_fields(fn, x), (8, 8)) == expected


class _Padded(nn.Module):
    mode: str

    @nn.compact
    def __call__(self, x, train=False):
        return Conv2d(1, 3, padding_mode=self.mode)(x)


def test_reflect_padding_has_the_receptive_field_of_zero_padding():
    # Reflect padding traces to slices, reversals and concatenations along the spatial axes.
    for mode in ("zeros", "reflect", "circular"):
        row = trace_model(_Padded(mode), input_shape=(8, 8, 1)).rows[0]
        assert (row.rf, row.jump, row.start) == (3, 1, 0), mode


# ---- an independent check: the support of a gradient ----------------------------------------


class _Branches(nn.Module):
    """Conv, average pool, two concatenated branches (3x3, 5x3), a strided custom_vjp conv."""

    @nn.compact
    def __call__(self, x, train=False):
        x = Conv2d(2, 3, padding="same")(x)
        x = avg_pool2d(x, 2)
        a = Conv2d(2, 3, padding="same")(x)
        b = Conv2d(2, (5, 3), padding="same")(x)
        x = jnp.concatenate([a, b], axis=-1)
        return Conv2d(2, 3, strides=2, padding="same", impl="explicit")(x)


def test_receptive_field_equals_the_gradient_support():
    model, shape = _Branches(), (1, 40, 40, 1)
    # Filled on the host: compiling `model.init`'s random initializers takes seconds.
    variables = host_variables(model, jax.ShapeDtypeStruct(shape, jnp.float32))
    # Positive weights and inputs: no cancellation can hide a dependency; average pooling, not
    # max, so every pixel of a window gets gradient.
    variables = jax.tree.map(lambda p: np.abs(p) + 0.1, variables)
    i, j = 5, 4
    grad = jax.jit(jax.grad(lambda x: model.apply(variables, x)[0, i, j, 0]))(jnp.ones(shape))
    rows, cols = np.nonzero(np.abs(np.asarray(grad[0, :, :, 0])) > 0)
    last = trace_model(model, input_shape=shape[1:]).rows[-1]
    # By hand: conv 3, pool 4 / 2 (start 0.5), branches 4 + 4*2 = 12 (H) and 4 + 2*2 = 8 (W),
    # strided conv + 2*2: 16 x 12, jump 4.
    assert (last.rf, last.jump, last.start) == ((16, 12), 4, 0.5)
    assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == last.rf
    centre = ((rows.max() + rows.min()) / 2, (cols.max() + cols.min()) / 2)
    assert centre == (last.start + i * last.jump, last.start + j * last.jump)


def test_one_dimensional_models_report_one_axis():
    class Causal(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            return Conv1d(1, 3, padding=((4, 0),), dilation=2)(x)

    row = trace_model(Causal(), input_shape=(16, 1)).rows[0]
    assert (row.rf, row.jump, row.start) == (5, 1, -2)  # taps t-4, t-2, t
