"""Roofline arithmetic on hand examples, device profiles and the device measurement."""

import math

import pytest

from cnnjax.analysis import devices, roofline
from cnnjax.analysis.devices import DeviceProfile
from cnnjax.errors import ConfigError

# A toy device: 100 FLOP/s and 10 bytes/s, so the ridge point is 10 FLOP/byte.
TOY = DeviceProfile("toy", {"float32": 100.0}, 10.0, 1e3, "hand example")


def test_intensity_roofline_time_and_bound_by_hand():
    assert roofline.arithmetic_intensity(1000, 10) == 100
    assert roofline.ridge_point(100, 10) == 10 == TOY.ridge_point()
    # Above the ridge the compute roof caps, below it intensity x bandwidth.
    assert roofline.attainable_flops(100, 100, 10) == 100
    assert roofline.attainable_flops(2, 100, 10) == 20
    # 1000 FLOPs take 10 s, 10 bytes 1 s: compute-bound; 100 FLOPs / 200 bytes: 1 s vs 20 s.
    assert roofline.time_estimate(1000, 10, 100, 10) == 10
    assert roofline.bound(1000, 10, 100, 10) == "compute"
    assert roofline.time_estimate(100, 200, 100, 10) == 20
    assert roofline.bound(100, 200, 100, 10) == "memory"


def test_intensity_needs_bytes():
    with pytest.raises(ValueError, match="bytes_moved"):
        roofline.arithmetic_intensity(10, 0)


def test_layer_bytes_moved_is_input_weights_output():
    # 3x3 conv 64 -> 64 on 56x56, no bias, float32.
    moved = roofline.layer_bytes_moved(56 * 56 * 64, 3 * 3 * 64 * 64, 56 * 56 * 64)
    assert moved == (2 * 200_704 + 36_864) * 4
    assert roofline.layer_bytes_moved(10, 20, 30, bytes_per_element=2) == 120


def test_estimate_layers_finds_the_bottleneck():
    rows = [
        ("conv", 1000, 10),
        {"name": "relu", "flops": 100, "bytes_moved": 200},
        ("fc", 50, 10),
        ("tie", 50, 5),  # exactly at the ridge: both roofs take 0.5 s, counted as compute
    ]
    report = roofline.estimate_layers(rows, TOY)
    assert [layer.bound for layer in report.layers] == ["compute", "memory", "memory", "compute"]
    assert [layer.time_s for layer in report.layers] == [10, 20, 1, 0.5]
    assert report.bottleneck.name == "relu"
    assert report.total_time_s == 31.5
    assert report.total_flops == 1200 and report.total_bytes == 225
    assert report.memory_bound_fraction == pytest.approx(21 / 31.5)
    assert report.rows()[0]["attainable_flops"] == 100
    with pytest.raises(ValueError, match="at least one"):
        roofline.estimate_layers([], TOY)


def test_estimate_layers_by_device_name_and_precision():
    # A 2 GFLOP layer moving 1 MB is compute-bound on an H100 in bf16 (ridge ~295 FLOP/byte).
    report = roofline.estimate_layers([("big", 2e9, 1e6)], "h100_sxm", precision="bf16")
    assert report.peak_flops == 989.5e12 and report.bandwidth == 3.35e12
    assert report.layers[0].bound == "compute"
    assert report.layers[0].time_s == pytest.approx(2e9 / 989.5e12)


def test_device_lookup_errors_list_valid_names():
    with pytest.raises(ConfigError, match="a100_80gb_sxm") as error:
        devices.get_device("a1000")
    assert "valid choices" in str(error.value)
    # Short aliases name the larger-memory part.
    assert devices.get_device("a100") is devices.get_device("a100_80gb_sxm")
    assert devices.get_device("v5e").name == "tpu_v5e"
    # TPUs publish no float32 peak: asking for one names what there is.
    with pytest.raises(ConfigError, match="bf16"):
        devices.get_device("tpu_v4").peak("float32")
    assert devices.get_device("tpu_v4").peak() == 275e12


@pytest.mark.parametrize("name", devices.list_devices())
def test_profiles_are_positive_and_cite_a_source(name):
    profile = devices.get_device(name)
    assert profile.name == name and len(profile.source) > 20
    assert profile.memory_bandwidth > 0 and profile.memory_bytes > 0
    peaks = dict(profile.peak_flops)
    assert all(v > 0 for v in peaks.values())
    # Dense tensor-core/MXU peaks exceed the vector float32 peak where both exist.
    if "float32" in peaks:
        assert all(v >= peaks["float32"] for v in peaks.values())


def test_published_figures():
    a100 = devices.get_device("a100_80gb_sxm")
    assert a100.peak("tf32") == 156e12 and a100.memory_bandwidth == 2039e9
    assert devices.get_device("a100_40gb_sxm").memory_bandwidth == 1555e9
    assert devices.get_device("v100_sxm2").peak() == 15.7e12


def test_measure_device_returns_positive_finite_numbers():
    profile = devices.measure_device(matmul_size=256, copy_mib=8, repeats=3)
    assert profile.name == "measured" and "measured on" in profile.source
    for value in (profile.peak(), profile.memory_bandwidth, profile.memory_bytes):
        assert math.isfinite(value) and value > 0
