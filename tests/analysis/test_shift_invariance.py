import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax.analysis import shift_invariance as si
from cnnjax.errors import ConfigError


def test_shift_images_matches_numpy():
    images = np.random.default_rng(0).integers(0, 255, size=(3, 6, 7, 2), dtype=np.uint8)
    dy, dx = np.array([1, -2, 0]), np.array([0, 3, -1])
    rolled = si.shift_images(images, dy, dx, "circular")
    for i in range(3):
        np.testing.assert_array_equal(rolled[i], np.roll(images[i], (dy[i], dx[i]), axis=(0, 1)))
    cropped = np.asarray(si.shift_images(images, dy, dx, "crop", max_shift=3))
    padded = np.pad(images, ((0, 0), (3, 3), (3, 3), (0, 0)))
    for i in range(3):
        top, left = 3 - dy[i], 3 - dx[i]
        np.testing.assert_array_equal(cropped[i], padded[i, top : top + 6, left : left + 7])
    assert cropped[1, :, :3].sum() == 0 or dx[1] <= 0  # content moved right leaves black columns
    with pytest.raises(ConfigError, match="shift mode"):
        si.shift_images(images, 0, 0, "wrap")


class _Pooled(nn.Module):
    """1x1 conv + global average pool: exactly invariant to circular shifts."""

    @nn.compact
    def __call__(self, x, train=False):
        return nn.Dense(4)(x).mean((1, 2)), {}


class _Corner(nn.Module):
    """Reads one pixel: predictions change with any shift."""

    @nn.compact
    def __call__(self, x, train=False):
        return nn.Dense(4)(x[:, 0, 0]), {}


def _predict(module, images):
    import jax

    variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, *images.shape[1:])))
    return si.make_predict(module, variables, lambda im: im.astype(jnp.float32) / 255.0 - 0.5, 16)


def test_consistency_and_curves_separate_invariant_from_non_invariant_models():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(40, 8, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, 4, size=40)
    invariant = _predict(_Pooled(), images)
    assert si.consistency(invariant, images, 3, "circular") == 1.0
    curve = si.diagonal_curve(invariant, images, labels, 4, "circular")
    assert curve["shift"] == [0, 1, 2, 3, 4] and curve["agreement"] == [1.0] * 5
    assert len(set(curve["accuracy"])) == 1
    fragile = _predict(_Corner(), images)
    assert si.consistency(fragile, images, 3, "circular") < 0.8
    assert si.diagonal_curve(fragile, images, labels, 2, "crop")["agreement"][0] == 1.0
