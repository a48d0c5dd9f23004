"""Named objectives and input preprocessing of the train/eval steps."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import models
from cnnjax.errors import ConfigError
from cnnjax.train.losses import LOSSES, distillation_loss, get_loss, per_example_loss
from cnnjax.train.steps import Preprocess


def test_cross_entropy_is_minus_log_softmax_of_the_label():
    logits = jnp.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    labels = jnp.array([0, 1])
    expected = -np.log(np.exp(logits) / np.exp(logits).sum(-1, keepdims=True))[[0, 1], [0, 1]]
    got = per_example_loss("cross_entropy", logits, {}, labels, None)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    smoothed = per_example_loss("cross_entropy", logits, {}, labels, None, label_smoothing=0.3)
    assert np.all(np.asarray(smoothed) != np.asarray(got))


def test_capsule_loss_is_margin_plus_0_0005_reconstruction_error():
    lengths = jnp.array([[0.95, 0.2, 0.05], [0.3, 0.6, 0.1]])
    labels = jnp.array([0, 0])
    inputs = jnp.full((2, 2, 2, 1), 0.5)
    reconstruction = jnp.zeros((2, 2, 2, 1))
    # Eq. 4: T_k max(0, 0.9 - |v_k|)^2 + 0.5 (1 - T_k) max(0, |v_k| - 0.1)^2.
    margin = np.array([0.5 * 0.1**2, 0.6**2 + 0.5 * 0.5**2])
    reconstruction_sse = 4 * 0.25
    got = per_example_loss("capsule", lengths, {"reconstruction": reconstruction}, labels, inputs)
    np.testing.assert_allclose(got, margin + 0.0005 * reconstruction_sse, rtol=1e-6)
    without_decoder = per_example_loss("capsule", lengths, {}, labels, inputs)
    np.testing.assert_allclose(without_decoder, margin, rtol=1e-6)


def test_model_defaults_name_registered_losses():
    assert {models.model_info(n).loss for n in models.list_models()} <= set(LOSSES)
    assert models.model_info("capsnet").loss == "capsule"
    assert get_loss("capsule").labels_in_forward
    with pytest.raises(ConfigError, match="unknown loss 'margin'"):
        get_loss("margin")


def test_preprocess_scales_bytes_but_not_floats_and_normalization_can_be_off():
    images = jnp.full((1, 2, 2, 1), 255, jnp.uint8)
    np.testing.assert_allclose(Preprocess((0.5,), (0.25,))(images), 2.0)
    np.testing.assert_allclose(Preprocess((0.5,), (0.25,), normalize=False)(images), 1.0)
    series = jnp.full((1, 4, 2), 3.0, jnp.float32)
    np.testing.assert_allclose(Preprocess((1.0, 3.0), (2.0, 1.0))(series)[0, 0], [1.0, 0.0])
    # Augmentation needs a key and applies to images only when configured.
    key = jax.random.key(0)
    np.testing.assert_array_equal(Preprocess((0.0, 0.0), (1.0, 1.0))(series, key), series)


def test_distillation_loss_against_a_hand_computation():
    student, teacher = np.array([[1.0, 0.0, -1.0]]), np.array([[2.0, 1.0, 0.0]])
    t, weight = 2.0, 0.75

    def softmax(z):
        e = [math.exp(v) for v in z]
        return [v / sum(e) for v in e]

    p, q = softmax(teacher[0] / t), softmax(student[0] / t)
    soft = t * t * sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    hard = -math.log(softmax(student[0])[2])
    expected = weight * soft + (1 - weight) * hard
    got = distillation_loss(jnp.asarray(student), jnp.asarray(teacher), jnp.array([2]), t, weight)
    np.testing.assert_allclose(np.asarray(got), [expected], rtol=1e-6)


def test_distillation_gradient_is_t_times_the_soft_target_error_and_the_teacher_is_fixed():
    rng = np.random.default_rng(0)
    student, teacher = (jnp.asarray(rng.normal(size=(4, 10))) for _ in range(2))
    labels = jnp.zeros(4, jnp.int32)
    for t in (1.0, 3.0):

        def loss(s, v, t=t):
            return distillation_loss(s, v, labels, t, soft_weight=1.0).sum()

        grad_student, grad_teacher = jax.grad(loss, argnums=(0, 1))(student, teacher)
        # Hinton et al. Eq. 2, times T^2: T (q_i - p_i).
        expected = t * (jax.nn.softmax(student / t) - jax.nn.softmax(teacher / t))
        np.testing.assert_allclose(grad_student, expected, rtol=1e-5, atol=1e-6)
        assert not np.any(grad_teacher)
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        distillation_loss(student, teacher, labels, 0.0)
    with pytest.raises(ConfigError, match=r"soft_weight must be in \[0, 1\]"):
        distillation_loss(student, teacher, labels, 2.0, 1.5)
