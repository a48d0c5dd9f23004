"""The oneDNN convolution path against XLA's native convolution, selection, and the fallback."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from jax import lax

from cnnjax import models
from cnnjax.errors import ConfigError
from cnnjax.ext import onednn
from cnnjax.layers import conv_impl
from cnnjax.layers.conv_ops import conv, select_impl
from tests.conftest import ROOT
from tests.layers.helpers import normal, rng_key

needs_onednn = pytest.mark.skipif(
    not onednn.available(), reason=f"oneDNN extension unavailable: {onednn.unavailable_reason()}"
)

# (input shape, kernel shape, strides, pads, dilation, groups)
CASES = {
    "3x3": ((2, 9, 9, 8), (3, 3, 8, 16), (1, 1), ((1, 1), (1, 1)), (1, 1), 1),
    "strided_asymmetric": ((2, 10, 9, 8), (3, 3, 8, 12), (2, 2), ((0, 1), (1, 0)), (1, 1), 1),
    "dilated": ((2, 12, 12, 4), (3, 3, 4, 8), (1, 1), ((2, 2), (2, 2)), (2, 2), 1),
    "grouped": ((2, 8, 8, 8), (3, 3, 2, 12), (2, 1), ((1, 1), (1, 1)), (1, 1), 4),
    "depthwise": ((2, 9, 9, 6), (3, 3, 1, 6), (2, 2), ((1, 1), (1, 1)), (1, 1), 6),
    "depthwise_x2": ((2, 7, 7, 4), (5, 5, 1, 8), (1, 1), ((2, 2), (2, 2)), (1, 1), 4),
    "pointwise_strided": ((2, 8, 8, 16), (1, 1, 16, 8), (2, 2), ((0, 0), (0, 0)), (1, 1), 1),
    "1x3_then_3x1": ((2, 6, 6, 4), (1, 3, 4, 4), (1, 1), ((0, 0), (1, 1)), (1, 1), 1),
    "floored_output": ((1, 8, 8, 3), (2, 2, 3, 5), (3, 3), ((0, 0), (0, 0)), (1, 1), 1),
    "1d_causal": ((3, 20, 4), (3, 4, 6), (1,), ((4, 0),), (2,), 1),
}


def _reference(x, w, strides, pads, dilation, groups):
    numbers = ("NWC", "WIO", "NWC") if x.ndim == 3 else ("NHWC", "HWIO", "NHWC")
    return lax.conv_general_dilated(
        x,
        w,
        strides,
        pads,
        rhs_dilation=dilation,
        dimension_numbers=numbers,
        feature_group_count=groups,
        precision=lax.Precision.HIGHEST,
    )


def _relative(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


@needs_onednn
@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_and_gradients_equal_the_native_convolution(name):
    x_shape, w_shape, strides, pads, dilation, groups = CASES[name]
    seed = 10 * len(name)
    x, w = normal(seed, *x_shape), normal(seed + 1, *w_shape)

    def ours(x, w):
        return onednn.conv2d(x, w, strides, pads, dilation, groups)

    def ref(x, w):
        return _reference(x, w, strides, pads, dilation, groups)

    y = jax.jit(ours)(x, w)
    assert y.shape == ref(x, w).shape
    assert _relative(y, ref(x, w)) < 1e-5
    cotangent = normal(seed + 2, *y.shape)

    def loss(fn):
        return lambda x, w: jnp.sum(jnp.tanh(fn(x, w)) * cotangent)

    got = jax.jit(jax.grad(loss(ours), argnums=(0, 1)))(x, w)
    want = jax.grad(loss(ref), argnums=(0, 1))(x, w)
    for g, r in zip(got, want):
        assert _relative(g, r) < 1e-5


@needs_onednn
def test_vmap_and_shared_kernels():
    x_shape, w_shape, strides, pads, dilation, groups = CASES["grouped"]
    x, w = normal(0, 3, *x_shape), normal(1, *w_shape)
    got = jax.vmap(lambda x: onednn.conv2d(x, w, strides, pads, dilation, groups))(x)
    want = jax.vmap(lambda x: _reference(x, w, strides, pads, dilation, groups))(x)
    assert _relative(got, want) < 1e-5


@needs_onednn
def test_auto_selects_onednn_on_cpu_and_xla_when_asked_or_unsupported():
    x, w = jnp.zeros((1, 8, 8, 3)), jnp.zeros((3, 3, 3, 4))
    pads = ((1, 1), (1, 1))
    assert jax.default_backend() == "cpu"
    assert select_impl("auto", x, w, pads) == "onednn"
    with conv_impl("xla"):
        assert select_impl("auto", x, w, pads) == "xla"
        assert select_impl("onednn", x, w, pads) == "onednn"  # asked for by name
    with conv_impl("xla", force=True):
        assert select_impl("onednn", x, w, pads) == "xla"
    half = x.astype(jnp.bfloat16), w.astype(jnp.bfloat16)
    assert select_impl("auto", *half, pads) == "xla"
    assert select_impl("auto", x, w, ((-1, 0), (0, 0))) == "xla"
    assert select_impl("explicit", x, w, pads) == "explicit"
    with pytest.raises(ConfigError, match="impl 'onednn' needs float32"):
        select_impl("onednn", *half, pads)
    with pytest.raises(ConfigError, match="unknown conv impl 'mkl'"):
        select_impl("mkl", x, w, pads)
    # The FFI call is what runs: the jaxpr holds no conv_general_dilated.
    text = str(jax.make_jaxpr(lambda x: conv(x, w, padding=1))(x))
    assert "conv_general_dilated" not in text and "cnnjax_conv_fwd" in text


@needs_onednn
@pytest.mark.parametrize(
    "name, input_shape",
    [
        ("resnet20", (32, 32, 3)),
        # Slow (two compiled gradients of a deep net); the depthwise convs it adds are checked
        # one by one in test_forward_and_gradients_equal_the_native_convolution.
        pytest.param("mobilenet_v2", (32, 32, 3), marks=pytest.mark.slow),
        ("tcn1d", (64, 2)),
    ],
)
def test_models_give_the_same_logits_and_gradients(name, input_shape):
    model = models.create_model(name)
    x = normal(0, 2, *input_shape)
    with conv_impl("xla", force=True):  # one compiled init: eager init compiles every initializer
        variables = jax.jit(lambda x: model.init(rng_key(1), x, train=False))(x)

    def loss(params, x):  # eval mode: smooth in the inputs, unlike batch statistics at init
        logits, _ = model.apply({**variables, "params": params}, x, train=False)
        return jnp.sum(jax.nn.log_softmax(logits)[:, 0]), logits

    results = {}
    for impl in ("xla", "onednn"):
        with conv_impl(impl, force=True):
            results[impl] = jax.jit(jax.grad(loss, has_aux=True))(variables["params"], x)
    (g_ours, logits_ours), (g_ref, logits_ref) = results["onednn"], results["xla"]
    assert _relative(logits_ours, logits_ref) < 1e-4
    errors = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), g_ours, g_ref)
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(g_ref))
    assert max(jax.tree.leaves(errors)) < 1e-3 * scale


def _run(code, **env):
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
    )


def test_switched_off_falls_back_to_xla(tmp_path):
    code = (
        "import jax.numpy as jnp\n"
        "from cnnjax.ext import onednn\n"
        "from cnnjax.layers.conv_ops import conv, select_impl\n"
        "x, w = jnp.ones((1, 5, 5, 2)), jnp.ones((3, 3, 2, 1))\n"
        "assert not onednn.available() and 'CNNJAX_ONEDNN=0' in onednn.unavailable_reason()\n"
        "assert select_impl('auto', x, w, ((1, 1), (1, 1))) == 'xla'\n"
        "assert float(conv(x, w, padding=1)[0, 2, 2, 0]) == 18.0\n"
        "try:\n"
        "    conv(x, w, padding=1, impl='onednn')\n"
        "except onednn.Unavailable as error:\n"
        "    print('unavailable:', error)\n"
    )
    result = _run(code, CNNJAX_ONEDNN="0")
    assert result.returncode == 0, result.stderr
    assert "unavailable: switched off" in result.stdout


def test_missing_compiler_is_reported_not_raised(tmp_path):
    code = "from cnnjax.ext import onednn\nprint(onednn.available(), onednn.unavailable_reason())\n"
    result = _run(code, CXX="no-such-compiler", CNNJAX_CACHE_DIR=str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("False")
    assert "no C++ compiler" in result.stdout or "oneDNN not found" in result.stdout
