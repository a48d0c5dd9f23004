"""Helpers shared by the layer tests: cheap random keys, host-drawn arrays and variables, and the
numpy names of the padding modes.

On 2 CPU cores XLA takes seconds to compile JAX's default threefry generator for every new shape
(`jax.random.normal` of an input, each initializer of an eager `init`), most of these tests' time.
The tests need some random values, not particular ones, so inputs are drawn with numpy and Flax is
seeded with the "rbg" generator, which compiles several times faster.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# cnnjax padding mode -> the numpy.pad mode with the same semantics.
NUMPY_MODES = {
    "zeros": "constant",
    "constant": "constant",
    "reflect": "reflect",
    "symmetric": "symmetric",
    "replicate": "edge",
    "circular": "wrap",
}


def rng_key(seed: int = 0) -> jax.Array:
    """A typed PRNG key of the "rbg" generator (cheap to compile; any generator would do)."""
    return jax.random.key(seed, impl="rbg")


def normal(seed: int, *shape: int, loc: float = 0.0, scale: float = 1.0) -> jax.Array:
    """float32 normal samples drawn on the host (no compilation)."""
    return jnp.asarray(np.random.default_rng(seed).normal(loc, scale, size=shape), jnp.float32)


def host_variables(model, x, *, seed: int = 0, perturb: bool = True, **init_kwargs):
    """Variables with `model`'s exact tree and shapes, filled on the host with numpy.

    `init` is traced abstractly (nothing compiled). Kernels are normal with variance 2 / fan_in
    (He), so activations keep their scale through deep networks.

    Args:
      model: Linen module.
      x: an input (array or `jax.ShapeDtypeStruct`) of the shape the model will see.
      seed: numpy seed.
      perturb: give norms non-trivial statistics and affine parameters (scales and variances in
        [0.5, 1.5], means and biases about 0.1); else scales and variances are 1, the rest 0.
      **init_kwargs: passed to `model.init` (e.g. `train=False`).
    """
    shapes = jax.eval_shape(
        lambda: model.init(rng_key(0), jnp.zeros(x.shape, x.dtype), **init_kwargs)
    )
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        if name in ("scale", "var"):
            values = rng.uniform(0.5, 1.5, leaf.shape) if perturb else np.ones(leaf.shape)
            return values.astype(leaf.dtype)
        if leaf.ndim < 2:  # biases, running means
            values = 0.1 * rng.standard_normal(leaf.shape) if perturb else np.zeros(leaf.shape)
            return values.astype(leaf.dtype)
        fan_in = int(np.prod(leaf.shape[:-1]))
        return (rng.standard_normal(leaf.shape) * np.sqrt(2.0 / fan_in)).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)
