"""Training memory: exact state sizes, saved residuals by hand, and XLA's memory analysis."""

import jax
import jax.numpy as jnp
import pytest

from cnnjax import models
from cnnjax.analysis import memory

LENET5_PARAM_BYTES = 61_706 * 4


@pytest.fixture(scope="module")
def lenet5_params():
    return models.model_info("lenet5").abstract_variables()["params"]


@pytest.mark.parametrize(
    "optimizer, momentum, expected",
    [
        # Adam: two moments + two int32 step counters (adam's and the lr schedule's).
        ("adam", 0.9, 2 * LENET5_PARAM_BYTES + 8),
        ("adamw", 0.9, 2 * LENET5_PARAM_BYTES + 8),
        # SGD with momentum: one trace + the schedule's counter; without: the counter only.
        ("sgd", 0.9, LENET5_PARAM_BYTES + 4),
        ("sgd", 0.0, 4),
    ],
)
def test_optimizer_state_bytes_of_lenet5(lenet5_params, optimizer, momentum, expected):
    assert memory.tree_bytes(lenet5_params) == LENET5_PARAM_BYTES
    assert memory.optimizer_state_bytes(lenet5_params, optimizer, momentum) == expected


def _conv_relu_dense(weights, x):
    h = jax.lax.conv_general_dilated(
        x, weights["conv"], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    h = jax.nn.relu(h)
    return jnp.sum(h.reshape(h.shape[0], -1) @ weights["dense"])


def test_saved_activations_of_a_tiny_conv_net_by_hand():
    batch = 3
    weights = {
        "conv": jax.ShapeDtypeStruct((3, 3, 2, 4), jnp.float32),
        "dense": jax.ShapeDtypeStruct((6 * 6 * 4, 5), jnp.float32),
    }
    x = jax.ShapeDtypeStruct((batch, 8, 8, 2), jnp.float32)
    residuals = memory.saved_residuals(_conv_relu_dense, weights, x)
    by_kind = {}
    for r in residuals:
        by_kind.setdefault(r.kind, []).append(r)
    # The conv's weight gradient reads x and the dense layer's input gradient its kernel: both
    # are arguments, stored anyway.
    assert sorted(r.shape for r in by_kind["argument"]) == [(3, 8, 8, 2), (144, 5)]
    # Saved activations: ReLU's mask (1 byte per element) and the dense layer's input (float32).
    activations = {(r.shape, r.dtype) for r in by_kind["activation"]}
    assert activations == {((batch, 6, 6, 4), "bool"), ((batch, 144), "float32")}
    assert sum(r.nbytes for r in by_kind["activation"]) == batch * 144 * (1 + 4)
    # The zeros of ReLU's derivative are a scalar broadcast, not counted.
    assert all(r.primitive == "broadcast_in_dim" for r in by_kind.get("broadcast", []))


def test_training_memory_of_resnet20_without_compiling():
    m = memory.training_memory("resnet20", batch=2, optimizer="sgd", compile=False)
    params = models.model_info("resnet20").params * 4
    assert m.params == m.grads == params
    assert m.optimizer_state == params + 4
    # BN: mean and variance for the stem's 16 channels and 18 BNs of 16/32/64 in the stages.
    assert m.batch_stats == 2 * 4 * (16 + 6 * (16 + 32 + 64))
    assert m.inputs == 2 * 32 * 32 * 3 * 4
    # Each 32x32x16 conv saves more than its output; 19 convs of 16-64 KB per image and more.
    assert 2 * 19 * 8 * 8 * 64 * 4 < m.activations < 2 * 4 * 32 * 32 * 16 * 4 * 19
    assert m.xla is None and m.ratio is None


def test_xla_memory_analysis_of_lenet5_is_comparable():
    m = memory.training_memory("lenet5", batch=8, optimizer="adam")
    state = LENET5_PARAM_BYTES + m.optimizer_state + 4 + 8  # params, Adam, step, rng key
    # The donated state is written in place: every state byte aliases an input byte.
    assert m.xla.alias == state
    assert m.xla.argument == state + 8 * 32 * 32 + 8 * 4  # + uint8 images and int32 labels
    assert m.xla.temp > m.grads
    # Documented band (cnnjax/analysis/memory.py): XLA's temporaries hold more than the saved
    # residuals, here chiefly the CPU's index arrays for the max pools' backward; ~0.53.
    assert 0.3 < m.ratio < 1.5, m


def test_xla_memory_of_resnet20_is_mostly_saved_activations():
    m = memory.training_memory("resnet20", batch=2, optimizer="sgd")
    assert m.activations < m.xla.temp
    assert 0.8 < m.ratio < 1.25, m  # ~1.02 on CPU
