"""Helpers shared by the model tests: cheap variables, shapes without compute, one-program runs.

Random initialization through `model.init` compiles every initializer (most of a minute for a
large network on 2 CPU cores); these tests need the exact variable tree with sane values, so they
trace `init` abstractly and fill the leaves on the host.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def n_params(tree) -> int:
    """Number of scalars in a pytree of arrays or shapes."""
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def host_variables(model, x, *, seed=0, gain=1.0, layer_scale=1.0, **init_kwargs):
    """Variables with `model`'s exact tree and shapes, filled with numpy.

    Args:
      model: Linen module.
      x: an input (array or `jax.ShapeDtypeStruct`) of the shape the model will see.
      seed: numpy seed of the kernels.
      gain: kernels are normal with variance `gain / fan_in` (1: LeCun, 2: He).
      layer_scale: value of ConvNeXt's per-channel residual scales (`gamma`).
      **init_kwargs: passed to `model.init` (e.g. `train=False`).

    Norm scales and running variances are 1, biases and running means 0.
    """
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros(x.shape), **init_kwargs)
    )
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        if name in ("scale", "var"):
            return np.ones(leaf.shape, leaf.dtype)
        if name == "gamma":
            return np.full(leaf.shape, layer_scale, leaf.dtype)
        if name in ("bias", "mean") or leaf.ndim < 2:
            return np.zeros(leaf.shape, leaf.dtype)
        fan_in = int(np.prod(leaf.shape[:-1]))
        return (rng.standard_normal(leaf.shape) * np.sqrt(gain / fan_in)).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def abstract_apply(model, shape, **kwargs):
    """`(outputs, variables)` of one init and apply on an input of `shape`, as shapes only."""

    def run(images):
        variables = model.init(jax.random.key(0), images)
        return model.apply(variables, images, **kwargs), variables

    return jax.eval_shape(run, jax.ShapeDtypeStruct(shape, jnp.float32))


def compile_for(fn, *args, highest_precision=False):
    """`fn` compiled as one program for arguments shaped like `args`, to call several times.

    Op-by-op dispatch compiles every initializer and op on its own (seconds per model). XLA's CPU
    backend optimizations are skipped: they cost more compile time than these small runs save.
    `highest_precision` asks for full float32 products (no TF32 on GPUs) for reference checks.
    """
    options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else {}
    precision = "highest" if highest_precision else None
    with jax.default_matmul_precision(precision):
        return jax.jit(fn).lower(*args).compile(compiler_options=options)


def compiled(fn, *args, highest_precision=False):
    """`fn(*args)` compiled as one program (see `compile_for`)."""
    return compile_for(fn, *args, highest_precision=highest_precision)(*args)


def relative_error(ours, theirs) -> float:
    """Largest absolute difference relative to the largest reference magnitude."""
    theirs = np.asarray(theirs)
    return float(np.abs(np.asarray(ours) - theirs).max() / np.abs(theirs).max())


def randomize_batch_norm(module) -> None:
    """Non-trivial running statistics and affine parameters in every torch `BatchNorm2d`, so a
    swapped mean/variance or a wrong epsilon shows in a parity test."""
    import torch

    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, torch.nn.BatchNorm2d):
                layer.running_mean.normal_(0.0, 0.2)
                layer.running_var.uniform_(0.5, 2.0)
                layer.weight.uniform_(0.5, 1.5)
                layer.bias.normal_(0.0, 0.2)
