"""GoogLeNet and Inception v3 against torchvision: converted weights give the same logits.

torchvision builds the models with random weights (`weights=None`, `init_weights=True`, no
download). Their BatchNorm layers are then calibrated: running statistics set to those of a
random batch (one cumulative-average forward pass in training mode), scales and shifts drawn at
random, so that every layer's normalization is exercised and the logits stay O(1) instead of
growing through ~60 layers of torchvision's init. Inputs are smaller than the 224/299 defaults to
save time: GoogLeNet 67x67 (odd, so ceil-mode pools keep partial windows), Inception v3 107x107
(torchvision needs >= 75x75). Tolerance: `max|ours - theirs| <= 1e-4 max|theirs|`; measured on
CPU: about 1e-5 (eval) and 4e-5 (training), float32 rounding amplified through ~60 BN layers.
Our side runs at "highest" matmul precision so that TF32 on a GPU cannot blur the comparison.
"""

import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from cnnjax import models  # noqa: E402
from cnnjax.errors import CheckpointError  # noqa: E402
from cnnjax.models.convert import from_torch  # noqa: E402
from cnnjax.models.googlenet import conv_block  # noqa: E402
from cnnjax.models.inception_v3 import InceptionAux, InceptionV3  # noqa: E402

RTOL = 1e-4


@pytest.fixture(autouse=True)
def full_float32_precision():
    with jax.default_matmul_precision("highest"):
        yield


def calibrate(net, batch, skip=()):
    """Running statistics of `batch`, random BN affine parameters; returns `net` in eval mode."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None  # cumulative average: one batch sets the statistics
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(module.bias.shape, generator=generator) - 0.5)
        hidden = {name: getattr(net, name) for name in skip}
        for name in skip:  # modules torch cannot run at this input size in training mode
            setattr(net, name, None)
        net.train()(batch)
        for name, module in hidden.items():
            setattr(net, name, module)
    return net.eval()


def nchw_to_nhwc(x):
    return jnp.asarray(x.numpy().transpose(0, 2, 3, 1))


def assert_close(ours, theirs):
    ours, theirs = np.asarray(ours), theirs.detach().numpy()
    assert ours.shape == theirs.shape
    scale = np.abs(theirs).max()
    assert np.abs(ours - theirs).max() <= RTOL * scale, np.abs(ours - theirs).max() / scale


def test_googlenet_eval_and_train_logits_match_torchvision():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 67, 67)
    net = torchvision.models.googlenet(
        weights=None,
        aux_logits=True,
        init_weights=True,
        transform_input=True,
        dropout=0.0,
        dropout_aux=0.0,
    )
    net = calibrate(net, torch.randn(8, 3, 67, 67))
    variables = from_torch("googlenet", net.state_dict())
    model = models.create_model(
        "googlenet", transform_input=True, dropout_rate=0.0, aux_dropout_rate=0.0
    )
    with torch.no_grad():
        expected = net(x)
    logits, _ = jax.jit(lambda v, x: model.apply(v, x))(variables, nchw_to_nhwc(x))
    assert_close(logits, expected)

    # Training mode: batch statistics, and the auxiliary heads run (their dense layer reads a
    # flattened 128x4x4 map, whose rows the converter reorders from NCHW).
    with torch.no_grad():
        expected = net.train()(x)
    (logits, features), _ = jax.jit(
        lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"])
    )(variables, nchw_to_nhwc(x))
    assert_close(logits, expected.logits)
    assert_close(features["aux1"], expected.aux_logits1)
    assert_close(features["aux2"], expected.aux_logits2)


def test_inception_v3_eval_logits_match_torchvision():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 107, 107)
    net = torchvision.models.inception_v3(weights=None, init_weights=True)
    # Its auxiliary head only runs in training, on the 17x17 grid of a 299x299 input.
    net = calibrate(net, torch.randn(8, 3, 107, 107), skip=("AuxLogits",))
    variables = from_torch("inception_v3", net.state_dict())
    with torch.no_grad():
        expected = net(x)
    model = models.create_model("inception_v3")
    logits, _ = jax.jit(lambda v, x: model.apply(v, x))(variables, nchw_to_nhwc(x))
    assert_close(logits, expected)

    # The auxiliary head alone, on the 17x17x768 map it reads at 299x299 (eval mode).
    grid = torch.randn(2, 768, 17, 17)
    with torch.no_grad():
        expected = net.AuxLogits(grid)
    head = InceptionAux(1000, conv_block(InceptionV3()))
    aux_vars = {kind: tree["AuxLogits"] for kind, tree in variables.items()}
    assert_close(head.apply(aux_vars, nchw_to_nhwc(grid), False), expected)


def test_converter_rejects_a_state_dict_without_the_aux_heads():
    net = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False)
    with pytest.raises(CheckpointError, match="aux1"):
        from_torch("googlenet", net.state_dict())
