"""Truncated-SVD factorization: exact at full rank, optimal below it, and the factored layers
computed (forward and backward) as the convolution of the kernel their factors compose."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import models
from cnnjax.compress import low_rank
from cnnjax.compress.quantize import per_layer
from cnnjax.errors import ConfigError
from cnnjax.layers.conv import Conv2d, DepthwiseConv2d
from cnnjax.layers.shapes import resolve_padding

RNG = np.random.default_rng(0)
KERNEL = RNG.normal(size=(3, 5, 4, 6)).astype(np.float32)  # HWIO, non-square window


def reference_conv(x, kernel, bias, strides, padding, dilation):
    """XLA's convolution of the whole kernel (not cnnjax's conv_ops)."""
    y = jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=strides,
        padding=padding,
        rhs_dilation=dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=jax.lax.Precision.HIGHEST,
    )
    return y + bias


def composed(first, second):
    """The kernel of two factors, by einsum (independent of `low_rank.compose`)."""
    if first.ndim == 2:
        return first @ second
    if second.shape[1] == 1:  # channel: (kh, kw, c, r), (1, 1, r, n)
        return jnp.einsum("hwcr,rn->hwcn", first, second[0, 0])
    return jnp.einsum("hcr,wrn->hwcn", first[:, 0], second[0])  # spatial


@pytest.mark.parametrize(
    "shape, scheme",
    [
        ((20, 7), "channel"),
        (KERNEL.shape, "channel"),
        (KERNEL.shape, "spatial"),
        ((5, 3, 8), "channel"),
    ],
)
def test_full_rank_is_the_identity_and_lower_ranks_are_optimal(shape, scheme):
    kernel = RNG.normal(size=shape).astype(np.float32)
    top = low_rank.max_rank(shape, scheme)
    first, second = low_rank.factor_kernel(kernel, top, scheme)
    np.testing.assert_allclose(low_rank.compose(first, second), kernel, atol=1e-5)
    values = low_rank.singular_values(kernel, scheme)
    matrix = low_rank.as_matrix(kernel, scheme)
    assert values.shape == (top,) and min(matrix.shape) == top
    for rank in range(1, top):
        approx = low_rank.compose(*low_rank.factor_kernel(kernel, rank, scheme))
        # Eckart-Young: the residual's Frobenius norm is that of the dropped singular values.
        residual = np.linalg.norm(low_rank.as_matrix(approx - kernel, scheme))
        np.testing.assert_allclose(residual, np.sqrt(np.sum(values[rank:] ** 2)), rtol=1e-4)
        first, second = low_rank.factor_kernel(kernel, rank, scheme)
        assert first.size + second.size == rank * sum(matrix.shape)


def test_spatial_scheme_is_k_by_1_then_1_by_k():
    first, second = low_rank.factor_kernel(KERNEL, 2, "spatial")
    assert first.shape == (3, 1, 4, 2) and second.shape == (1, 5, 2, 6)
    first, second = low_rank.factor_kernel(KERNEL, 2, "channel")
    assert first.shape == (3, 5, 4, 2) and second.shape == (1, 1, 2, 6)
    # A separable kernel, K[h, w, c, n] = a[h, c] b[w, n] (a k x 1 filter bank, then a 1 x k
    # one), has spatial rank 1: one k x 1 and one 1 x k conv compute it exactly.
    a, b = RNG.normal(size=(3, 4)), RNG.normal(size=(5, 6))
    separable = np.einsum("hc,wn->hwcn", a, b).astype(np.float32)
    values = low_rank.singular_values(separable, "spatial")
    assert values[1] < 1e-5 * values[0]
    assert low_rank.singular_values(separable, "channel")[1] > 0.1 * values[0]
    np.testing.assert_allclose(
        low_rank.compose(*low_rank.factor_kernel(separable, 1, "spatial")), separable, atol=1e-5
    )


CASES = [
    dict(strides=1, padding="same", dilation=1, padding_mode="zeros"),
    dict(strides=(2, 1), padding=((1, 2), (0, 3)), dilation=(1, 2), padding_mode="zeros"),
    dict(strides=2, padding="same", dilation=1, padding_mode="reflect"),
]


@pytest.mark.parametrize("scheme", low_rank.SCHEMES)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_a_factored_conv_is_the_conv_of_its_composed_kernel_forward_and_backward(scheme, case):
    fields = CASES[case]
    layer = Conv2d(features=6, kernel_size=(3, 5), impl="xla", **fields)
    x = jnp.asarray(RNG.normal(size=(2, 9, 11, 4)), jnp.float32)
    params = {"kernel": KERNEL, "bias": RNG.normal(size=6).astype(np.float32)}
    factored = low_rank.factorize({"conv": params}, {"conv": 2}, scheme)["conv"]
    assert set(factored) == {"bias", low_rank.FIRST, low_rank.SECOND}
    cotangent = jnp.asarray(RNG.normal(size=layer.apply({"params": params}, x).shape))

    def ours(p, x):
        with low_rank.factorized():
            return jnp.sum(layer.apply({"params": p}, x) * cotangent)

    mode = {"zeros": "constant", "reflect": "reflect"}[fields["padding_mode"]]
    pads = layer_pads(fields)

    def reference(p, x):
        padded = jnp.pad(x, ((0, 0), *pads, (0, 0)), mode=mode)
        kernel = composed(p[low_rank.FIRST], p[low_rank.SECOND])
        strides, dilation = (
            np.broadcast_to(fields[k], 2).tolist() for k in ("strides", "dilation")
        )
        y = reference_conv(padded, kernel, p["bias"], strides, "VALID", dilation)
        return jnp.sum(y * cotangent)

    np.testing.assert_allclose(ours(factored, x), reference(factored, x), rtol=1e-4)
    grads = jax.grad(ours, argnums=(0, 1))(factored, x)
    expected = jax.grad(reference, argnums=(0, 1))(factored, x)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def layer_pads(fields):
    return resolve_padding(fields["padding"], (3, 5), fields["dilation"], 2)


@pytest.mark.parametrize(
    "name, ranks, scheme",
    [
        ("lenet300_100", {"*": True}, "channel"),
        ("lenet5_caffe", {"*": True}, "channel"),
        ("lenet5_caffe", {"conv*": True}, "spatial"),
    ],
)
def test_a_model_at_full_rank_computes_the_same_logits(name, ranks, scheme):
    model = models.create_model(name, num_classes=10)
    x = jnp.asarray(RNG.normal(size=(3, 28, 28, 1)), jnp.float32)
    variables = model.init(jax.random.key(0), x)
    params = jax.tree.map(np.asarray, variables["params"])
    factored_ranks = {  # each named layer at its own full rank
        path.removesuffix("/kernel"): low_rank.max_rank(kernel.shape, scheme)
        for path, kernel in leaf_kernels(params).items()
        if per_layer(path, ranks) is not None
    }
    assert factored_ranks
    factored = low_rank.factorize(params, factored_ranks, scheme)
    dense_logits = model.apply({"params": params}, x)[0]
    with low_rank.factorized():
        logits = jax.jit(lambda p: model.apply({"params": p}, x)[0])(factored)
    np.testing.assert_allclose(logits, dense_logits, rtol=1e-4, atol=1e-4)
    # Outside the context the factored params are not a model's params.
    with pytest.raises(Exception):  # noqa: B017  Flax: the missing kernel
        model.apply({"params": factored}, x)


def leaf_kernels(params, prefix=""):
    out = {}
    for key, value in params.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(leaf_kernels(value, path + "/"))
        elif key == "kernel" and np.ndim(value) >= 2:
            out[path] = value
    return out


def test_dense_layers_forward_and_backward_against_the_composed_matrix():
    layer = nn.Dense(7)
    x = jnp.asarray(RNG.normal(size=(5, 20)), jnp.float32)
    params = jax.tree.map(np.asarray, layer.init(jax.random.key(1), x)["params"])
    factored = low_rank.factorize({"fc": params}, {"fc": 3})["fc"]

    def ours(p, x):
        with low_rank.factorized():
            return jnp.sum(jnp.tanh(layer.apply({"params": p}, x)))

    def reference(p, x):
        return jnp.sum(jnp.tanh(x @ (p[low_rank.FIRST] @ p[low_rank.SECOND]) + p["bias"]))

    np.testing.assert_allclose(ours(factored, x), reference(factored, x), rtol=1e-5)
    for got, want in zip(
        jax.tree.leaves(jax.grad(ours, argnums=(0, 1))(factored, x)),
        jax.tree.leaves(jax.grad(reference, argnums=(0, 1))(factored, x)),
        strict=True,
    ):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_bad_ranks_schemes_globs_and_layers_are_refused():
    params = {"fc": {"kernel": np.ones((4, 3), np.float32)}}
    with pytest.raises(ConfigError, match=r"rank must be an integer in 1 \.\. 3"):
        low_rank.factorize(params, {"fc": 4})
    with pytest.raises(ConfigError, match=r"rank must be an integer in 1 \.\. 3"):
        low_rank.factorize(params, {"fc": 0})
    with pytest.raises(ConfigError, match="unknown low-rank scheme 'rows'"):
        low_rank.factorize(params, {"fc": 1}, "rows")
    with pytest.raises(ConfigError, match="spatial scheme factors 2-D convolutions"):
        low_rank.factorize(params, {"fc": 1}, "spatial")
    with pytest.raises(ConfigError, match=r"ranks \['conv\*'\] match no kernel"):
        low_rank.factorize(params, {"fc": 1, "conv*": 2})
    with pytest.raises(ConfigError, match="non-empty"):
        low_rank.factorize(params, {})
    depthwise = DepthwiseConv2d(features=4, kernel_size=3)
    x = jnp.ones((1, 5, 5, 4))
    kernel = np.ones((3, 3, 1, 4), np.float32)
    factored = low_rank.factorize({"kernel": kernel, "bias": np.zeros(4)}, {"*": 1})
    with low_rank.factorized(), pytest.raises(ConfigError, match="grouped convolution"):
        depthwise.apply({"params": factored}, x)
