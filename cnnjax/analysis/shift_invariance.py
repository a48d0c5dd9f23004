"""Shift invariance of a classifier: consistency under random shifts, and diagonal-shift curves.

Zhang 2019 ("Making convolutional networks shift-invariant again") measures *consistency*: how
often a network predicts the same class for two shifted copies of one test image. Our CIFAR
protocol (32x32 images), fixed so results are comparable:

* "circular": the image is rolled by `(dy, dx)` pixels with wrap-around (`jnp.roll`): a pure
  translation with no content lost or invented.
* "crop": the image is zero-padded by `max_shift` pixels on each side and the 32x32 window at
  offset `(max_shift + dy, max_shift + dx)` is cut out: the training augmentation's shift, with
  black borders entering.

For `consistency`, each test image gets two independent offsets, `dy, dx` uniform in
`[-max_shift, max_shift]`, drawn from a fixed seed; the score is the fraction of images whose two
predictions agree. `diagonal_curve` shifts every image by `(s, s)` for `s = 0..max_shift` and
reports accuracy and agreement with the unshifted prediction. Shifts act on raw pixels (before
normalization), so zero padding is black, as in training.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from cnnjax.errors import ConfigError, unknown_choice

SHIFT_MODES = ("circular", "crop")


def shift_images(images: jnp.ndarray, dy, dx, mode: str = "circular", max_shift: int = 4):
    """Shifts each image of `(N, H, W, C)` by its own `(dy[i], dx[i])` (content moves down/right).

    Args:
      images: any dtype.
      dy, dx: `(N,)` integer offsets (or scalars), `|offset| <= max_shift` for "crop".
      mode: "circular" or "crop" (see the module docstring).
      max_shift: the zero padding of "crop".

    Returns:
      Images of the same shape and dtype.
    """
    if mode not in SHIFT_MODES:
        raise ConfigError(unknown_choice("shift mode", mode, SHIFT_MODES))
    n, h, w, _ = images.shape
    dy = jnp.broadcast_to(jnp.asarray(dy, jnp.int32), (n,))
    dx = jnp.broadcast_to(jnp.asarray(dx, jnp.int32), (n,))
    if mode == "circular":
        return jax.vmap(lambda im, a, b: jnp.roll(im, (a, b), axis=(0, 1)))(images, dy, dx)
    p = max_shift
    padded = jnp.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))

    def crop(image, a, b):
        return jax.lax.dynamic_slice(image, (p - a, p - b, 0), (h, w, image.shape[-1]))

    return jax.vmap(crop)(padded, dy, dx)


def make_predict(model, variables, preprocess, batch_size: int = 500) -> Callable:
    """`predict(uint8 images (N, H, W, C)) -> labels (N,)` in eval mode, batched and jitted."""

    @jax.jit
    def labels(images):
        logits = model.apply(variables, preprocess(images), train=False)[0]
        return jnp.argmax(logits, -1)

    def predict(images):
        out = [
            np.asarray(labels(images[i : i + batch_size]))
            for i in range(0, len(images), batch_size)
        ]
        return np.concatenate(out)

    return predict


def consistency(
    predict, images, max_shift: int = 4, mode: str = "circular", seed: int = 0, trials: int = 1
) -> float:
    """Fraction of images predicted alike under two independent random shifts (Zhang 2019).

    Args:
      predict: `images -> labels`, e.g. `make_predict(...)`.
      images: raw test images `(N, H, W, C)`.
      max_shift: offsets uniform in `[-max_shift, max_shift]` on each axis.
      mode: "circular" or "crop".
      seed: seed of the offsets (fixed, so every model sees the same pairs).
      trials: pairs per image (the score averages over them).
    """
    rng = np.random.default_rng(seed)
    n = len(images)
    agree = []
    for _ in range(trials):
        a, b = (rng.integers(-max_shift, max_shift + 1, size=(2, n)) for _ in range(2))
        first = predict(shift_images(images, a[0], a[1], mode, max_shift))
        second = predict(shift_images(images, b[0], b[1], mode, max_shift))
        agree.append(np.mean(first == second))
    return float(np.mean(agree))


def diagonal_curve(predict, images, labels, max_shift: int = 8, mode: str = "circular") -> dict:
    """Accuracy and agreement with the unshifted prediction for shifts `(s, s)`, `s = 0..max`.

    Returns:
      `{"shift": [0..max], "accuracy": [...], "agreement": [...]}`.
    """
    base = predict(images)
    labels = np.asarray(labels)
    out = {"shift": [], "accuracy": [], "agreement": []}
    for s in range(max_shift + 1):
        pred = base if s == 0 else predict(shift_images(images, s, s, mode, max_shift))
        out["shift"].append(s)
        out["accuracy"].append(float(np.mean(pred == labels)))
        out["agreement"].append(float(np.mean(pred == base)))
    return out
