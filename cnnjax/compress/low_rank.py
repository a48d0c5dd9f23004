"""Low-rank factorization of trained layers by truncated SVD, applied to any registry model.

A weight matrix `W (m, n)` of rank `r` is the product of `U_r sqrt(S_r) (m, r)` and
`sqrt(S_r) V_r^T (r, n)`: `r (m + n)` numbers instead of `m n`, and by Eckart-Young the best rank-r
approximation in the Frobenius (and spectral) norm. Layers become two layers:

* dense `(in, out)`: `in -> r -> out`.
* convolution, scheme "channel": the `(k_h k_w C_in, N)` reshaped kernel, so a `k_h x k_w` conv to
  `r` channels then a `1 x 1` conv to `N` (the output-channel decomposition; Jaderberg et al.
  2014's scheme 1 shape, Zhang et al. 2016).
* convolution, scheme "spatial": the `(k_h C_in, k_w N)` rearranged kernel, so a `k_h x 1` conv to
  `r` channels then a `1 x k_w` conv to `N` (Jaderberg et al. 2014's scheme 2, whose closed-form
  SVD solution is Tai et al. 2016's): the course's `k x 1` then `1 x k` factorization, exact at
  full rank `min(k_h C_in, k_w N)`.

`factorize(params, ranks, scheme)` replaces the chosen layers' `kernel` by the two factors
(`low_rank_first`, `low_rank_second`; the bias stays), and the model runs them inside
`with factorized():`, a Flax method interceptor that computes those layers as their two factors
and leaves every other layer alone, so no model is copied or given new fields. Biases, strides,
padding (any `padding_mode` but a non-zero "constant" for "spatial"), dilation and the
convolution backend carry over; grouped convolutions are refused.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from cnnjax.compress.quantize import per_layer
from cnnjax.errors import ConfigError, unknown_choice
from cnnjax.layers import conv_ops
from cnnjax.layers.conv import Conv1d, Conv2d, DepthwiseConv2d
from cnnjax.layers.shapes import as_tuple, resolve_padding

SCHEMES = ("channel", "spatial")
FIRST, SECOND = "low_rank_first", "low_rank_second"


def _check_scheme(scheme: str, kernel_shape) -> None:
    if scheme not in SCHEMES:
        raise ConfigError(unknown_choice("low-rank scheme", scheme, SCHEMES))
    if scheme == "spatial" and len(kernel_shape) != 4:
        raise ConfigError(
            f"the spatial scheme factors 2-D convolutions (HWIO kernels), got a kernel of shape "
            f"{tuple(kernel_shape)}"
        )


def as_matrix(kernel, scheme: str = "channel") -> np.ndarray:
    """The matrix whose rank-r approximation is the factorized layer.

    Args:
      kernel: `(in, out)` dense or `(*window, C_in, N)` convolution kernel.
      scheme: "channel" (`(prod(window) C_in, N)`) or "spatial" (2-D only: `(k_h C_in, k_w N)`,
        row `(h, c)`, column `(w, n)`).
    """
    kernel = np.asarray(kernel)
    _check_scheme(scheme, kernel.shape)
    if scheme == "channel" or kernel.ndim == 2:
        return kernel.reshape(-1, kernel.shape[-1])
    kh, kw, c, n = kernel.shape
    return kernel.transpose(0, 2, 1, 3).reshape(kh * c, kw * n)


def max_rank(kernel_shape, scheme: str = "channel") -> int:
    """The rank at which the factorization is exact: the smaller side of `as_matrix`."""
    kernel_shape = tuple(kernel_shape)
    _check_scheme(scheme, kernel_shape)
    if scheme == "spatial":
        kh, kw, c, n = kernel_shape
        return min(kh * c, kw * n)
    return min(int(np.prod(kernel_shape[:-1])), kernel_shape[-1])


def singular_values(kernel, scheme: str = "channel") -> np.ndarray:
    """Descending singular values of the layer's matrix (`as_matrix`), in float64."""
    return np.linalg.svd(as_matrix(kernel, scheme).astype(np.float64), compute_uv=False)


def factor_kernel(kernel, rank: int, scheme: str = "channel") -> tuple[np.ndarray, np.ndarray]:
    """The two kernels of the best rank-`rank` factorization of one layer.

    Args:
      kernel: `(in, out)` or `(*window, C_in, N)`.
      rank: intermediate width, 1 .. `max_rank`.
      scheme: "channel" or "spatial" (see the module docstring).

    Returns:
      `(first, second)`: dense `(in, r)`, `(r, out)`; channel `(*window, C_in, r)`,
      `(1, .., 1, r, N)`; spatial `(k_h, 1, C_in, r)`, `(1, k_w, r, N)`; in the kernel's dtype.

    Raises:
      ConfigError: an unknown scheme, or a rank outside 1 .. `max_rank`.
    """
    kernel = np.asarray(kernel)
    top = max_rank(kernel.shape, scheme)
    if isinstance(rank, bool) or not isinstance(rank, int | np.integer) or not 1 <= rank <= top:
        raise ConfigError(
            f"rank must be an integer in 1 .. {top} for a kernel of shape {kernel.shape} "
            f"(scheme {scheme!r}), got {rank!r}"
        )
    u, s, vt = np.linalg.svd(as_matrix(kernel, scheme).astype(np.float64), full_matrices=False)
    root = np.sqrt(s[:rank])
    a, b = u[:, :rank] * root, root[:, None] * vt[:rank]  # the scale split evenly: both trainable
    if kernel.ndim == 2:
        first, second = a, b
    elif scheme == "channel":
        first = a.reshape(*kernel.shape[:-1], rank)
        second = b.reshape(*(1,) * (kernel.ndim - 2), rank, kernel.shape[-1])
    else:
        kh, kw, c, n = kernel.shape
        first = a.reshape(kh, c, rank)[:, None]
        second = b.reshape(rank, kw, n).transpose(1, 0, 2)[None]
    return first.astype(kernel.dtype), second.astype(kernel.dtype)


def factorize(params, ranks: Mapping[str, int], scheme: str = "channel"):
    """`params` with each layer that `ranks` names replaced by its rank-r factors.

    Args:
      params: a model's params.
      ranks: `{glob: rank}`, matched against each kernel's path (`"fc1"`, `"stage*/conv2"`).
      scheme: how convolutions are factored; dense layers have one way.

    Returns:
      A new tree: a factored layer holds `low_rank_first`, `low_rank_second` (and its bias) in
      place of `kernel`. Run the model on it inside `with factorized():`.

    Raises:
      ConfigError: a glob that names no kernel, a bad rank, or an unknown scheme.
    """
    if not isinstance(ranks, Mapping) or not ranks:
        raise ConfigError(f"ranks must be a non-empty {{glob: rank}} mapping, got {ranks!r}")
    used = set()

    def visit(node, path):
        if not isinstance(node, Mapping):
            return node
        out = {key: visit(value, (*path, key)) for key, value in node.items()}
        kernel = node.get("kernel")
        if kernel is None or isinstance(kernel, Mapping) or np.ndim(kernel) < 2:
            return out
        name = "/".join((*path, "kernel"))
        rank = per_layer(name, ranks)
        if rank is None:
            return out
        used.update(pattern for pattern in ranks if per_layer(name, {pattern: True}))
        first, second = factor_kernel(kernel, rank, scheme)
        del out["kernel"]
        out[FIRST], out[SECOND] = jnp.asarray(first), jnp.asarray(second)
        return out

    result = visit(params, ())
    unused = [pattern for pattern in ranks if pattern not in used]
    if unused:
        raise ConfigError(f"ranks {unused} match no kernel of the params")
    return result


def compose(first, second) -> np.ndarray:
    """The kernel the two factors compute (the inverse of `factor_kernel` at full rank)."""
    first, second = np.asarray(first), np.asarray(second)
    if first.ndim == 2:
        return first @ second
    rank = first.shape[-1]
    if all(size == 1 for size in second.shape[:-2]):  # channel scheme
        return np.tensordot(first, second.reshape(rank, -1), axes=1)
    kh, _, c, _ = first.shape
    _, kw, _, n = second.shape
    matrix = first.reshape(kh * c, rank) @ second[0].transpose(1, 0, 2).reshape(rank, kw * n)
    return matrix.reshape(kh, c, kw, n).transpose(0, 2, 1, 3)


def _dense(module: nn.Dense, x, first, second):
    dtype = module.dtype or x.dtype
    y = jnp.dot(x.astype(dtype), first.astype(dtype), precision=module.precision)
    y = jnp.dot(y, second.astype(dtype), precision=module.precision)
    if module.use_bias:
        y = y + module.get_variable("params", "bias").astype(dtype)
    return y


def _conv(module, x, first, second):
    name = getattr(module, "name", None) or type(module).__name__
    if isinstance(module, DepthwiseConv2d) or module.groups != 1:
        raise ConfigError(f"{name}: a grouped convolution cannot be factored (groups != 1)")
    ndim = module.ndim
    window = as_tuple(module.kernel_size, ndim, "kernel_size")
    strides = as_tuple(module.strides, ndim, "strides")
    dilation = as_tuple(module.dilation, ndim, "dilation")
    pads = resolve_padding(module.padding, window, dilation, ndim)
    dtype = module.dtype or x.dtype
    bias = module.get_variable("params", "bias") if module.use_bias else None
    common = dict(
        padding_mode=module.padding_mode,
        padding_value=module.padding_value,
        flip_kernel=module.flip_kernel,
        precision=module.precision,
        impl=module.impl,
    )
    if all(size == 1 for size in second.shape[:-2]):  # channel: window conv, then 1 x 1
        steps = [(first, strides, pads, dilation), (second, 1, "valid", 1)]
    else:  # spatial: the rows' k_h x 1 conv, then the columns' 1 x k_w
        if module.padding_mode == "constant" and np.any(np.asarray(module.padding_value) != 0):
            raise ConfigError(f"{name}: the spatial scheme cannot keep a non-zero constant border")
        (sh, sw), (dh, dw), (ph, pw) = strides, dilation, pads
        steps = [
            (first, (sh, 1), (ph, (0, 0)), (dh, 1)),
            (second, (1, sw), ((0, 0), pw), (1, dw)),
        ]
    y = x.astype(dtype)
    for i, (kernel, step, padding, dilate) in enumerate(steps):
        y = conv_ops.conv(
            y,
            kernel.astype(dtype),
            None if bias is None or i == 0 else bias.astype(dtype),
            strides=step,
            padding=padding,
            dilation=dilate,
            layer=f"{name}/{FIRST if i == 0 else SECOND}",
            **common,
        )
    return y


def _interceptor(next_fun, args, kwargs, context):
    module = context.module
    if (
        context.method_name != "__call__"
        or not isinstance(module, nn.Dense | Conv1d | Conv2d)
        or not module.has_variable("params", FIRST)
    ):
        return next_fun(*args, **kwargs)
    first = module.get_variable("params", FIRST)
    second = module.get_variable("params", SECOND)
    (x,) = args
    if isinstance(module, nn.Dense):
        return _dense(module, x, first, second)
    return _conv(module, x, first, second)


@contextlib.contextmanager
def factorized():
    """Inside it, every Dense, Conv1d and Conv2d whose params hold `low_rank_first` runs as its
    two factors (trace or jit the model inside it; compiled functions keep what they traced)."""
    with nn.intercept_methods(_interceptor):
        yield
