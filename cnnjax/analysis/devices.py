"""Accelerator profiles for roofline estimates: peak FLOP/s, memory bandwidth, memory size.

Figures are the vendors' published peaks, per chip, for *dense* math: NVIDIA's datasheets print
Tensor Core figures "with sparsity" (2:4 structured sparsity, twice the dense rate); the numbers
here are those halved, as the datasheets' footnotes say. Precisions:

* "float32": IEEE single precision on the vector units (CUDA cores), what an unmodified float32
  program gets when tensor cores are off (`jax.lax.Precision.HIGHEST`).
* "tf32": NVIDIA Tensor Cores on float32 inputs with 10-bit mantissas (Ampere and later; JAX
  uses it for float32 matmuls on these GPUs unless asked for HIGHEST precision).
* "bf16", "fp16": 16-bit Tensor Core / MXU math with float32 accumulation.

TPUs publish bf16 peaks only (float32 matmuls run as several bf16 passes), so they have no
"float32" entry. Capacities are as published (GB = 1e9 bytes, GiB = 2^30 bytes); bandwidths
are peak DRAM/HBM bandwidths, which a real copy reaches to 80-90% at best.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import re
import statistics
import subprocess
import time
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from cnnjax.errors import ConfigError, unknown_choice

GB, GIB, TERA = 1e9, 2**30, 1e12


@dataclasses.dataclass(frozen=True)
class DeviceProfile:
    """Peak capabilities of one accelerator chip.

    Attributes:
      name: registry key, e.g. "a100_80gb_sxm".
      peak_flops: dense peak FLOP/s by precision ("float32", "tf32", "bf16", "fp16").
      memory_bandwidth: peak memory bandwidth in bytes/s.
      memory_bytes: memory capacity in bytes.
      source: where the figures come from (datasheet or documentation page).
    """

    name: str
    peak_flops: Mapping[str, float]
    memory_bandwidth: float
    memory_bytes: float
    source: str

    def peak(self, precision: str | None = None) -> float:
        """Peak FLOP/s at `precision`; None: "float32" if listed, else the first listed.

        Raises:
          ConfigError: for a precision the profile does not list.
        """
        if precision is None:
            precision = "float32" if "float32" in self.peak_flops else next(iter(self.peak_flops))
        if precision not in self.peak_flops:
            raise ConfigError(
                unknown_choice(f"precision of device {self.name!r}", precision, self.peak_flops)
            )
        return self.peak_flops[precision]

    def ridge_point(self, precision: str | None = None) -> float:
        """Arithmetic intensity (FLOP/byte) above which work is compute-bound."""
        return self.peak(precision) / self.memory_bandwidth


_NVIDIA_SPARSITY = " Tensor Core figures are the datasheet's 'with sparsity' values halved."
# H100 and H200 share the GH100 die and clocks: the same dense peaks (datasheet values halved).
_HOPPER = {"float32": 67 * TERA, "tf32": 494.5 * TERA, "bf16": 989.5 * TERA, "fp16": 989.5 * TERA}
_A100 = "NVIDIA A100 Tensor Core GPU datasheet (SXM4): FP32 19.5, TF32 156, BF16/FP16 312 TFLOPS"

DEVICES: dict[str, DeviceProfile] = {
    d.name: d
    for d in [
        DeviceProfile(
            "a100_40gb_sxm",
            {"float32": 19.5 * TERA, "tf32": 156 * TERA, "bf16": 312 * TERA, "fp16": 312 * TERA},
            1555 * GB,
            40 * GB,
            _A100 + " dense (312/624 with sparsity); 40GB HBM2, 1,555 GB/s.",
        ),
        DeviceProfile(
            "a100_80gb_sxm",
            {"float32": 19.5 * TERA, "tf32": 156 * TERA, "bf16": 312 * TERA, "fp16": 312 * TERA},
            2039 * GB,
            80 * GB,
            _A100 + " dense (312/624 with sparsity); 80GB HBM2e, 2,039 GB/s.",
        ),
        DeviceProfile(
            "h100_sxm",
            _HOPPER,
            3.35e12,
            80 * GB,
            "NVIDIA H100 Tensor Core GPU datasheet (H100 SXM): FP32 67 TFLOPS; TF32 989 and "
            "BF16/FP16 1,979 TFLOPS with sparsity; 80GB HBM3, 3.35 TB/s." + _NVIDIA_SPARSITY,
        ),
        DeviceProfile(
            "h200_sxm",
            _HOPPER,
            4.8e12,
            141 * GB,
            "NVIDIA H200 Tensor Core GPU datasheet (H200 SXM): FP32 67 TFLOPS; TF32 989 and "
            "BF16/FP16 1,979 TFLOPS with sparsity; 141GB HBM3e, 4.8 TB/s." + _NVIDIA_SPARSITY,
        ),
        DeviceProfile(
            "v100_sxm2",
            {"float32": 15.7 * TERA, "fp16": 125 * TERA},
            900 * GB,
            32 * GB,
            "NVIDIA Tesla V100 GPU Accelerator datasheet (V100 SXM2, 32 GB model): single "
            "precision 15.7 TFLOPS, Tensor Performance (FP16 in, FP32 accumulate) 125 TFLOPS; "
            "16/32 GB HBM2, 900 GB/s. Volta has no sparsity, no TF32 and no BF16.",
        ),
        DeviceProfile(
            "t4",
            {"float32": 8.1 * TERA, "fp16": 65 * TERA},
            320 * GB,
            16 * GB,
            "NVIDIA T4 Tensor Core GPU datasheet: single precision 8.1 TFLOPS, mixed precision "
            "(FP16/FP32) 65 TFLOPS; 16 GB GDDR6, '320+ GB/s'.",
        ),
        DeviceProfile(
            "tpu_v4",
            {"bf16": 275 * TERA},
            1200 * GB,
            32 * GIB,
            "Google Cloud TPU documentation, 'TPU v4' (cloud.google.com/tpu/docs/v4): peak "
            "compute per chip 275 TFLOPS (bf16 or int8); HBM2 32 GiB, 1200 GBps.",
        ),
        DeviceProfile(
            "tpu_v5e",
            {"bf16": 197 * TERA},
            819 * GB,
            16 * GB,
            "Google Cloud TPU documentation, 'TPU v5e' (cloud.google.com/tpu/docs/v5e): peak "
            "compute per chip (bf16) 197 TFLOPS; HBM2 16 GB, 819 GBps.",
        ),
        DeviceProfile(
            "laptop_cpu",
            {"float32": 8 * 3.0e9 * 32},
            51.2 * GB,
            16 * GB,
            "Placeholder, not a vendor figure: 8 cores x 3.0 GHz x 32 float32 FLOP/cycle (two "
            "256-bit FMA units) = 768 GFLOP/s; dual-channel DDR4-3200 = 2 x 8 B x 3.2e9/s = "
            "51.2 GB/s; 16 GB. Use measure_device() for a real machine.",
        ),
    ]
}


# Short names for the command line; the larger-memory part where a chip comes in two.
ALIASES = {
    "a100": "a100_80gb_sxm",
    "h100": "h100_sxm",
    "h200": "h200_sxm",
    "v100": "v100_sxm2",
    "v4": "tpu_v4",
    "v5e": "tpu_v5e",
}


def list_devices(aliases: bool = False) -> list[str]:
    """Names of the built-in profiles (with `aliases`, their short names too)."""
    return sorted([*DEVICES, *ALIASES]) if aliases else sorted(DEVICES)


def get_device(name: str) -> DeviceProfile:
    """A built-in profile by name or alias ("a100" is "a100_80gb_sxm", see `ALIASES`).

    Raises:
      ConfigError: for an unknown name, listing the valid ones.
    """
    name = ALIASES.get(name, name)
    if name not in DEVICES:
        raise ConfigError(unknown_choice("device", name, list_devices(aliases=True)))
    return DEVICES[name]


def _median_seconds(fn, arg, repeats: int, chain: bool = False) -> float:
    """Median wall time of `fn(arg)`; with `chain`, each call consumes the previous output."""
    out = jax.block_until_ready(fn(arg))  # compile and warm up outside the timed runs
    arg = out if chain else arg
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(fn(arg))
        times.append(time.perf_counter() - start)
        arg = out if chain else arg
    return statistics.median(times)


def _memory_bytes(device) -> float:
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return float(stats["bytes_limit"])
    # CPU: the host's physical memory.
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def measure_device(matmul_size: int = 2048, copy_mib: int = 128, repeats: int = 5) -> DeviceProfile:
    """Measures this machine's practical float32 matmul peak and copy bandwidth.

    Args:
      matmul_size: n of the `(n, n) @ (n, n)` float32 matmul (2 n^3 FLOPs), run at
        `Precision.HIGHEST` so that GPUs do not silently use TF32.
      copy_mib: size of the copied float32 array in MiB; it should exceed the last-level cache.
      repeats: timed runs after a warm-up; the median is kept (robust to a busy machine).

    Returns:
      A `DeviceProfile` named "measured": `peak_flops={"float32": ...}`, the bandwidth as
      (bytes read + bytes written) / time of an in-place `x + 1`, and the device (or host)
      memory.
    """
    device = jax.devices()[0]
    key_a, key_b = jax.random.split(jax.random.key(0))
    a = jax.random.normal(key_a, (matmul_size, matmul_size), jnp.float32)
    b = jax.random.normal(key_b, (matmul_size, matmul_size), jnp.float32)
    matmul = jax.jit(lambda x: jnp.matmul(x, b, precision=jax.lax.Precision.HIGHEST))
    flops = 2.0 * matmul_size**3 / _median_seconds(matmul, a, repeats)

    x = jnp.zeros((copy_mib * 2**20 // 4,), jnp.float32)
    nbytes = x.nbytes
    # `x + 1` cannot be elided (unlike a copy or `x * 1`): one read and one write per element.
    # Donating the input makes it in place: a fresh output buffer each call would measure the
    # host's page faults (about 15x slower on a CPU) rather than the memory bandwidth.
    add_one = jax.jit(lambda v: v + 1.0, donate_argnums=0)
    bandwidth = 2.0 * nbytes / _median_seconds(add_one, x, repeats, chain=True)
    return DeviceProfile(
        name="measured",
        peak_flops={"float32": flops},
        memory_bandwidth=bandwidth,
        memory_bytes=_memory_bytes(device),
        source=(
            f"measured on {device.device_kind} ({device.platform}) with jax {jax.__version__}: "
            f"median of {repeats} runs of a {matmul_size}^2 float32 matmul (HIGHEST precision) "
            f"and of x + 1 on {copy_mib} MiB in place (read + write bytes / time)"
        ),
    )


def cpu_model() -> str:
    """The CPU's model name as `lscpu` prints it (e.g. "AMD EPYC"), else the platform's.

    Records of speed (and of wall times) state it: the same code runs at different speeds on the
    different CPUs a cloud VM lands on.
    """
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or platform.machine()
    found = re.search(r"^Model name:\s*(.+)$", text, re.MULTILINE)
    return found.group(1).strip() if found else platform.machine()


def host_description() -> str:
    """ "<CPU model>, <architecture>, <N> cores" of this machine, for records and result pages."""
    return f"{cpu_model()}, {platform.machine()}, {os.cpu_count()} cores"
