"""Model summary: totals against the trace, published MAC figures, roofline arithmetic, the CLI."""

import json
import subprocess
import sys

import pytest

from cnnjax import models
from cnnjax.analysis import get_device, trace_model
from cnnjax.analysis.summary import TRAIN_STEP_FACTOR, bytes_moved, human_bytes, summarize
from cnnjax.errors import ConfigError, ShapeError
from tests.conftest import ROOT

# Multiply-accumulates at 224x224 (299x299 for Inception v3), in billions, as torchvision's model
# pages print them in their "GFLOPS" column (`weights.meta["_ops"]`, which counts conv and
# linear multiply-adds), and MobileNet v1's paper (Howard et al. 2017, Table 8: 569M mult-adds).
PUBLISHED_GMACS = {
    "alexnet": 0.714,
    "vgg11": 7.609,
    "vgg11_bn": 7.609,
    "vgg13": 11.308,
    "vgg13_bn": 11.308,
    "vgg16": 15.47,
    "vgg16_bn": 15.47,
    "vgg19": 19.632,
    "vgg19_bn": 19.632,
    "googlenet": 1.498,
    "inception_v3": 5.713,
    "resnet18": 1.814,
    "resnet34": 3.664,
    "resnet50": 4.089,
    "resnet101": 7.801,
    "resnet152": 11.514,
    "densenet121": 2.834,
    "densenet161": 7.728,
    "densenet169": 3.36,
    "densenet201": 4.291,
    "mobilenet_v2": 0.301,
    "convnext_tiny": 4.456,
    "convnext_small": 8.684,
    "convnext_base": 15.355,
    "mobilenet_v1": 0.569,
}
TORCHVISION_WEIGHTS = {
    "alexnet": "AlexNet",
    "googlenet": "GoogLeNet",
    "inception_v3": "Inception_V3",
    "mobilenet_v2": "MobileNet_V2",
    "convnext_tiny": "ConvNeXt_Tiny",
    "convnext_small": "ConvNeXt_Small",
    "convnext_base": "ConvNeXt_Base",
}


# Deeper or wider variants of a default-suite model, and Inception v3 (the largest trace; its
# receptive fields are checked by default in test_receptive_field), run with `-m slow`: tracing
# each costs 1-3 s.
SLOW_MACS = {
    "resnet101",
    "resnet152",
    "densenet161",
    "densenet169",
    "densenet201",
    "convnext_small",
    "convnext_base",
    "inception_v3",
}
assert SLOW_MACS <= set(PUBLISHED_GMACS), SLOW_MACS - set(PUBLISHED_GMACS)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=pytest.mark.slow) if n in SLOW_MACS else n
        for n in sorted(PUBLISHED_GMACS)
    ],
)
def test_mac_totals_match_the_published_figures(name):
    # `model_info(...).macs` is what the summary prints (test_trace ties the two, every model with
    # `-m slow`); the published figures are rounded to 3 significant decimals of a billion.
    assert models.model_info(name).macs / 1e9 == pytest.approx(PUBLISHED_GMACS[name], abs=6e-4)


@pytest.mark.parametrize("name", sorted(set(PUBLISHED_GMACS) - {"mobilenet_v1"}))
def test_published_table_is_torchvisions(name):
    tv_models = pytest.importorskip("torchvision.models")
    key = TORCHVISION_WEIGHTS.get(name, name.replace("resnet", "ResNet").replace("vgg", "VGG"))
    key = key.replace("densenet", "DenseNet").replace("_bn", "_BN")
    weights = getattr(tv_models, f"{key}_Weights").IMAGENET1K_V1  # metadata only, no download
    assert weights.meta["_ops"] == PUBLISHED_GMACS[name]


# densenet_bc_100: its checkpointed layers hold a jitted constant among the residuals (the only
# registry model that does, so it stays in the default suite). GoogLeNet's train step (auxiliary
# heads) runs with `-m slow`; its trace totals are checked by default in test_trace.
@pytest.mark.parametrize(
    "name",
    [
        "lenet5",
        "resnet20",
        pytest.param("googlenet", marks=pytest.mark.slow),
        "tcn1d",
        "capsnet",
        "densenet_bc_100",
    ],
)
def test_totals_come_from_the_trace_and_memory_from_the_train_step(name):
    result = summarize(name, batch=4, device="t4")
    table = trace_model(name, batch=4)
    info = models.model_info(name)
    totals = result.totals()
    assert totals["params"] == info.params == table.params
    assert totals["macs_per_example"] == info.macs and totals["macs"] == 4 * info.macs
    assert totals["flops"] == table.flops
    assert len(result.roofline.layers) == len(result.table.rows)
    m = result.memory
    assert m.batch == 4 and m.params == 4 * info.params and m.grads == m.params  # float32 bytes
    # SGD with momentum: one buffer per parameter, plus the schedule's int32 step counters.
    assert m.params <= m.optimizer_state <= m.params + 16
    assert m.activations > 0


def test_roofline_time_is_the_slower_roof_per_layer():
    result = summarize("resnet20", batch=8, device="a100", memory=False)
    a100 = get_device("a100_80gb_sxm")
    for row, est in zip(result.table.rows, result.roofline.layers):
        moved = bytes_moved(row)
        assert est.bytes_moved == moved
        expected = max(row.flops / a100.peak(), moved / a100.memory_bandwidth)
        assert est.time_s == pytest.approx(expected)
    conv = next(r for r in result.table.rows if r.name == "stage1_block1/conv1")
    # (8x32x32x16 input + 3x3x16x16 weights + 8x32x32x16 output) float32 elements.
    assert bytes_moved(conv) == (2 * 8 * 32 * 32 * 16 + 2304) * 4
    assert result.train_step_time_s == pytest.approx(TRAIN_STEP_FACTOR * result.forward_time_s)
    row, est = result.bottleneck
    assert est.time_s == max(e.time_s for e in result.roofline.layers)
    # Tensor cores move the ridge point: more layers become memory-bound.
    tf32 = summarize("resnet20", batch=8, device="a100", precision="tf32", memory=False)
    assert tf32.roofline.memory_bound_fraction > result.roofline.memory_bound_fraction


def test_text_and_json_reports():
    result = summarize("lenet5", batch=2, device="v100")
    text = result.render()
    assert "c3" in text and "bottleneck" in text and "train memory" in text
    assert len(result.render(max_rows=4).splitlines()) < len(text.splitlines())
    data = json.loads(json.dumps(result.to_dict()))
    assert data["totals"]["params"] == 61_706 and data["batch"] == 2
    assert data["device"]["name"] == "v100_sxm2"
    assert len(data["layers"]) == len(result.table.rows)
    assert {"time_s", "intensity", "bound", "bytes_moved", "rf"} <= set(data["layers"][0])
    assert data["training_memory"]["total"] == result.memory.analytic
    assert "<table>" in result._repr_html_()


def test_human_bytes():
    assert human_bytes(512) == "512 B"
    assert human_bytes(1536) == "1.50 KiB"
    assert human_bytes(3 * 2**30) == "3.00 GiB"


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown model 'resnet21'; did you mean 'resnet20'"):
        summarize("resnet21")
    with pytest.raises(ConfigError, match="unknown device 'a10'"):
        summarize("lenet5", device="a10")
    with pytest.raises(ConfigError, match="precision"):
        summarize("lenet5", device="tpu_v4", precision="float32")
    with pytest.raises(ShapeError, match=r"input \(32, 32, 3\) is too small for alexnet"):
        summarize("alexnet", input_shape=(32, 32, 3))


def run_summary(*args):
    return subprocess.run(
        [sys.executable, "-m", "cnnjax.summary", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_json():
    # Its bad inputs are rows of tests/test_bad_inputs.py (one process for all of them).
    result = run_summary("--model=resnet20", "--input=24,24,3", "--batch=3", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["input_shape"] == [24, 24, 3] and data["batch"] == 3
    assert data["totals"]["params"] == models.model_info("resnet20").params
    assert data["roofline"]["bottleneck"]["name"]


def test_any_flax_module_can_be_summarized():
    import flax.linen as nn

    from cnnjax.layers import Conv2d

    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            return nn.Dense(3)(Conv2d(8, 3, strides=2)(x).mean(axis=(1, 2)))

    result = summarize(Tiny(), input_shape=(16, 16, 2), batch=5, device="h100")
    assert result.memory is None  # training memory needs a registry model (its loss)
    assert result.totals()["macs_per_example"] == 8 * 8 * 9 * 2 * 8 + 8 * 3
    assert result.table.outputs["output"].shape == (5, 3)
    assert "training_memory" in result.to_dict() and "bottleneck" in result.render()
