"""Optional CPU fast path: oneDNN convolutions called from XLA through the FFI (`jax.ffi`).

XLA:CPU's convolution gradients are several times slower than PyTorch's oneDNN kernels (the
weight gradient most of all). This module compiles `onednn_conv.cc` (three FFI handlers:
forward, backward-data, backward-weights) against the oneDNN library of the `onednn` extra,
registers them with XLA and exposes `conv2d`, a `jax.custom_vjp` convolution that calls them.
`cnnjax.layers.conv_ops.conv` uses it automatically on the CPU backend (impl "auto").

Nothing here is required. The extension is built lazily, at its first use, with the system C++
compiler (`$CXX` or `g++`, about 5 s) into a cache folder (`$CNNJAX_CACHE_DIR`, else
`$XDG_CACHE_HOME/cnnjax`, else `~/.cache/cnnjax`), under a name that hashes the source, the
jaxlib version, the oneDNN library and the compiler. When any piece is missing (no compiler,
no oneDNN, not Linux x86-64, a failed build), `available()` is False, `unavailable_reason()`
says why, and every convolution uses XLA's native path. `CNNJAX_ONEDNN=0` switches it off.

oneDNN is found under `$CNNJAX_ONEDNN_ROOT`, else the environment's prefix (where the pip
wheels `onednn-cpu-gomp` and `onednn-devel-cpu-gomp` put `lib/libdnnl.so.3` and
`include/oneapi/dnnl/dnnl.hpp`).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

SOURCE = pathlib.Path(__file__).with_name("onednn_conv.cc")
TARGETS = {
    "fwd": "cnnjax_conv_fwd",
    "bwd_data": "cnnjax_conv_bwd_data",
    "bwd_weights": "cnnjax_conv_bwd_weights",
    "fused": "cnnjax_conv_fused",
    "fused_add": "cnnjax_conv_fused_add",
}
_log = logging.getLogger(__name__)
_state: dict = {}


class Unavailable(RuntimeError):
    """The extension cannot be used here; the message says why."""


def find_onednn() -> tuple[pathlib.Path, pathlib.Path]:
    """(include folder, library folder) of oneDNN.

    Raises:
      Unavailable: when no folder holds both `include/oneapi/dnnl/dnnl.hpp` and
        `lib/libdnnl.so.3`.
    """
    roots = [os.environ.get("CNNJAX_ONEDNN_ROOT"), sys.prefix, sys.base_prefix]
    for root in filter(None, roots):
        include, lib = pathlib.Path(root, "include"), pathlib.Path(root, "lib")
        if (include / "oneapi" / "dnnl" / "dnnl.hpp").is_file() and (lib / "libdnnl.so.3").exists():
            return include, lib
    raise Unavailable(
        "oneDNN not found (looked in $CNNJAX_ONEDNN_ROOT and the Python prefix); install it with "
        "pip install -e '.[onednn]'"
    )


def cache_dir() -> pathlib.Path:
    """Where built extensions are kept."""
    if os.environ.get("CNNJAX_CACHE_DIR"):
        return pathlib.Path(os.environ["CNNJAX_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(base, "cnnjax")


def build(include: pathlib.Path, lib: pathlib.Path) -> pathlib.Path:
    """Compiles the extension (or finds it already built) and returns the shared library's path.

    Raises:
      Unavailable: no C++ compiler, or the compilation failed (its output is in the message).
    """
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        raise Unavailable("no C++ compiler ($CXX or g++) to build the oneDNN extension")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    digest = hashlib.sha256()
    for part in (
        SOURCE.read_bytes(),
        jax.lib.__version__.encode(),
        str(lib).encode(),
        version.encode(),
    ):
        digest.update(part)
    target = cache_dir() / f"onednn_conv-{digest.hexdigest()[:16]}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build under a temporary name and rename: concurrent builds (pytest workers) never load a
    # half-written library.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    command = [
        compiler,
        "-O2",
        "-shared",
        "-fPIC",
        "-std=c++17",
        "-w",
        f"-I{jax.ffi.include_dir()}",
        f"-I{include}",
        str(SOURCE),
        "-o",
        tmp,
        f"-L{lib}",
        "-l:libdnnl.so.3",
        f"-Wl,-rpath,{lib}",
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        os.unlink(tmp)
        raise Unavailable(f"building the oneDNN extension failed:\n{result.stderr[-2000:]}")
    os.replace(tmp, target)
    return target


def load() -> ctypes.CDLL:
    """Builds (once), loads and registers the extension; returns the loaded library.

    Raises:
      Unavailable: with the reason, when it cannot be used on this machine.
    """
    if "lib" in _state:
        return _state["lib"]
    if "error" in _state:
        raise _state["error"]
    try:
        if os.environ.get("CNNJAX_ONEDNN", "1") == "0":
            raise Unavailable("switched off by CNNJAX_ONEDNN=0")
        if sys.platform != "linux" or platform.machine() != "x86_64":
            raise Unavailable(
                f"built for Linux x86-64 only, not {sys.platform} {platform.machine()}"
            )
        lib = ctypes.CDLL(str(build(*find_onednn())))
        for name in TARGETS.values():
            jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(lib, name)), platform="cpu")
        lib.cnnjax_onednn_implementations.restype = ctypes.c_char_p
    except (Unavailable, OSError, AttributeError) as error:
        _state["error"] = error if isinstance(error, Unavailable) else Unavailable(str(error))
        _log.info("cnnjax oneDNN convolutions unavailable: %s", _state["error"])
        raise _state["error"] from None
    _state["lib"] = lib
    return lib


def available() -> bool:
    """Whether the oneDNN convolutions can be used (builds the extension on first call)."""
    try:
        load()
    except Unavailable:
        return False
    return True


def unavailable_reason() -> str | None:
    """Why `available()` is False (None when it is True)."""
    return None if available() else str(_state["error"])


def version() -> str:
    """oneDNN's version, e.g. "3.2.0"."""
    v = load().cnnjax_onednn_version()
    return f"{v // 10000}.{v // 100 % 100}.{v % 100}"


def implementations() -> list[str]:
    """The kernels oneDNN chose for the convolutions run so far ("key -> kernel" lines)."""
    return load().cnnjax_onednn_implementations().decode().splitlines()


def supports(x, kernel, pads, precision=None) -> bool:
    """Whether `conv2d` can compute this convolution: float32, 1-D or 2-D, no negative padding."""
    return (
        x.dtype == jnp.float32
        and kernel.dtype == jnp.float32
        and x.ndim in (3, 4)
        and min(p for pair in pads for p in pair) >= 0
    )


def _attributes(strides, pads, dilation, groups) -> dict:
    return dict(
        strides=np.asarray(strides, np.int64),
        pad_lo=np.asarray([lo for lo, _ in pads], np.int64),
        pad_hi=np.asarray([hi for _, hi in pads], np.int64),
        dilation=np.asarray(dilation, np.int64),
        groups=np.int64(groups),
    )


def _call(kind: str, a, b, out_shape, config):
    # "sequential": under vmap each batch element is its own call (correct, not fast).
    result = jax.ShapeDtypeStruct(out_shape, jnp.float32)
    call = jax.ffi.ffi_call(TARGETS[kind], result, vmap_method="sequential")
    return call(a, b, **_attributes(*config))


def _config(strides, pads, dilation, groups) -> tuple:
    """The hashable (static) convolution settings the FFI calls and custom VJPs take."""
    return (
        tuple(map(int, strides)),
        tuple(tuple(map(int, p)) for p in pads),
        tuple(map(int, dilation)),
        int(groups),
    )


def _output_shape(x_shape, w_shape, strides, pads, dilation):
    spatial = [
        (size + lo + hi - d * (k - 1) - 1) // s + 1
        for size, k, s, (lo, hi), d in zip(x_shape[1:3], w_shape[:2], strides, pads, dilation)
    ]
    return (x_shape[0], *spatial, w_shape[-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv(x, kernel, config):
    return _call("fwd", x, kernel, _output_shape(x.shape, kernel.shape, *config[:3]), config)


def _conv_forward(x, kernel, config):
    return _conv(x, kernel, config), (x, kernel)


def _conv_backward(config, residuals, dy):
    x, kernel = residuals
    return _call("bwd_data", dy, kernel, x.shape, config), _call(
        "bwd_weights", x, dy, kernel.shape, config
    )


_conv.defvjp(_conv_forward, _conv_backward)


def conv2d(x, kernel, strides, pads, dilation, groups: int = 1):
    """oneDNN cross-correlation, the same function as `lax.conv_general_dilated` in NHWC/HWIO.

    Args:
      x: `(N, H, W, C)` float32, or `(N, L, C)` (run as a 1 x L image).
      kernel: `(KH, KW, C / groups, O)` (or `(K, C / groups, O)`) float32.
      strides, dilation: one int per spatial axis.
      pads: `(before, after)` per spatial axis, non-negative.
      groups: feature groups (`C`: depthwise).

    Returns:
      `(N, OH, OW, O)` (or `(N, OL, O)`). Differentiable once in reverse mode (`jax.grad`,
      `jax.vjp`); forward mode (`jax.jvp`) is not defined for it: use impl "xla" there.

    Raises:
      Unavailable: when the extension cannot be used on this machine.
    """
    load()
    if x.ndim == 3:  # 1-D as a 1-row image
        y = conv2d(x[:, None], kernel[None], (1, *strides), ((0, 0), *pads), (1, *dilation), groups)
        return y[:, 0]
    config = _config(strides, pads, dilation, groups)
    return _conv(x, kernel, config)


# Activations the fused kernel applies (oneDNN eltwise post-ops), by the FFI attribute's code.
FUSED_ACTS = {None: 0, "relu": 1, "relu6": 2}


def _fused_call(x, kernel, bias, residual, config, act):
    out = jax.ShapeDtypeStruct(_output_shape(x.shape, kernel.shape, *config[:3]), jnp.float32)
    attributes = dict(_attributes(*config), act=np.int64(FUSED_ACTS[act]))
    if residual is None:
        call = jax.ffi.ffi_call(TARGETS["fused"], out, vmap_method="sequential")
        return call(x, kernel, bias, **attributes)
    # The residual's buffer becomes the output: oneDNN's sum post-op adds to it in place.
    call = jax.ffi.ffi_call(
        TARGETS["fused_add"], out, vmap_method="sequential", input_output_aliases={3: 0}
    )
    return call(x, kernel, bias, residual, **attributes)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _fused(x, kernel, bias, residual, config, act):
    return _fused_call(x, kernel, bias, residual, config, act)


def _fused_forward(x, kernel, bias, residual, config, act):
    y = _fused_call(x, kernel, bias, residual, config, act)
    return y, (x, kernel, y, residual is None)


def _fused_backward(config, act, residuals, dy):
    x, kernel, y, no_residual = residuals
    if act == "relu":
        dy = jnp.where(y > 0, dy, 0.0)
    elif act == "relu6":
        dy = jnp.where((y > 0) & (y < 6), dy, 0.0)
    dx = _call("bwd_data", dy, kernel, x.shape, config)
    dkernel = _call("bwd_weights", x, dy, kernel.shape, config)
    return dx, dkernel, dy.sum((0, 1, 2)), None if no_residual else dy


_fused.defvjp(_fused_forward, _fused_backward)


def conv2d_fused(
    x,
    kernel,
    bias,
    residual=None,
    act=None,
    strides=(1, 1),
    pads=((0, 0), (0, 0)),
    dilation=(1, 1),
    groups: int = 1,
):
    """`act(conv2d(x, kernel) + bias [+ residual])` as one oneDNN kernel (bias, sum and
    activation as post-ops), so the output is written once: an inference-time fusion (see
    `cnnjax.layers.fusion`).

    Args:
      x, kernel, strides, pads, dilation, groups: as for `conv2d` (2-D only).
      bias: `(O,)` float32.
      residual: None or an `(N, OH, OW, O)` float32 tensor added before the activation.
      act: None, "relu" or "relu6" (`FUSED_ACTS`).

    Returns:
      `(N, OH, OW, O)`. Differentiable in reverse mode (the backward pass uses the unfused
      backward-data and backward-weights kernels).
    """
    load()
    config = _config(strides, pads, dilation, groups)
    if act not in FUSED_ACTS:
        raise ValueError(f"fused activation must be one of {list(FUSED_ACTS)}, got {act!r}")
    return _fused(x, kernel, bias, residual, config, act)
