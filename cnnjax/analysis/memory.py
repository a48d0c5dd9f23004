"""Training memory of a model: what one optimizer step keeps alive, counted and compiled.

The analytic count of a training step at batch `B` is the sum of

* parameters, and as many bytes again for their gradients;
* optimizer state, read off the real optax state tree (`jax.eval_shape` of `tx.init`): Adam
  keeps two moments (2x the parameters), SGD with momentum one (1x), plain SGD none, plus a few
  int32 step counters;
* BatchNorm running statistics (`batch_stats`) and the float32 model input;
* saved activations: the residuals that reverse-mode differentiation keeps from the forward
  pass for the backward pass, measured from the program itself: the outputs of the jaxpr of
  `jax.vjp` that the backward function closes over (what `jax.ad_checkpoint.
  print_saved_residuals` prints). Residuals that are arguments (weights, the input) are already
  counted above; scalar broadcasts (the zeros of `relu`'s derivative, which XLA folds into their
  consumer) are listed but not counted. ReLU saves a 1-byte mask, a dense layer its input.

XLA's own view is `jax.jit(train_step).lower(...).compile().memory_analysis()` of the repo's
`cnnjax.train.steps.train_step` (state donated, as the training loop does): argument, output,
alias (outputs written into donated inputs) and temporary bytes; its footprint is
`argument + output - alias + temp`. The two differ by design: XLA's temporaries also hold the
gradients, the backward pass's own intermediates and buffers it cannot share, while fusion
removes some residuals. Measured on CPU (jax 0.10.2), analytic / XLA:

* resnet20: 1.02 (batch 2, SGD), 1.03 (batch 8, Adam), 1.05 (batch 32, SGD): the saved
  activations alone are 78-103% of XLA's temporaries; the count is a good model.
* lenet5 with Adam: 0.53 at batch 8, 0.28 at batch 64. The CPU backend expands each max pool's
  backward (`select_and_scatter`) into a scatter over buffers the size of the pool's input:
  four int32 iotas, their concatenation (as large again), a float target; about 6x the
  activation, which no residual count sees.

Tests hold lenet5 (batch 8) to a 0.3-1.5 band and resnet20 (batch 2) to 0.8-1.25.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

from cnnjax import models
from cnnjax.layers.backend import conv_impl
from cnnjax.train.losses import get_loss
from cnnjax.train.optim import make_optimizer
from cnnjax.train.state import create_train_state
from cnnjax.train.steps import Preprocess, train_step


def tree_bytes(tree: Any) -> int:
    """Bytes of all array leaves of a pytree (arrays or `ShapeDtypeStruct`s)."""
    return sum(
        int(np.prod(leaf.shape)) * jnp.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(tree)
    )


@dataclasses.dataclass(frozen=True)
class Residual:
    """One array that the backward pass reads from the forward pass.

    Attributes:
      shape, dtype: of the array.
      nbytes: its size in bytes.
      kind: "activation" (computed in the forward pass), "argument" (an input of the
        differentiated function: a weight, the images), "constant" (a literal or a constant
        of the program) or "broadcast" (a scalar broadcast to a full shape, e.g. the zeros of
        ReLU's derivative; XLA folds it). Only activations count as saved-activation bytes.
      primitive: the primitive that produced it ("gt" for a ReLU mask, "dot_general", ...).
    """

    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    kind: str
    primitive: str


def _producer(var, eqns_by_out) -> tuple[str, bool]:
    """(primitive name, is a scalar broadcast) of the equation computing `var`, seen through jit."""
    if isinstance(var, jex_core.Literal):  # a jit that returns a constant
        return "constant", True
    eqn = eqns_by_out.get(var)
    if eqn is None:
        return "argument", False
    if eqn.primitive.name in ("jit", "pjit", "closed_call"):
        inner = eqn.params.get("jaxpr") or eqn.params.get("call_jaxpr")
        inner = getattr(inner, "jaxpr", inner)
        inner_var = inner.outvars[eqn.outvars.index(var)]
        found = _producer(inner_var, {v: e for e in inner.eqns for v in e.outvars})
        return ("jit", False) if found[0] == "argument" else found
    scalar_broadcast = eqn.primitive.name == "broadcast_in_dim" and all(
        isinstance(v, jex_core.Literal) or np.prod(v.aval.shape) <= 1 for v in eqn.invars
    )
    return eqn.primitive.name, scalar_broadcast


def saved_residuals(loss_fn: Callable[..., Any], params: Any, *args: Any) -> list[Residual]:
    """Arrays that `jax.vjp(lambda p: loss_fn(p, *args), params)` saves for the backward pass.

    Args:
      loss_fn: differentiated with respect to its first argument only (like `jax.grad`).
      params: pytree of arrays or `ShapeDtypeStruct`s (nothing is computed: this traces).
      *args: further arguments (images, labels, ...), also arrays or `ShapeDtypeStruct`s.

    Returns:
      One `Residual` per distinct saved array, in the order the backward function holds them.
    """
    leaves, tree = jax.tree.flatten((params, args))

    def forward_and_residuals(*flat):
        p, rest = jax.tree.unflatten(tree, flat)
        _, vjp_fn = jax.vjp(lambda q: loss_fn(q, *rest), p)
        return jax.tree.leaves(vjp_fn)  # the backward function's pytree leaves are its residuals

    with conv_impl("xla", force=True):  # the portable program (see conv_ops)
        jaxpr = jax.make_jaxpr(forward_and_residuals)(*leaves).jaxpr
    arguments, constants = set(jaxpr.invars), set(jaxpr.constvars)
    eqns_by_out = {v: e for e in jaxpr.eqns for v in e.outvars}
    found, seen = [], set()
    for var in jaxpr.outvars:
        literal = isinstance(var, jex_core.Literal)
        if not literal:
            if var in seen:  # the same array held twice is stored once
                continue
            seen.add(var)
        if literal or var in constants:
            kind, primitive = "constant", "constant"
        elif var in arguments:
            kind, primitive = "argument", "argument"
        else:
            primitive, broadcast = _producer(var, eqns_by_out)
            kind = "broadcast" if broadcast else "activation"
        aval = var.aval
        nbytes = int(np.prod(aval.shape)) * aval.dtype.itemsize
        found.append(Residual(tuple(aval.shape), str(aval.dtype), nbytes, kind, primitive))
    return found


def make_tx(optimizer: str = "adam", momentum: float = 0.9):
    """The repo's optimizer (`make_optimizer`) with a constant schedule, as training builds it."""
    config = {"name": optimizer, "lr": 0.1}
    if optimizer == "sgd":
        config["momentum"] = momentum
    tx, _ = make_optimizer(config, {"name": "constant"}, num_steps=1)
    return tx


def optimizer_state_bytes(params: Any, optimizer: str = "adam", momentum: float = 0.9) -> int:
    """Bytes of the optimizer state of `params`, from `jax.eval_shape(tx.init, params)`."""
    return tree_bytes(jax.eval_shape(make_tx(optimizer, momentum).init, params))


@dataclasses.dataclass(frozen=True)
class XlaMemory:
    """`Compiled.memory_analysis()` of a train step, in bytes.

    Attributes:
      argument: input buffers (state and batch).
      output: output buffers (new state and metrics).
      alias: output bytes written into donated argument buffers (counted in both above).
      temp: temporaries (activations, gradients, the backward pass's intermediates).
    """

    argument: int
    output: int
    alias: int
    temp: int

    @property
    def total(self) -> int:
        """Footprint of the step: every buffer once, aliased ones not twice."""
        return self.argument + self.output - self.alias + self.temp


@dataclasses.dataclass(frozen=True)
class TrainingMemory:
    """Analytic and XLA memory of one training step (all sizes in bytes).

    Attributes:
      model, batch, optimizer: what was measured.
      params, grads, optimizer_state, batch_stats, inputs: bytes of each (inputs: float32 model
        input of the batch).
      activations: saved-activation residuals (kind "activation" in `residuals`).
      residuals: everything the backward pass saves, arguments and broadcasts included.
      xla: the compiled step's `XlaMemory`, or None when not compiled.
    """

    model: str
    batch: int
    optimizer: str
    params: int
    grads: int
    optimizer_state: int
    batch_stats: int
    inputs: int
    activations: int
    residuals: tuple[Residual, ...] = dataclasses.field(repr=False)
    xla: XlaMemory | None = None

    @property
    def analytic(self) -> int:
        """Parameters + gradients + optimizer state + BN statistics + input + saved activations."""
        return (
            self.params
            + self.grads
            + self.optimizer_state
            + self.batch_stats
            + self.inputs
            + self.activations
        )

    @property
    def ratio(self) -> float | None:
        """analytic / XLA footprint (None without XLA numbers)."""
        return None if self.xla is None else self.analytic / self.xla.total


def _abstract_setup(
    name: str, batch: int, optimizer: str, momentum: float, input_shape=None, model_kwargs=None
):
    info = models.model_info(name)
    model = models.create_model(name, **dict(model_kwargs or {}))
    shape = tuple(info.input_shape if input_shape is None else input_shape)
    tx = make_tx(optimizer, momentum)
    state = jax.eval_shape(lambda: create_train_state(model, tx, shape, seed=0))
    # Series models take float inputs; image models uint8 pixels, scaled in the step.
    image_dtype = jnp.uint8 if len(shape) == 3 else jnp.float32
    data = {
        "image": jax.ShapeDtypeStruct((batch, *shape), image_dtype),
        "label": jax.ShapeDtypeStruct((batch,), jnp.int32),
    }
    return info, model, state, data


def xla_train_step_memory(
    name: str,
    batch: int,
    optimizer: str = "adam",
    momentum: float = 0.9,
    input_shape=None,
    model_kwargs=None,
) -> XlaMemory:
    """Compiles `cnnjax.train.steps.train_step` (state donated) and reads its memory analysis.

    Compiling costs seconds for small models and minutes for ImageNet ones on a CPU.
    """
    info, _, state, data = _abstract_setup(
        name, batch, optimizer, momentum, input_shape, model_kwargs
    )
    channels = data["image"].shape[-1]
    preprocess = Preprocess(mean=(0.0,) * channels, std=(1.0,) * channels)
    step = jax.jit(
        functools.partial(train_step, preprocess=preprocess, loss=info.loss), donate_argnums=0
    )
    with conv_impl("xla", force=True):
        stats = step.lower(state, data).compile().memory_analysis()
    return XlaMemory(
        argument=int(stats.argument_size_in_bytes),
        output=int(stats.output_size_in_bytes),
        alias=int(stats.alias_size_in_bytes),
        temp=int(stats.temp_size_in_bytes),
    )


def training_memory(
    name: str,
    batch: int,
    optimizer: str = "adam",
    momentum: float = 0.9,
    compile: bool = True,
    input_shape: tuple[int, ...] | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
) -> TrainingMemory:
    """Training memory of registry model `name` at batch `batch`, analytic and (optionally) XLA.

    Args:
      name: registry model.
      batch: examples per step.
      optimizer: "sgd" (with `momentum`; 0 for none), "adam" or "adamw".
      momentum: SGD momentum.
      compile: also compile the train step for `XlaMemory` (slow for large models).
      input_shape: one example's shape (default: the model's `input_shape`).
      model_kwargs: fields for `create_model`, e.g. `{"memory_efficient": True}`.
    """
    info, model, state, data = _abstract_setup(
        name, batch, optimizer, momentum, input_shape, model_kwargs
    )
    objective = get_loss(info.loss)
    images = jax.ShapeDtypeStruct(data["image"].shape, jnp.float32)

    def loss_fn(params, batch_stats, x, labels, key):
        # The same forward as `train_step`'s loss: train mode, BN statistics updated, dropout.
        extra = {"labels": labels} if objective.labels_in_forward else {}
        (logits, intermediates), _ = model.apply(
            {"params": params, "batch_stats": batch_stats},
            x,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": key},
            **extra,
        )
        return objective.fn(logits, intermediates, labels, x, 0.0).mean()

    residuals = saved_residuals(
        loss_fn, state.params, state.batch_stats, images, data["label"], jax.random.key(0)
    )
    return TrainingMemory(
        model=name,
        batch=batch,
        optimizer=optimizer,
        params=tree_bytes(state.params),
        grads=tree_bytes(state.params),  # one gradient per parameter, same dtype
        optimizer_state=tree_bytes(state.opt_state),
        batch_stats=tree_bytes(state.batch_stats),
        inputs=tree_bytes(images),
        activations=sum(r.nbytes for r in residuals if r.kind == "activation"),
        residuals=tuple(residuals),
        xla=(
            xla_train_step_memory(name, batch, optimizer, momentum, input_shape, model_kwargs)
            if compile
            else None
        ),
    )
