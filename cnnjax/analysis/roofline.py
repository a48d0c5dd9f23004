"""Roofline model (Williams, Waterman & Patterson 2009): is a layer compute- or memory-bound?

A kernel doing `F` FLOPs while moving `Q` bytes to and from memory has arithmetic intensity
`I = F / Q` (FLOP/byte). On a device with peak `P` FLOP/s and bandwidth `W` bytes/s it can
reach at most `min(P, I x W)` FLOP/s, and takes at least `max(F / P, Q / W)` seconds. Below the
ridge point `I = P / W` the memory system is the limit, above it the arithmetic units.

Bytes moved, by convention here, for a conv or dense layer: input activation + weights + output
activation, each read or written once (`layer_bytes_moved`). It is a lower bound of the DRAM
traffic of an unfused layer with perfect on-chip reuse: caches too small for the weights or the
input tile raise it (re-reads), fusion lowers it (a ReLU or BN fused into the conv never
round-trips through memory; a fused conv-BN-ReLU moves the conv's traffic only), and an
activation small enough to stay in cache (L2 is 40-50 MB on A100/H100) moves nothing. The
estimates are floors: real kernels add launch overheads and reach 50-80% of either roof.

Everything here is pure arithmetic on floats and plain dataclasses; rows may come from any
per-layer table as `(name, flops, bytes_moved)` tuples or mappings with those keys.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from cnnjax.analysis.devices import DeviceProfile, get_device


def arithmetic_intensity(flops: float, bytes_moved: float) -> float:
    """FLOPs per byte moved.

    Raises:
      ValueError: if `bytes_moved` is not positive.
    """
    if bytes_moved <= 0:
        raise ValueError(f"bytes_moved must be positive, got {bytes_moved}")
    return flops / bytes_moved


def attainable_flops(intensity: float, peak_flops: float, bandwidth: float) -> float:
    """Roofline: `min(peak_flops, intensity x bandwidth)` in FLOP/s."""
    return min(peak_flops, intensity * bandwidth)


def ridge_point(peak_flops: float, bandwidth: float) -> float:
    """Intensity (FLOP/byte) where the memory roof meets the compute roof."""
    return peak_flops / bandwidth


def time_estimate(flops: float, bytes_moved: float, peak_flops: float, bandwidth: float) -> float:
    """Lower bound on run time in seconds: `max(flops / peak, bytes / bandwidth)`."""
    return max(flops / peak_flops, bytes_moved / bandwidth)


def bound(flops: float, bytes_moved: float, peak_flops: float, bandwidth: float) -> str:
    """Which roof limits: "compute" if the arithmetic takes at least as long as the traffic."""
    return "compute" if flops / peak_flops >= bytes_moved / bandwidth else "memory"


def layer_bytes_moved(
    input_elements: int, weight_elements: int, output_elements: int, bytes_per_element: int = 4
) -> int:
    """Bytes moved by a conv/dense layer: input + weights (bias included) + output, once each.

    For a 3x3 conv of 64 to 64 channels on a `(1, 56, 56, 64)` float32 input: `(56*56*64 +
    3*3*64*64 + 56*56*64) * 4` bytes. See the module docstring for what this ignores.
    """
    return (input_elements + weight_elements + output_elements) * bytes_per_element


@dataclasses.dataclass(frozen=True)
class LayerEstimate:
    """Roofline estimate of one layer.

    Attributes:
      name: layer name.
      flops: floating-point operations (2 per multiply-accumulate).
      bytes_moved: bytes read + written.
      intensity: FLOP/byte.
      attainable_flops: roofline FLOP/s at this intensity.
      time_s: estimated seconds, `max(flops / peak, bytes / bandwidth)`.
      bound: "compute" or "memory".
    """

    name: str
    flops: float
    bytes_moved: float
    intensity: float
    attainable_flops: float
    time_s: float
    bound: str


@dataclasses.dataclass(frozen=True)
class RooflineReport:
    """Per-layer estimates on one device; the layers run one after another.

    Attributes:
      device: profile name.
      peak_flops: FLOP/s used (at the chosen precision).
      bandwidth: bytes/s used.
      layers: one `LayerEstimate` per row, in order.
      bottleneck: the layer with the largest estimated time.
    """

    device: str
    peak_flops: float
    bandwidth: float
    layers: tuple[LayerEstimate, ...]
    bottleneck: LayerEstimate

    @property
    def total_time_s(self) -> float:
        """Sum of the layers' estimates (no overlap between layers)."""
        return sum(layer.time_s for layer in self.layers)

    @property
    def total_flops(self) -> float:
        return sum(layer.flops for layer in self.layers)

    @property
    def total_bytes(self) -> float:
        return sum(layer.bytes_moved for layer in self.layers)

    @property
    def memory_bound_fraction(self) -> float:
        """Share of the estimated time spent in memory-bound layers."""
        memory = sum(layer.time_s for layer in self.layers if layer.bound == "memory")
        return memory / self.total_time_s if self.total_time_s else 0.0

    def rows(self) -> list[dict[str, Any]]:
        """The layers as plain dicts (for tables and JSON)."""
        return [dataclasses.asdict(layer) for layer in self.layers]


def _row(row: Sequence[Any] | Mapping[str, Any]) -> tuple[str, float, float]:
    if isinstance(row, Mapping):
        return str(row["name"]), float(row["flops"]), float(row["bytes_moved"])
    name, flops, bytes_moved = row
    return str(name), float(flops), float(bytes_moved)


def estimate_layers(
    rows: Iterable[Sequence[Any] | Mapping[str, Any]],
    device: DeviceProfile | str,
    precision: str | None = None,
) -> RooflineReport:
    """Roofline estimates of a sequence of layers on a device.

    Args:
      rows: `(name, flops, bytes_moved)` tuples or mappings with those keys; flops are FLOPs
        (2 x MACs for conv/dense), bytes_moved as in `layer_bytes_moved`.
      device: a `DeviceProfile` or the name of a built-in one (`devices.list_devices()`).
      precision: which peak of the device (default: float32 where listed).

    Returns:
      A `RooflineReport`; its `bottleneck` is the layer with the longest estimated time.

    Raises:
      ValueError: for no rows, or a row with non-positive bytes.
      ConfigError: for an unknown device name or precision.
    """
    profile = get_device(device) if isinstance(device, str) else device
    peak, bandwidth = profile.peak(precision), profile.memory_bandwidth
    layers = []
    for row in rows:
        name, flops, moved = _row(row)
        intensity = arithmetic_intensity(flops, moved)
        layers.append(
            LayerEstimate(
                name=name,
                flops=flops,
                bytes_moved=moved,
                intensity=intensity,
                attainable_flops=attainable_flops(intensity, peak, bandwidth),
                time_s=time_estimate(flops, moved, peak, bandwidth),
                bound=bound(flops, moved, peak, bandwidth),
            )
        )
    if not layers:
        raise ValueError("estimate_layers needs at least one (name, flops, bytes_moved) row")
    return RooflineReport(
        device=profile.name,
        peak_flops=peak,
        bandwidth=bandwidth,
        layers=tuple(layers),
        bottleneck=max(layers, key=lambda layer: layer.time_s),
    )
