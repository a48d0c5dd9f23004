"""Quantization-aware training in the loop: BatchNorm folded first, int8 fake quantization."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import models
from cnnjax.compress import ptq, qat
from cnnjax.errors import ConfigError
from cnnjax.layers.components import resolve_components
from cnnjax.train import train
from cnnjax.train.transfer import read_checkpoint
from tests.conftest import make_tiny_config

SMALL_VGG = {"widths": [[8], [16]]}


def _vgg_config(**overrides):
    config = make_tiny_config(model="vgg16_cifar", **overrides)
    config.model_kwargs.widths = SMALL_VGG["widths"]
    return config


@pytest.fixture(scope="module")
def float_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("float")
    return str(workdir), train(_vgg_config(num_steps=24), str(workdir))


@pytest.fixture(scope="module")
def qat_run(float_run, tmp_path_factory):
    source, _ = float_run
    config = _vgg_config(num_steps=8)
    config.init_from.workdir = source
    config.quant.qat_bits = 8
    workdir = tmp_path_factory.mktemp("qat")
    return str(workdir), train(config, str(workdir))


@pytest.mark.slow  # a float VGG run and its QAT run
def test_qat_folds_batch_norm_and_trains_the_plain_family(qat_run):
    workdir, run = qat_run
    saved = json.loads(open(f"{workdir}/config.json").read())
    assert saved["model_kwargs"]["norm"] == "none" and saved["quant"]["qat_bits"] == 8
    params, _ = read_checkpoint(workdir)
    assert not any(name.startswith("bn") for name in params["params"])
    assert set(params["params"]["conv1_1"]) == {"kernel", "bias"}
    assert np.isfinite(run.result["loss"])


@pytest.mark.slow  # a float VGG run and its QAT run
def test_the_qat_model_decides_as_the_int8_model_it_converts_to(qat_run):
    workdir, run = qat_run
    saved = json.loads(open(f"{workdir}/config.json").read())
    plain = models.create_model(
        "vgg16_cifar", num_classes=10, **resolve_components(saved["model_kwargs"])
    )
    variables = {"params": run.state.params, "batch_stats": {}}
    images = np.stack([run.eval_source[i]["image"] for i in range(len(run.eval_source))])
    x = run.preprocess(jnp.asarray(images))  # the test images, which the net has learned
    quantized, qvariables = ptq.quantize_model(plain, variables, (32, 32, 3))
    converted = quantized.apply(qvariables, x, train=False)[0]
    fake = qat.quantization_aware(plain).apply(variables, x, train=False)[0]
    floating = plain.apply(variables, x, train=False)[0]
    # Both round (neither is the float model), and they decide alike. They are not equal: qwix's
    # QAT and PTQ scale the activations with different granularity.
    assert float(jnp.abs(fake - floating).max()) > 1e-4
    assert float(jnp.abs(converted - floating).max()) > 1e-4
    agreement = np.mean(np.argmax(fake, -1) == np.argmax(converted, -1))
    assert agreement >= 0.95


def test_qat_of_a_model_without_batch_norm_needs_no_source(tmp_path):
    config = make_tiny_config(model="lenet300_100", num_steps=4)
    config.data.fit = "resize"
    config.quant.qat_bits = 8
    run = train(config, str(tmp_path))
    assert np.isfinite(run.result["loss"])
    assert json.loads((tmp_path / "config.json").read_text())["model_kwargs"] == {}


def test_folding_with_nothing_trained_is_refused(tmp_path):
    config = _vgg_config(num_steps=4)
    config.quant.qat_bits = 8
    with pytest.raises(ConfigError, match="quant.fold_batch_norm folds trained BatchNorm"):
        train(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_other_widths_are_refused(tmp_path):
    config = make_tiny_config(num_steps=4)
    config.quant.qat_bits = 4
    with pytest.raises(ConfigError, match=r"quant.qat_bits must be 0 \(off\) or 8, got 4"):
        train(config, str(tmp_path / "run"))
