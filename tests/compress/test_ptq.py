"""Integer PTQ through qwix, BatchNorm folding and fixed point.

Tolerance, fixed before the first run: int8 PTQ (weights and activations) of a trained
lenet5_caffe on scikit-learn digits loses at most 1 percentage point of test accuracy (3 of the
359 test images) and agrees with the float model on at least 98% of them.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import models
from cnnjax.compress import ptq
from cnnjax.errors import ConfigError
from cnnjax.layers import BatchNorm, conv_impl
from cnnjax.models.vgg import VGG
from tests.conftest import make_tiny_config

PTQ_ACCURACY_DROP = 0.01
PTQ_AGREEMENT = 0.98


@pytest.fixture(scope="module")
def trained_lenet(tmp_path_factory):
    from cnnjax.train import train

    config = make_tiny_config(model="lenet5_caffe", dataset="digits", num_steps=150)
    config.data.fit = "resize"
    config.batch_size, config.optimizer.lr = 64, 2e-3
    run = train(config, str(tmp_path_factory.mktemp("lenet5_caffe")))
    images, labels = [], []
    for i in range(len(run.eval_source)):
        example = run.eval_source[i]
        images.append(example["image"])
        labels.append(example["label"])
    x = run.preprocess(jnp.asarray(np.stack(images)))
    variables = {"params": run.state.params, "batch_stats": run.state.batch_stats}
    return run.model, variables, x, np.asarray(labels)


def _predict(module, variables, x):
    return np.asarray(jnp.argmax(module.apply(variables, x, train=False)[0], -1))


def test_int8_ptq_of_a_trained_net_stays_within_the_stated_tolerance(trained_lenet):
    module, variables, x, labels = trained_lenet
    float_predictions = _predict(module, variables, x)
    float_accuracy = np.mean(float_predictions == labels)
    assert float_accuracy > 0.8  # a trained net, or the comparison means nothing
    quantized, qvariables = ptq.quantize_model(module, variables, (28, 28, 1))
    kernel = qvariables["params"]["conv2"]["kernel"].array
    assert kernel.qvalue.dtype == jnp.int8 and kernel.scale.shape == (1, 1, 1, 50)
    predictions = _predict(quantized, qvariables, x)
    assert np.mean(predictions == labels) >= float_accuracy - PTQ_ACCURACY_DROP
    assert np.mean(predictions == float_predictions) >= PTQ_AGREEMENT
    # The integer model is not the float one: the quantization really happened.
    logits = quantized.apply(qvariables, x, train=False)[0]
    assert not np.allclose(logits, module.apply(variables, x, train=False)[0], atol=1e-4)


def test_quantized_kernels_take_the_portable_convolution_whatever_is_asked(trained_lenet):
    module, variables, x, _ = trained_lenet
    quantized, qvariables = ptq.quantize_model(module, variables, (28, 28, 1))
    with conv_impl("xla", force=True):
        portable = quantized.apply(qvariables, x[:16], train=False)[0]
    with conv_impl("onednn", force=True):  # the oneDNN call cannot read int8 kernels
        asked = quantized.apply(qvariables, x[:16], train=False)[0]
    np.testing.assert_array_equal(portable, asked)


def test_int4_weights_are_coarser_than_int8():
    module = models.create_model("lenet5_caffe")
    x = jax.random.normal(jax.random.PRNGKey(1), (16, 28, 28, 1))
    variables = module.init(jax.random.PRNGKey(0), x[:1], train=False)
    reference = module.apply(variables, x, train=False)[0]
    errors = {}
    for bits in (8, 4):
        quantized, qv = ptq.quantize_model(module, variables, (28, 28, 1), bits, None)
        errors[bits] = float(jnp.abs(quantized.apply(qv, x, train=False)[0] - reference).max())
    assert 0 < errors[8] < errors[4]


def test_weights_only_kernels_lie_on_their_per_channel_integer_grid():
    kernel = jnp.array([[0.5, -0.02], [-0.25, 0.01], [0.1, 0.03]])
    params = {"fc": {"kernel": kernel, "bias": jnp.array([0.3, 0.7])}}
    quantized = ptq.quantize_kernels(params, 8)
    scale = np.array([0.5, 0.03]) / 127
    np.testing.assert_allclose(
        quantized["fc"]["kernel"], np.round(np.asarray(kernel) / scale) * scale, rtol=1e-6
    )
    np.testing.assert_array_equal(quantized["fc"]["bias"], params["fc"]["bias"])


def test_batch_norm_folds_into_the_convs_exactly():
    module = VGG(widths=[[8], [16]], hidden=(), norm=BatchNorm, pool_size=None)
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 16, 16, 3))
    variables = jax.tree.map(np.array, module.init(jax.random.PRNGKey(0), x[:1], train=False))
    rng = np.random.default_rng(0)
    for name, stats in variables["batch_stats"].items():
        stats["mean"] = rng.normal(0, 0.5, stats["mean"].shape).astype(np.float32)
        stats["var"] = rng.uniform(0.3, 3.0, stats["var"].shape).astype(np.float32)
        variables["params"][name]["scale"] = rng.uniform(0.5, 2, stats["mean"].shape)
        variables["params"][name]["bias"] = rng.normal(0, 0.5, stats["mean"].shape)
    fields, folded = ptq.fold_batch_norm(module, variables)
    assert fields == {"norm": None} and folded["batch_stats"] == {}
    plain = module.clone(**fields)
    np.testing.assert_allclose(
        plain.apply(folded, x, train=False)[0],
        module.apply(variables, x, train=False)[0],
        rtol=1e-4,
        atol=1e-5,
    )
    quantized, qv = ptq.quantize_model(plain, folded, (16, 16, 3))  # the folded weights in int8
    assert qv["params"]["conv1_1"]["kernel"].array.qvalue.dtype == jnp.int8
    assert quantized.apply(qv, x, train=False)[0].shape == (4, 1000)


def test_a_model_without_batch_norm_folds_to_itself():
    module = models.create_model("lenet300_100")
    variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)), train=False)
    fields, folded = ptq.fold_batch_norm(module, variables)
    assert fields == {} and folded["params"] is variables["params"]


def test_fixed_point_values_saturation_and_gradient():
    x = jnp.array([0.3, -0.26, 1.2, -3.0, 0.124], jnp.float32)
    # Q2.3 in 5 bits: steps of 1/8, range [-2, 15/8].
    np.testing.assert_array_equal(
        ptq.fixed_point(x, 5, 3), np.float32([0.25, -0.25, 1.25, -2.0, 0.125])
    )
    grad = jax.grad(lambda v: jnp.sum(ptq.fixed_point(v, 5, 3) * jnp.arange(5.0)))(x)
    # Straight through where the value fits, zero where it saturated (-3.0 -> -2.0).
    np.testing.assert_array_equal(grad, np.float32([0, 1, 2, 0, 4]))


@pytest.mark.parametrize(
    "max_abs, bits, fraction",
    [(0.9, 8, 7), (1.0, 8, 6), (3.0, 8, 5), (0.1, 8, 10), (0.5, 8, 7), (0.995, 8, 6)],
)
def test_point_position_is_the_finest_that_holds_the_largest_weight(max_abs, bits, fraction):
    assert ptq.point_position(max_abs, bits) == fraction
    largest = (2 ** (bits - 1) - 1) * 2.0**-fraction
    assert largest >= max_abs and (2 ** (bits - 1) - 1) * 2.0 ** -(fraction + 1) < max_abs


def test_fixed_point_params_keep_biases_and_report_each_kernel_format():
    params = {
        "fc1": {"kernel": jnp.array([[0.6, -0.05], [0.2, 0.33]]), "bias": jnp.array([0.123, 0.2])},
    }
    converted, positions = ptq.fixed_point_params(params, 8)
    assert positions == {"fc1/kernel": 7}
    np.testing.assert_array_equal(converted["fc1"]["bias"], params["fc1"]["bias"])
    np.testing.assert_allclose(
        converted["fc1"]["kernel"], np.round(np.asarray(params["fc1"]["kernel"]) * 128) / 128
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"weight_bits": 6}, "weight_bits must be one of 8, 4, got 6"),
        ({"activation_bits": 4}, "activation_bits must be 8 with weight_bits 8"),
        ({"weight_bits": 4, "activation_bits": 8}, "got activation_bits=8 with weight_bits=4"),
    ],
)
def test_unsupported_widths_are_refused(kwargs, message):
    module = models.create_model("lenet300_100")
    with pytest.raises(ConfigError, match=message):
        ptq.quantize_model(module, {"params": {}}, (28, 28, 1), **kwargs)
    with pytest.raises(ConfigError, match="fixed-point bits must be an integer in"):
        ptq.fixed_point(jnp.ones(2), 1, 0)
