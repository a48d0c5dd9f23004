"""Data augmentation as pure JAX functions of `(key, images)`.

They run inside the jitted training step on whatever backend trains the model, draw their
randomness from an explicit key (derived from the run's seed and the step number), and are thus
reproducible and resumable. Images are `(N, H, W, C)` floats in [0, 1].

Padding modes follow PyTorch's names: "zeros", "constant" (with `value`), "reflect" (mirror
without repeating the edge), "replicate" (repeat the edge pixel) and "circular" (wrap around).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from cnnjax.layers.padding import PAD_MODES, pad

__all__ = [
    "PAD_MODES",
    "augment",
    "pad_and_random_crop",
    "pad_spatial",
    "random_flip_left_right",
    "random_translate",
    "translate",
]


def pad_spatial(images: jnp.ndarray, amount: int, mode: str = "zeros", value: float = 0.0):
    """Pads `amount` pixels on every side of H and W (`(N, H, W, C)`) with one of `PAD_MODES`."""
    return pad(images, amount, mode, value)


def translate(images, shifts, max_shift: int, mode: str = "zeros", value: float = 0.0):
    """Shifts each image by its own `(dy, dx)`; uncovered pixels are filled by `mode`.

    A positive `dy` moves content down, a positive `dx` moves it right.

    Args:
      images: `(N, H, W, C)`.
      shifts: int `(N, 2)` with entries in `[-max_shift, max_shift]`.
      max_shift: static bound on the shifts (the padding needed).
      mode, value: how the uncovered border is filled (see `pad_spatial`).

    Returns:
      `(N, H, W, C)`.
    """
    height, width, channels = images.shape[1:]
    padded = pad_spatial(images, max_shift, mode, value)
    starts = max_shift - jnp.clip(shifts, -max_shift, max_shift)

    def crop(image, start):
        return lax.dynamic_slice(image, (start[0], start[1], 0), (height, width, channels))

    return jax.vmap(crop)(padded, starts)


def random_translate(key, images, max_shift: int, mode: str = "zeros", value: float = 0.0):
    """Shifts each image by its own uniform integer `(dy, dx)` in `[-max_shift, max_shift]`."""
    if max_shift == 0:
        return images
    shifts = jax.random.randint(key, (images.shape[0], 2), -max_shift, max_shift + 1)
    return translate(images, shifts, max_shift, mode, value)


def pad_and_random_crop(key, images, padding: int, mode: str = "zeros", value: float = 0.0):
    """The CIFAR recipe of He et al. 2016: pad `padding` pixels, crop back to the input size.

    Cropping an `(H + 2p, W + 2p)` canvas at offset `(oy, ox)` is a translation by
    `(p - oy, p - ox)`, so this is `random_translate` with `max_shift = padding`.
    """
    return random_translate(key, images, padding, mode, value)


def random_flip_left_right(key, images):
    """Mirrors each image horizontally with probability 1/2."""
    flip = jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1, 1))
    return jnp.where(flip, images[:, :, ::-1, :], images)


def augment(key, images, crop_padding: int = 0, pad_mode: str = "zeros", flip: bool = False):
    """Applies the configured augmentations: random pad-and-crop, then random horizontal flip.

    Args:
      key: PRNG key; the result is a pure function of `(key, images)`.
      images: `(N, H, W, C)` floats.
      crop_padding: pad-and-crop margin (0 disables; 4 for CIFAR in He et al. 2016).
      pad_mode: padding mode of the crop (see `PAD_MODES`).
      flip: random horizontal flips.
    """
    crop_key, flip_key = jax.random.split(key)
    images = pad_and_random_crop(crop_key, images, crop_padding, pad_mode)
    if flip:
        images = random_flip_left_right(flip_key, images)
    return images
