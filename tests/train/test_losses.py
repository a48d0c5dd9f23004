"""Named objectives and input preprocessing of the train/eval steps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import models
from cnnjax.errors import ConfigError
from cnnjax.train.losses import LOSSES, get_loss, per_example_loss
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
