"""Normalization layers against numpy loops and `torch.nn` / `torch.nn.functional`."""

import contextlib
import functools

import flax.linen as nn
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from jax.test_util import check_grads

from cnnjax.errors import ConfigError, ShapeError
from cnnjax.layers import conv_impl
from cnnjax.layers.dropout import ChannelDropout
from cnnjax.layers.norm import (
    BatchNorm,
    FlaxBatchNorm,
    LayerNorm,
    LocalResponseNorm,
    TorchBatchNorm,
    batch_norm,
    layer_norm,
    local_response_norm,
)
from tests.layers.helpers import rng_key

TOL = dict(rtol=1e-5, atol=1e-5)  # float32 layers against float64 references


def normal(seed, *shape, loc=0.0, scale=1.0):
    return np.random.default_rng(seed).normal(loc, scale, size=shape).astype(np.float32)


def with_params(variables, seed):
    """Replaces the params (not the batch statistics) with random values."""
    rng = np.random.default_rng(seed)
    params = jax.tree.map(
        lambda v: rng.normal(size=v.shape).astype(np.float32), variables["params"]
    )
    return {**variables, "params": params}


def numpy_train_step(x, scale, bias, running_mean, running_var, unbiased, eps=1e-5, momentum=0.9):
    """BatchNorm training step, per channel: normalise with biased stats, update running ones."""
    x = x.astype(np.float64).reshape(-1, x.shape[-1])
    m = x.shape[0]
    mean = x.sum(0) / m
    var = ((x - mean) ** 2).sum(0) / m
    y = (x - mean) / np.sqrt(var + eps) * scale + bias
    batch_var = var * m / (m - 1) if unbiased else var
    new_mean = momentum * running_mean + (1 - momentum) * mean
    new_var = momentum * running_var + (1 - momentum) * batch_var
    return y, new_mean, new_var


# --- BatchNorm -------------------------------------------------------------------------------


def test_batchnorm_keeps_pytorch_defaults():
    assert (BatchNorm().momentum, BatchNorm().epsilon) == (0.9, 1e-5)
    assert (TorchBatchNorm().momentum, TorchBatchNorm().epsilon) == (0.9, 1e-5)


@settings(max_examples=20, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4), st.integers(1, 5)),
    unbiased=st.sampled_from([None, False, True]),  # None: Flax's own BatchNorm
    offset=st.sampled_from([0.0, 50.0]),
)
def test_batchnorm_train_step_matches_numpy(shape, unbiased, offset):
    # Flax's one-pass variance E[x^2] - E[x]^2 loses every digit at a large offset when a channel
    # has a few values of small spread; ours falls back to two passes there.
    assume(unbiased is not None or offset == 0.0)
    if np.prod(shape[:-1]) < 2:
        shape = (2, *shape[1:])
    module = FlaxBatchNorm() if unbiased is None else TorchBatchNorm(unbiased_running_var=unbiased)
    x = normal(0, *shape, loc=offset, scale=2.0)
    channels = shape[-1]
    variables = {
        "params": {"scale": normal(1, channels), "bias": normal(2, channels)},
        "batch_stats": {
            "mean": np.zeros(channels, np.float32),
            "var": np.ones(channels, np.float32),
        },
    }
    train = jax.jit(functools.partial(module.apply, use_running_average=False, mutable=True))
    y, updates = train(variables, x)
    p = variables["params"]
    ref_y, ref_mean, ref_var = numpy_train_step(
        x, p["scale"], p["bias"], np.zeros(shape[-1]), np.ones(shape[-1]), unbiased=bool(unbiased)
    )
    tol = TOL
    np.testing.assert_allclose(y.reshape(-1, shape[-1]), ref_y, **tol)
    np.testing.assert_allclose(updates["batch_stats"]["mean"], ref_mean, **TOL)
    np.testing.assert_allclose(updates["batch_stats"]["var"], ref_var, **tol)


@pytest.mark.parametrize(
    "module", [FlaxBatchNorm(), BatchNorm(), TorchBatchNorm()], ids=["flax", "ours", "torch"]
)
def test_batchnorm_eval_uses_running_averages(module):
    x = normal(0, 3, 4, 4, 2)
    variables = with_params(module.init(rng_key(0), x, use_running_average=True), 1)
    stats = {"mean": np.array([0.5, -1.0], np.float32), "var": np.array([4.0, 0.25], np.float32)}
    variables = {**variables, "batch_stats": stats}
    y = jax.jit(functools.partial(module.apply, use_running_average=True))(variables, x)
    p = variables["params"]
    expected = (x - stats["mean"]) / np.sqrt(stats["var"] + 1e-5) * p["scale"] + p["bias"]
    np.testing.assert_allclose(y, expected, **TOL)


def test_torch_batchnorm_has_flax_variable_names_and_works_under_jit():
    x = normal(0, 4, 3, 3, 5)
    ours = TorchBatchNorm().init(rng_key(0), x, use_running_average=False)
    flax_bn = FlaxBatchNorm().init(rng_key(0), x, use_running_average=False)
    assert jax.tree.map(jnp.shape, ours) == jax.tree.map(jnp.shape, flax_bn)

    @jax.jit
    def step(variables, x):
        return TorchBatchNorm().apply(variables, x, use_running_average=False, mutable=True)

    y, updates = step(ours, x)
    assert y.shape == x.shape and updates["batch_stats"]["var"].shape == (5,)


def _bn_loss(module, variables, x, probe):
    y, updates = module.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
    stats = updates["batch_stats"]
    # The statistics enter the loss too, so that their cotangents are checked (zero in training).
    return jnp.vdot(jax.nn.relu(y), probe) + jnp.sum(stats["mean"] ** 2) + jnp.sum(stats["var"])


@pytest.mark.parametrize("shape", [(4, 5, 5, 3), (16, 7), (2, 1, 1, 6)])
def test_batchnorm_equals_flax_module_values_and_gradients(shape):
    x = normal(0, *shape, loc=0.5, scale=2.0)
    probe = normal(1, *shape)
    variables = with_params(FlaxBatchNorm().init(rng_key(0), x, True), 2)
    variables["batch_stats"] = {"mean": normal(3, shape[-1]), "var": np.abs(normal(4, shape[-1]))}
    ours = jax.jit(jax.value_and_grad(functools.partial(_bn_loss, BatchNorm()), argnums=(0, 1)))
    flax_ = jax.jit(
        jax.value_and_grad(functools.partial(_bn_loss, FlaxBatchNorm()), argnums=(0, 1))
    )
    (value, grads), (ref_value, ref_grads) = ours(variables, x, probe), flax_(variables, x, probe)
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    # Flax's one-pass variance costs digits when a channel has two values (the last shape).
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_batch_norm_hand_written_backward_equals_autodiff_and_allows_jvp_when_portable():
    x = normal(0, 8, 3, 3, 4, loc=2.0)
    probe = normal(1, 8, 3, 3, 4)
    variables = with_params(BatchNorm().init(rng_key(0), x, True), 2)
    loss = functools.partial(_bn_loss, BatchNorm())
    fast = jax.grad(loss, argnums=(0, 1))(variables, x, probe)
    with conv_impl("xla", force=True):  # JAX's own rules through the two-pass statistics
        reference = jax.grad(loss, argnums=(0, 1))(variables, x, probe)
        _, tangent = jax.jvp(lambda x: loss(variables, x, probe), (x,), (probe,))
    for got, want in zip(jax.tree.leaves(fast), jax.tree.leaves(reference)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tangent, jnp.vdot(fast[1], probe), rtol=1e-4)
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(lambda x: loss(variables, x, probe), (x,), (probe,))


@pytest.mark.parametrize("portable", [False, True], ids=["custom_vjp", "portable"])
def test_batch_norm_training_saves_only_its_input_for_the_backward_pass(portable):
    from cnnjax.analysis.memory import saved_residuals

    x, probe = normal(0, 8, 6, 6, 4), normal(1, 8, 6, 6, 4)

    def loss(params, x):  # linear in BN's output: the backward pass needs only BN's residuals
        y, _, _ = batch_norm(
            x, jnp.zeros(4), jnp.ones(4), params["scale"], params["bias"], train=True
        )
        return jnp.vdot(y, probe)

    params = {"scale": jnp.ones(4), "bias": jnp.zeros(4)}
    with conv_impl("xla", force=True) if portable else contextlib.nullcontext():
        residuals = saved_residuals(loss, params, x)
    # The input is an argument (already in memory); no activation-sized array such as a
    # centered copy or a normalized output may be kept besides it.
    full = [(r.primitive, r.kind) for r in residuals if r.shape == x.shape and r.kind != "argument"]
    assert not full, full


def test_batch_norm_function_eval_returns_running_stats_unchanged():
    x = normal(0, 2, 3, 3, 4)
    mean, var = np.full(4, 0.5, np.float32), np.full(4, 2.0, np.float32)
    y, new_mean, new_var = batch_norm(x, mean, var, train=False)
    np.testing.assert_allclose(y, (x - 0.5) / np.sqrt(2.0 + 1e-5), **TOL)
    assert new_mean is mean and new_var is var


def test_batch_norm_keeps_dtype_of_bfloat16_input():
    x = jnp.asarray(normal(0, 4, 2, 2, 3), jnp.bfloat16)
    variables = TorchBatchNorm().init(rng_key(0), x, use_running_average=True)
    y, updates = TorchBatchNorm().apply(variables, x, use_running_average=False, mutable=True)
    assert y.dtype == jnp.bfloat16 and updates["batch_stats"]["mean"].dtype == jnp.float32


def test_batch_norm_bad_arguments():
    x, ones = np.ones((1, 1, 1, 2), np.float32), np.ones(2, np.float32)
    with pytest.raises(ShapeError, match="more than one value per channel"):
        batch_norm(x, ones, ones, train=True)
    batch_norm(x, ones, ones, train=True, unbiased_running_var=False)  # Flax allows it
    with pytest.raises(ConfigError, match=r"momentum must be in \[0, 1\].*got 1.5"):
        batch_norm(x, ones, ones, train=False, momentum=1.5)
    with pytest.raises(ConfigError, match="epsilon must be > 0, got 0"):
        batch_norm(x, ones, ones, train=False, epsilon=0)


def torch_bn_run(torch, batches, weight, bias):
    """Training steps then one eval step of `torch.nn.BatchNorm2d` in float64, outputs NHWC."""
    bn = torch.nn.BatchNorm2d(weight.shape[0], momentum=0.1, eps=1e-5).double()
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(weight))
        bn.bias.copy_(torch.from_numpy(bias))
    outputs = []
    for i, x in enumerate(batches):
        bn.train(i < len(batches) - 1)
        t = torch.from_numpy(np.moveaxis(x, -1, 1).astype(np.float64))
        with torch.no_grad():
            outputs.append(np.moveaxis(bn(t).numpy(), 1, -1))
    return outputs, bn.running_mean.numpy(), bn.running_var.numpy()


def jax_bn_run(module, batches, weight, bias):
    variables = module.init(rng_key(0), batches[0], use_running_average=True)
    variables = {**variables, "params": {"scale": weight, "bias": bias}}
    train = jax.jit(functools.partial(module.apply, use_running_average=False, mutable=True))
    outputs = []
    for x in batches[:-1]:
        y, updates = train(variables, x)
        variables = {**variables, **updates}
        outputs.append(y)
    outputs.append(module.apply(variables, batches[-1], use_running_average=True))
    return outputs, variables["batch_stats"]["mean"], variables["batch_stats"]["var"]


def test_torch_batchnorm_matches_torch_batchnorm2d_train_steps_and_eval():
    torch = pytest.importorskip("torch")
    # 2*3*3 = 18 values per channel: the unbiased correction (18/17) is far above tolerance.
    batches = [normal(i, 2, 3, 3, 4, loc=i, scale=i + 1) for i in range(4)]
    weight, bias = normal(10, 4).astype(np.float64), normal(11, 4).astype(np.float64)
    expected, mean, var = torch_bn_run(torch, batches, weight, bias)
    got, got_mean, got_var = jax_bn_run(TorchBatchNorm(), batches, weight, bias)
    for y, ref in zip(got, expected, strict=True):
        np.testing.assert_allclose(y, ref, **TOL)
    np.testing.assert_allclose(got_mean, mean, **TOL)
    np.testing.assert_allclose(got_var, var, **TOL)


def test_flax_batchnorm_differs_from_torch_only_in_running_variance():
    """The documented known difference: Flax averages the biased variance, PyTorch the unbiased."""
    torch = pytest.importorskip("torch")
    batches = [normal(i, 2, 3, 3, 4, loc=i, scale=i + 1) for i in range(2)]
    weight, bias = normal(10, 4).astype(np.float64), normal(11, 4).astype(np.float64)
    expected, mean, var = torch_bn_run(torch, batches, weight, bias)
    got, got_mean, got_var = jax_bn_run(BatchNorm(), batches, weight, bias)
    np.testing.assert_allclose(got[0], expected[0], **TOL)  # training outputs agree
    np.testing.assert_allclose(got_mean, mean, **TOL)
    m = 2 * 3 * 3
    batch_var = batches[0].reshape(-1, 4).astype(np.float64).var(0)
    np.testing.assert_allclose(var, 0.9 + 0.1 * batch_var * m / (m - 1), **TOL)
    np.testing.assert_allclose(got_var, 0.9 + 0.1 * batch_var, **TOL)
    assert not np.allclose(got[-1], expected[-1], **TOL)  # so the eval outputs differ


# --- LayerNorm -------------------------------------------------------------------------------


@settings(max_examples=20, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 4), st.integers(1, 6)),
    offset=st.sampled_from([0.0, 100.0]),
)
def test_layer_norm_matches_numpy(shape, offset):
    x = normal(0, *shape, loc=offset)
    scale, bias = normal(1, shape[-1]), normal(2, shape[-1])
    both = jax.jit(lambda p, x: (LayerNorm().apply({"params": p}, x), layer_norm(x, **p)))
    module_out, function_out = both({"scale": scale, "bias": bias}, x)
    x64 = x.astype(np.float64)
    mean = x64.mean(-1, keepdims=True)
    var = ((x64 - mean) ** 2).mean(-1, keepdims=True)
    expected = (x64 - mean) / np.sqrt(var + 1e-6) * scale + bias
    np.testing.assert_allclose(module_out, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(function_out, expected, rtol=1e-4, atol=1e-4)


def test_layer_norm_params():
    variables = LayerNorm().init(rng_key(0), np.zeros((2, 3, 3, 5), np.float32))
    assert jax.tree.map(jnp.shape, variables) == {"params": {"scale": (5,), "bias": (5,)}}
    assert LayerNorm().epsilon == 1e-6


def test_layer_norm_matches_torch_over_channels():
    torch = pytest.importorskip("torch")
    x, scale, bias = normal(0, 2, 5, 4, 8, loc=3.0), normal(1, 8), normal(2, 8)
    expected = torch.nn.functional.layer_norm(
        torch.from_numpy(x).double(),
        (8,),
        torch.from_numpy(scale).double(),
        torch.from_numpy(bias).double(),
        eps=1e-6,
    ).numpy()
    variables = {"params": {"scale": scale, "bias": bias}}
    np.testing.assert_allclose(jax.jit(LayerNorm().apply)(variables, x), expected, **TOL)
    np.testing.assert_allclose(layer_norm(x, scale, bias), expected, **TOL)
    assert LayerNorm().epsilon == 1e-6


# --- Local response normalization ------------------------------------------------------------


def numpy_lrn(x, size, alpha, beta, k):
    """b_c = a_c / (k + alpha/size * sum of a_{c'}^2 over c' in [c - size//2, c + (size-1)//2])."""
    x = x.astype(np.float64)
    channels = x.shape[-1]
    out = np.empty_like(x)
    for c in range(channels):
        lo, hi = max(0, c - size // 2), min(channels - 1, c + (size - 1) // 2)
        total = (x[..., lo : hi + 1] ** 2).sum(-1)
        out[..., c] = x[..., c] / (k + alpha / size * total) ** beta
    return out


@settings(max_examples=20, deadline=None)
@given(
    channels=st.integers(1, 9),
    size=st.integers(1, 7),
    alpha=st.sampled_from([1e-4, 0.1, 1.0]),
    beta=st.sampled_from([0.5, 0.75, 1.0]),
    k=st.sampled_from([0.5, 1.0, 2.0]),
)
def test_local_response_norm_matches_numpy_loop(channels, size, alpha, beta, k):
    x = normal(channels, 2, 3, 2, channels, scale=3.0)
    got = jax.jit(local_response_norm, static_argnums=(1, 2, 3, 4))(x, size, alpha, beta, k)
    np.testing.assert_allclose(got, numpy_lrn(x, size, alpha, beta, k), **TOL)


@pytest.mark.parametrize(
    "size, alpha, beta, k",
    [(5, 1e-4, 0.75, 2.0), (4, 0.5, 0.75, 1.0), (3, 1.0, 1.0, 0.5), (1, 0.2, 0.5, 1.0)],
)
def test_local_response_norm_matches_torch(size, alpha, beta, k):
    torch = pytest.importorskip("torch")
    x = normal(0, 2, 4, 3, 7, scale=3.0)
    t = torch.from_numpy(np.moveaxis(x, -1, 1).astype(np.float64))
    expected = np.moveaxis(
        torch.nn.functional.local_response_norm(t, size, alpha, beta, k).numpy(), 1, -1
    )
    module = LocalResponseNorm(size, alpha, beta, k)
    np.testing.assert_allclose(jax.jit(module.apply)({}, x), expected, **TOL)


def numpy_lrn_sum(x, size):
    """Sum of squares over each channel's window, by padding and slicing (another route)."""
    pads = [(0, 0)] * (x.ndim - 1) + [(size // 2, (size - 1) // 2)]
    padded = np.pad(x.astype(np.float64) ** 2, pads)
    return np.stack([padded[..., c : c + size].sum(-1) for c in range(x.shape[-1])], -1)


def test_local_response_norm_defaults_gradient_and_errors():
    x = normal(0, 2, 3, 3, 6)
    np.testing.assert_allclose(
        LocalResponseNorm().apply({}, x), numpy_lrn(x, 5, 1e-4, 0.75, 2.0), **TOL
    )
    # The AlexNet paper's alpha=1e-4 (not divided by n) is alpha=5e-4 in PyTorch's convention.
    paper = x / (2.0 + 1e-4 * numpy_lrn_sum(x, 5)) ** 0.75
    np.testing.assert_allclose(local_response_norm(x, 5, alpha=5e-4), paper, **TOL)
    check_grads(
        lambda x: local_response_norm(x, 3, 0.5, k=1.0),
        (x,),
        order=1,
        modes=["rev"],
        atol=1e-2,
        rtol=1e-2,
    )
    for bad in (0, 2.5, True):
        with pytest.raises(ConfigError, match="size must be a positive int"):
            local_response_norm(x, bad)
    with pytest.raises(ConfigError, match="beta must be a number"):
        LocalResponseNorm(beta="0.75").apply({}, x)


def test_norm_modules_compose_in_a_jitted_model():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train):
            x = TorchBatchNorm(use_running_average=not train)(x)
            x = LocalResponseNorm(3)(x)
            x = ChannelDropout(0.2, deterministic=not train)(x)
            return LayerNorm()(x)

    x = normal(0, 2, 4, 4, 3)
    variables = Net().init(rng_key(0), x, False)
    apply = jax.jit(Net().apply, static_argnums=2, static_argnames="mutable")
    y, _ = apply(variables, x, True, rngs={"dropout": rng_key(1)}, mutable=True)
    assert y.shape == x.shape
    np.testing.assert_array_equal(apply(variables, x, False), apply(variables, x, False))
