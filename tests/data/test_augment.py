"""Augmentation ops against numpy references; shapes, determinism and equivalences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax.data import augment as aug
from cnnjax.errors import ConfigError

NUMPY_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def numpy_translate(image, dy, dx, max_shift, mode):
    padded = np.pad(image, ((max_shift,) * 2, (max_shift,) * 2, (0, 0)), mode=NUMPY_MODES[mode])
    h, w = image.shape[:2]
    return padded[max_shift - dy : max_shift - dy + h, max_shift - dx : max_shift - dx + w]


@pytest.fixture
def images():
    return np.random.default_rng(0).uniform(size=(4, 7, 6, 2)).astype(np.float32)


@pytest.mark.parametrize("mode", sorted(NUMPY_MODES))
def test_translate_matches_numpy_pad_and_crop(images, mode):
    shifts = np.array([[0, 0], [2, -1], [-3, 3], [1, 2]])
    got = np.asarray(aug.translate(jnp.asarray(images), jnp.asarray(shifts), 3, mode))
    for i, (dy, dx) in enumerate(shifts):
        np.testing.assert_array_equal(got[i], numpy_translate(images[i], dy, dx, 3, mode))


def test_circular_translation_is_a_roll(images):
    got = aug.translate(jnp.asarray(images), jnp.array([[2, -1]] * 4), 2, "circular")
    np.testing.assert_array_equal(got, np.roll(images, (2, -1), axis=(1, 2)))


def test_positive_shift_moves_content_down_and_right():
    image = np.zeros((1, 5, 5, 1), np.float32)
    image[0, 1, 1, 0] = 1
    moved = np.asarray(aug.translate(jnp.asarray(image), jnp.array([[2, 1]]), 2))
    assert moved[0, 3, 2, 0] == 1 and moved.sum() == 1


def test_constant_mode_fills_with_value(images):
    got = aug.pad_spatial(jnp.asarray(images), 2, "constant", value=0.5)
    assert got.shape == (4, 11, 10, 2) and float(got[0, 0, 0, 0]) == 0.5


def test_pad_and_crop_is_random_translation(images):
    key = jax.random.PRNGKey(7)
    a = aug.pad_and_random_crop(key, jnp.asarray(images), 4, "reflect")
    b = aug.random_translate(key, jnp.asarray(images), 4, "reflect")
    np.testing.assert_array_equal(a, b)
    assert a.shape == images.shape


def test_augment_is_deterministic_given_the_key_and_varies_with_it(images):
    x = jnp.asarray(np.tile(images, (8, 1, 1, 1)))
    a = aug.augment(jax.random.PRNGKey(1), x, crop_padding=2, flip=True)
    b = aug.augment(jax.random.PRNGKey(1), x, crop_padding=2, flip=True)
    c = aug.augment(jax.random.PRNGKey(2), x, crop_padding=2, flip=True)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and a.shape == x.shape and a.dtype == x.dtype


def test_flip_mirrors_some_images_and_keeps_the_rest(images):
    x = jnp.asarray(np.tile(images, (8, 1, 1, 1)))
    flipped = np.asarray(aug.random_flip_left_right(jax.random.PRNGKey(0), x))
    same = [np.array_equal(f, o) for f, o in zip(flipped, np.asarray(x))]
    mirrored = [np.array_equal(f, o[:, ::-1]) for f, o in zip(flipped, np.asarray(x))]
    assert all(s or m for s, m in zip(same, mirrored)) and any(same) and any(mirrored)


def test_augment_works_under_jit(images):
    fn = jax.jit(lambda k, x: aug.augment(k, x, crop_padding=1, pad_mode="replicate", flip=True))
    assert fn(jax.random.PRNGKey(0), jnp.asarray(images)).shape == images.shape


def test_unknown_pad_mode_lists_choices(images):
    with pytest.raises(ConfigError, match="padding mode 'mirror'.*choices: circular, constant"):
        aug.pad_spatial(jnp.asarray(images), 1, "mirror")
