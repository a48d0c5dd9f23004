"""Inference-time fusion of convolution, batch norm, residual addition and ReLU.

In evaluation mode batch norm is a fixed per-channel affine map, `bn(y) = y * g + h` with
`g = gamma / sqrt(running_var + eps)` and `h = beta - running_mean * g`, so it folds into the
convolution before it: `bn(conv(x, W) + b) = conv(x, W * g) + (b * g + h)` (the scale applies to
each output channel, the last kernel axis). What is left, `relu(conv(x, W') + b' [+ r])`, is one
oneDNN kernel with the bias, the residual sum and the ReLU as post-ops
(`cnnjax.ext.onednn.conv2d_fused`): each activation is written once instead of three times
(conv output, normalized output, rectified sum). The passes it removes took about a fifth of
ResNet-20's evaluation time on a 2-core CPU (profiled: 12 of 56 ms per batch of 128).

`conv_bn_act` is what the models call. It folds only where that computes the same function, in
evaluation mode with the CPU fast path selected for this convolution
(`conv_ops.select_impl` gives "onednn": never on GPU/TPU, never under
`conv_impl("xla")`, so the analysis tools still see the convolution and the batch norm), zero
padding, float32, batch norm being `cnnjax.layers.BatchNorm`. It also stays unfused while a Flax
method interceptor or `capture_intermediates` is active, since those expect the conv and norm
modules to be called (`cnnjax.analysis.variance_shift` intercepts batch norm's inputs), and
inside `with inference_fusion(False):` (`cnnjax.layers.backend`). Folded and unfused outputs
agree to float32 rounding (tests/layers/test_fusion.py).
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnnjax.errors import ShapeError
from cnnjax.layers import conv_ops
from cnnjax.layers.backend import fusion_enabled, layer_name, modules_observed
from cnnjax.layers.conv import Conv2d
from cnnjax.layers.norm import BatchNorm
from cnnjax.layers.shapes import as_tuple, check_window, resolve_padding

# The activations oneDNN applies as a post-op, by identity of the function.
_FUSED_ACTS = {nn.relu: "relu", jax.nn.relu: "relu", nn.relu6: "relu6", jax.nn.relu6: "relu6"}


def fold_batchnorm(kernel, conv_bias, mean, var, scale, bias, epsilon):
    """`(W', b')` with `conv(x, W') + b' == bn(conv(x, W) + b)` for eval-mode batch norm.

    Args:
      kernel: `(*window, C_in / groups, C_out)`.
      conv_bias: `(C_out,)` or None.
      mean, var: running statistics `(C_out,)`.
      scale, bias: batch norm's gamma and beta `(C_out,)`, or None (1 and 0).
      epsilon: batch norm's epsilon.
    """
    gain = jax.lax.rsqrt(var + epsilon)
    if scale is not None:
        gain = gain * scale
    shift = -mean * gain if conv_bias is None else (conv_bias - mean) * gain
    if bias is not None:
        shift = shift + bias
    return kernel * gain, shift


def _foldable(conv: nn.Module, norm: nn.Module, x) -> bool:
    return (
        fusion_enabled()
        # Conv2d and its subclasses (DepthwiseConv2d): the modules whose fields `_folded` reads.
        and isinstance(conv, Conv2d)
        and conv.ndim == 2
        and isinstance(norm, BatchNorm)
        and norm.use_running_average is True
        and conv.padding_mode == "zeros"
        and not conv.flip_kernel
        and conv.dtype in (None, jnp.float32)
        and norm.dtype in (None, jnp.float32)
        and x.dtype == jnp.float32
        and not norm.is_initializing()
        and not modules_observed()
        and "kernel" in conv.variables.get("params", {})
        # A quantized kernel (qwix) goes through the interceptable lax convolution instead.
        and isinstance(conv.variables["params"]["kernel"], jax.Array)
        and "mean" in norm.variables.get("batch_stats", {})
    )


def conv_bn_act(
    conv: nn.Module,
    norm: nn.Module,
    x: jnp.ndarray,
    act: Callable[[jnp.ndarray], jnp.ndarray] | None = None,
    residual: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """`act(norm(conv(x)) + residual)`, as one fused kernel where that is exact and faster.

    Args:
      conv: a bound convolution module (`Conv2d` and its subclasses fold).
      norm: a bound normalization module, constructed with `use_running_average` set.
      x: `(N, H, W, C_in)`.
      act: activation after the sum (None: identity); ReLU and ReLU6 run inside the fused
        kernel, others after it.
      residual: None or a tensor of the output's shape, added before `act`.

    Returns:
      `(N, OH, OW, C_out)`, as `conv(x)` for the shape.
    """
    if _foldable(conv, norm, x):
        params = conv.variables["params"]
        kernel = params["kernel"]
        window = kernel.shape[:2]
        dilation = as_tuple(conv.dilation, 2, "dilation")
        pads = resolve_padding(conv.padding, window, dilation, 2)
        if conv_ops.select_impl(conv.impl, x, kernel, pads, layer_name(conv)) == "onednn":
            return _folded(conv, norm, x, act, residual, kernel, params.get("bias"), pads)
    y = norm(conv(x))
    if residual is not None:
        y = y + residual
    return y if act is None else act(y)


def _folded(conv, norm, x, act, residual, kernel, conv_bias, pads):
    from cnnjax.ext.onednn import conv2d_fused

    name = layer_name(conv)
    strides = as_tuple(conv.strides, 2, "strides")
    dilation = as_tuple(conv.dilation, 2, "dilation")
    if x.ndim != 4:
        raise ShapeError(f"{name}: expected (N, H, W, C) input, got shape {x.shape}")
    spatial = check_window(name, x.shape[1:-1], kernel.shape[:2], strides, pads, dilation)
    stats, norm_params = norm.variables["batch_stats"], norm.variables.get("params", {})
    weights, shift = fold_batchnorm(
        kernel,
        conv_bias,
        stats["mean"],
        stats["var"],
        norm_params.get("scale"),
        norm_params.get("bias"),
        norm.epsilon,
    )
    fused_act = _FUSED_ACTS.get(act)
    groups = x.shape[-1] // kernel.shape[-2]
    if residual is not None:
        out = (x.shape[0], *spatial, kernel.shape[-1])
        if residual.shape != out:
            raise ShapeError(
                f"{name}: residual of shape {residual.shape} cannot be added to the "
                f"output of shape {out}"
            )
    y = conv2d_fused(x, weights, shift, residual, fused_act, strides, pads, dilation, groups)
    return y if fused_act is not None or act is None else act(y)
