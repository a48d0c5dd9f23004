"""CapsNet (Sabour et al. 2017): squash, routing against a numpy loop, losses, model, training."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import cnnjax.models.capsnet  # noqa: F401  (registers "capsnet" if cnnjax.models does not yet)
from cnnjax import models
from cnnjax.analysis import count_params
from cnnjax.data.sources import synthetic
from cnnjax.errors import ConfigError, ShapeError
from cnnjax.models.capsnet import (
    RECONSTRUCTION_WEIGHT,
    CapsNet,
    capsule_length,
    dynamic_routing,
    margin_loss,
    reconstruction_loss,
    squash,
)
from tests.models.helpers import compile_for, compiled

# A CapsNet small enough to compile and train in seconds on a CPU: 6x6x4 = 144 primary capsules.
SMALL = dict(
    conv1_features=32, primary_channels=4, primary_dim=8, class_dim=8, decoder_features=(64, 128)
)


def numpy_routing(u_hat, num_iterations):
    """Procedure 1 written out with loops over capsules, in float64."""
    u_hat = np.asarray(u_hat, np.float64)
    batch, num_in, num_out, dim = u_hat.shape
    b = np.zeros((batch, num_in, num_out))
    for _ in range(num_iterations):
        c = np.exp(b - b.max(-1, keepdims=True))
        c /= c.sum(-1, keepdims=True)
        s = np.zeros((batch, num_out, dim))
        for i in range(num_in):
            for j in range(num_out):
                s[:, j] += c[:, i, j, None] * u_hat[:, i, j]
        norm = np.linalg.norm(s, axis=-1, keepdims=True)
        v = norm**2 / (1 + norm**2) * s / norm
        for i in range(num_in):
            for j in range(num_out):
                b[:, i, j] += np.sum(u_hat[:, i, j] * v[:, j], axis=-1)
    return v, c


def abstract_variables(model, shape):
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    return jax.eval_shape(model.init, jax.random.key(0), x)


@functools.cache
def small_model_and_variables():
    """One compiled init of the small CapsNet, shared by every test that runs it."""
    model = CapsNet(**SMALL)
    x = jax.random.uniform(jax.random.key(1), (3, 28, 28, 1))
    return model, compiled(model.init, jax.random.key(0), x), x


def test_squash_shrinks_keeps_direction_and_matches_a_hand_value():
    s = (
        jax.random.normal(jax.random.key(0), (6, 8))
        * jnp.array([0.01, 0.1, 0.5, 1, 3, 10])[:, None]
    )
    v = squash(s)
    norms = np.linalg.norm(v, axis=-1)
    s_norms = np.linalg.norm(s, axis=-1)
    assert np.all(norms < 1)
    np.testing.assert_allclose(norms, s_norms**2 / (1 + s_norms**2), rtol=1e-4)
    np.testing.assert_allclose(v / norms[:, None], s / s_norms[:, None], rtol=1e-4, atol=1e-6)
    # |(3, 4)|^2 = 25: v = 25/26 * (0.6, 0.8)
    np.testing.assert_allclose(squash(jnp.array([3.0, 4.0])), [15 / 26, 20 / 26], rtol=1e-6)
    # the capsule axis can be any axis
    np.testing.assert_allclose(squash(s.T, axis=0), v.T, rtol=1e-6)


def test_squash_and_length_of_zero_are_zero_with_finite_gradients():
    zero = jnp.zeros(4)
    np.testing.assert_array_equal(squash(zero), 0.0)
    jacobian = jax.jacobian(squash)(zero)
    assert np.all(np.isfinite(jacobian))
    assert np.all(np.isfinite(jax.grad(lambda s: jnp.sum(squash(s)))(zero)))
    assert float(capsule_length(zero)) == 0.0
    np.testing.assert_array_equal(jax.grad(capsule_length)(zero), 0.0)
    np.testing.assert_allclose(capsule_length(jnp.array([3.0, 4.0])), 5.0)


@pytest.mark.parametrize("num_iterations", [1, 2, 3])
def test_dynamic_routing_matches_a_numpy_loop(num_iterations):
    u_hat = np.random.default_rng(num_iterations).normal(0, 0.5, (2, 5, 3, 4))
    v, c = dynamic_routing(jnp.asarray(u_hat, jnp.float32), num_iterations)
    v_ref, c_ref = numpy_routing(u_hat, num_iterations)
    assert v.shape == (2, 3, 4) and c.shape == (2, 5, 3)
    np.testing.assert_allclose(v, v_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(c, c_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(c.sum(-1), 1.0, rtol=1e-6)  # each child over the parents
    if num_iterations == 1:
        np.testing.assert_allclose(c, 1 / 3, rtol=1e-6)
    else:  # agreement moved the coefficients away from uniform
        assert float(jnp.abs(c - 1 / 3).max()) > 1e-3


def test_stop_gradient_routing_keeps_values_and_treats_coefficients_as_constants():
    u_hat = jax.random.normal(jax.random.key(0), (2, 5, 3, 4)) * 0.5
    probe = jax.random.normal(jax.random.key(1), (2, 3, 4))

    def objective(u, stop, iterations=3):
        return jnp.sum(dynamic_routing(u, iterations, stop_gradient=stop)[0] * probe)

    @jax.jit  # one program: compiling each small routing graph on its own takes seconds
    def routing_and_gradients(u):
        full, detached = (dynamic_routing(u, 3, stop_gradient=s) for s in (False, True))
        cases = ((False, 3), (True, 3), (False, 1), (True, 1))
        grads = [jax.grad(objective)(u, stop, iterations) for stop, iterations in cases]
        c = full[1]  # a constant of the inner function below
        grad_constant_c = jax.grad(
            lambda u: jnp.sum(squash(jnp.einsum("bij,bijd->bjd", c, u)) * probe)
        )(u)
        return full, detached, grads, grad_constant_c

    full, detached, grads, grad_constant_c = routing_and_gradients(u_hat)
    grad_full, grad_stop, grad_full_1, grad_stop_1 = grads
    for a, b in zip(full, detached):
        np.testing.assert_array_equal(a, b)
    assert float(jnp.abs(grad_full - grad_stop).max()) > 1e-4  # the paper differentiates c too
    # with stop_gradient, only the final s_j = sum_i c_ij u_hat_j|i carries gradient
    np.testing.assert_allclose(grad_stop, grad_constant_c, rtol=1e-5, atol=1e-7)
    # one iteration has nothing to stop
    np.testing.assert_array_equal(grad_full_1, grad_stop_1)
    with pytest.raises(ConfigError, match="at least 1 iteration"):
        dynamic_routing(u_hat, 0)


def test_margin_loss_hand_values():
    lengths = jnp.array([[0.95, 0.3, 0.05], [0.5, 0.05, 0.2]])
    labels = jnp.array([0, 2])
    # example 1: present 0.95 > 0.9 -> 0; absent 0.5 * (0.3 - 0.1)^2 = 0.02; 0.05 < 0.1 -> 0
    # example 2: absent 0.5 * (0.5 - 0.1)^2 = 0.08; present (0.9 - 0.2)^2 = 0.49
    np.testing.assert_allclose(margin_loss(lengths, labels), [0.02, 0.57], rtol=1e-6)
    one_hot = jax.nn.one_hot(labels, 3)
    np.testing.assert_allclose(margin_loss(lengths, one_hot), [0.02, 0.57], rtol=1e-6)
    np.testing.assert_allclose(
        margin_loss(lengths, labels, m_plus=1.0, m_minus=0.0, down_weight=1.0),
        [0.05**2 + 0.3**2 + 0.05**2, 0.5**2 + 0.05**2 + 0.8**2],
        rtol=1e-6,
    )


def test_reconstruction_loss_hand_values():
    reconstruction = jnp.full((2, 2, 2, 1), 0.5)
    target = jnp.array([[0.0, 0.0, 0.0, 0.0], [1.0, 0.5, 0.5, 0.0]])
    expected = [4 * 0.25, 0.25 + 0.25]
    np.testing.assert_allclose(reconstruction_loss(reconstruction, target), expected)
    np.testing.assert_allclose(
        reconstruction_loss(reconstruction, target.reshape(2, 2, 2, 1)), expected
    )
    assert RECONSTRUCTION_WEIGHT == 0.0005


def test_parameter_counts_are_the_papers_8_2m_and_6_8m():
    conv1 = 9 * 9 * 1 * 256 + 256
    primary = 9 * 9 * 256 * 256 + 256
    weights = 6 * 6 * 32 * 10 * 8 * 16
    decoder = (160 * 512 + 512) + (512 * 1024 + 1024) + (1024 * 784 + 784)
    assert conv1 + primary + weights + decoder == 8_215_568
    full = abstract_variables(CapsNet(), (1, 28, 28, 1))["params"]
    assert count_params(full) == 8_215_568
    assert full["class_caps_kernel"].shape == (1152, 10, 8, 16)
    bare = abstract_variables(CapsNet(reconstruct=False), (1, 28, 28, 1))["params"]
    assert count_params(bare) == 6_804_224 == conv1 + primary + weights
    info = models.model_info("capsnet")
    assert info.params == 8_215_568
    assert info.input_shape == (28, 28, 1) and info.num_classes == 10
    assert info.loss == "capsule"
    assert "capsnet" in models.list_models("caps*")


def test_paper_sized_intermediate_shapes():
    variables = abstract_variables(CapsNet(), (2, 28, 28, 1))
    x = jax.ShapeDtypeStruct((2, 28, 28, 1), jnp.float32)
    lengths, inter = jax.eval_shape(CapsNet().apply, variables, x)
    assert lengths.shape == (2, 10)
    expected = {
        "stem": (2, 20, 20, 256),
        "stage1": (2, 6, 6, 256),
        "primary_caps": (2, 1152, 8),
        "class_caps": (2, 10, 16),
        "pre_logits": (2, 10, 16),
        "routing": (2, 1152, 10),
        "reconstruction": (2, 28, 28, 1),
    }
    assert {k: v.shape for k, v in inter.items()} == expected


def test_other_input_shapes_and_class_counts():
    model = CapsNet(num_classes=4, reconstruct=True, **SMALL)
    variables = abstract_variables(model, (2, 24, 30, 3))
    lengths, inter = jax.eval_shape(
        model.apply, variables, jax.ShapeDtypeStruct((2, 24, 30, 3), jnp.float32)
    )
    # conv1 -> 16x22, primary (stride 2) -> 4x7, x 4 types = 112 capsules
    assert lengths.shape == (2, 4)
    assert inter["primary_caps"].shape == (2, 112, 8)
    assert inter["routing"].shape == (2, 112, 4)
    assert inter["reconstruction"].shape == (2, 24, 30, 3)
    assert variables["params"]["decoder3"]["kernel"].shape == (128, 24 * 30 * 3)
    bare = abstract_variables(CapsNet(reconstruct=False, **SMALL), (1, 28, 28, 1))
    _, inter = jax.eval_shape(
        CapsNet(reconstruct=False, **SMALL).apply,
        bare,
        jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32),
    )
    assert "reconstruction" not in inter and not any("decoder" in k for k in bare["params"])


def test_forward_lengths_routing_and_decoder_masking():
    model, variables, x = small_model_and_variables()

    programs = {}  # one compile per kind of labels

    def apply(variables, x, labels=None):
        kind = None if labels is None else labels.shape
        if kind not in programs:
            run = lambda v, x, y: model.apply(v, x, labels=y)  # noqa: E731
            programs[kind] = compile_for(run, variables, x, labels)
        return programs[kind](variables, x, labels)

    lengths, inter = apply(variables, x)
    assert lengths.shape == (3, 10)
    assert bool(jnp.all((lengths >= 0) & (lengths <= 1)))
    np.testing.assert_allclose(lengths, jnp.linalg.norm(inter["class_caps"], axis=-1), rtol=1e-5)
    np.testing.assert_allclose(inter["routing"].sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(jnp.linalg.norm(inter["primary_caps"], axis=-1) < 1, True)
    recon = inter["reconstruction"]
    assert recon.shape == x.shape and bool(jnp.all((recon > 0) & (recon < 1)))

    predicted = jnp.argmax(lengths, -1)
    _, by_prediction = apply(variables, x, labels=predicted)
    np.testing.assert_array_equal(by_prediction["reconstruction"], recon)
    other = (predicted + 1) % 10
    other_lengths, by_other = apply(variables, x, labels=other)
    np.testing.assert_array_equal(other_lengths, lengths)  # labels only steer the decoder
    assert float(jnp.abs(by_other["reconstruction"] - recon).max()) > 1e-4
    _, by_one_hot = apply(variables, x, labels=jax.nn.one_hot(other, 10))
    np.testing.assert_array_equal(by_one_hot["reconstruction"], by_other["reconstruction"])


def test_train_mode_interface_of_the_generic_training_step():
    model, variables, x = small_model_and_variables()

    @jax.jit
    def train_forward(v, x):
        return model.apply(
            v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(2)}
        )

    (lengths, inter), updates = train_forward(variables, x)
    np.testing.assert_array_equal(lengths, jax.jit(model.apply)(variables, x)[0])
    assert not jax.tree.leaves(updates)
    assert {"stem", "stage1", "pre_logits"} <= set(inter)


@pytest.mark.parametrize(
    "kwargs, shape, error, match",
    [
        (
            dict(routing_iterations=0),
            (1, 28, 28, 1),
            ConfigError,
            "routing_iterations must be a positive integer, got 0",
        ),
        (dict(primary_dim=0), (1, 28, 28, 1), ConfigError, "primary_dim must be a positive"),
        (dict(decoder_features=(64, 0)), (1, 28, 28, 1), ConfigError, "decoder_features"),
        ({}, (1, 16, 20, 1), ShapeError, "input 16x20 is too small.*minimum is 17x17"),
        (dict(conv1_kernel=3, primary_kernel=3), (1, 4, 4, 1), ShapeError, "minimum is 5x5"),
        ({}, (28, 28, 1), ShapeError, "NHWC"),
    ],
)
def test_bad_configs_and_inputs_are_clear_errors(kwargs, shape, error, match):
    with pytest.raises(error, match=match):
        abstract_variables(CapsNet(**kwargs), shape)


def test_minimum_input_and_bad_labels():
    lengths, _ = jax.eval_shape(
        lambda x: CapsNet(**SMALL).init_with_output(jax.random.key(0), x)[0],
        jax.ShapeDtypeStruct((1, 17, 17, 1), jnp.float32),
    )
    assert lengths.shape == (1, 10)
    model = CapsNet(**SMALL)
    with pytest.raises(ShapeError, match="labels must be class indices"):
        jax.eval_shape(
            lambda x: model.init(jax.random.key(0), x, labels=jnp.zeros((2, 3), jnp.int32)),
            jax.ShapeDtypeStruct((2, 28, 28, 1), jnp.float32),
        )


def test_small_capsnet_learns_a_synthetic_task_with_margin_and_reconstruction_loss():
    data = synthetic("train", (28, 28, 1), 10, size=256)
    images = jnp.asarray(data.images, jnp.float32) / 255.0
    labels = jnp.asarray(data.labels)
    model, variables, _ = small_model_and_variables()  # the same key: the same initial params
    params = variables["params"]
    optimizer = optax.adam(1e-3)

    def loss_fn(p, x, y):
        lengths, inter = model.apply({"params": p}, x, train=True, labels=y)
        loss = margin_loss(lengths, y) + RECONSTRUCTION_WEIGHT * reconstruction_loss(
            inter["reconstruction"], x
        )
        return jnp.mean(loss), lengths

    def step(p, opt_state, x, y):
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(p, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss

    evaluate = compile_for(loss_fn, params, images, labels)
    start, start_lengths = evaluate(params, images, labels)
    opt_state = optimizer.init(params)
    step = compile_for(step, params, opt_state, images[:64], labels[:64])
    order = np.random.default_rng(0).permutation(np.tile(np.arange(256), 8))
    for i in range(30):
        batch = order[i * 64 : (i + 1) * 64]
        params, opt_state, loss = step(params, opt_state, images[batch], labels[batch])
        assert np.isfinite(float(loss))
    end, end_lengths = evaluate(params, images, labels)
    assert float(end) < 0.3 * float(start), (float(start), float(end))
    accuracy = float(jnp.mean(jnp.argmax(end_lengths, -1) == labels))
    assert accuracy > 0.9 > float(jnp.mean(jnp.argmax(start_lengths, -1) == labels))
