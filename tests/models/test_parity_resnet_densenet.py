"""ResNets and DenseNets against torchvision: parameter counts, eval logits, train-mode BN.

torchvision models with their random init (`weights=None`, no downloads) are converted with
`from_torch`; logits must agree within `1e-4 * max|torch logits|`. Inputs are smaller than 224x224
(both families end in global average pooling, so any size works) to keep compile times low:
ResNet-18 also runs at 224x224 once; the deepest models run at 32x32 with batch 1.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from cnnjax import models  # noqa: E402
from cnnjax.errors import CheckpointError  # noqa: E402
from cnnjax.models.convert import from_torch  # noqa: E402
from tests.models.helpers import compiled, randomize_batch_norm, relative_error  # noqa: E402

# (model, input size, batch)
CASES = [
    ("resnet18", 224, 1),
    ("resnet18", 64, 2),
    ("resnet34", 64, 2),
    ("resnet50", 64, 2),
    ("resnet101", 32, 1),
    ("resnet152", 32, 1),
    ("densenet121", 64, 2),
    ("densenet161", 32, 1),
    ("densenet169", 32, 1),
    ("densenet201", 32, 1),
]
NAMES = sorted({name for name, _, _ in CASES})


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    # Tiny forwards: torch's thread pool only contends with XLA's (seconds per call on 2 cores).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.cache
def torch_model(name):
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    randomize_batch_norm(model)
    return model


def images(size, batch, seed=1):
    torch.manual_seed(seed)
    x = torch.randn(batch, 3, size, size)
    return x, jnp.asarray(x.numpy().transpose(0, 2, 3, 1))


@pytest.mark.parametrize("name", NAMES)
def test_parameter_count_equals_torchvision(name):
    expected = sum(p.numel() for p in torch_model(name).parameters())
    assert models.model_info(name).params == expected


@pytest.mark.parametrize("name, size, batch", CASES)
def test_eval_logits_match_torchvision(name, size, batch):
    reference = torch_model(name)
    x_torch, x = images(size, batch)
    with torch.no_grad():
        expected = reference(x_torch).numpy()
    variables = from_torch(name, reference.state_dict())
    logits, _ = compiled(models.create_model(name).apply, variables, x, highest_precision=True)
    assert logits.shape == expected.shape == (batch, 1000)
    assert relative_error(logits, expected) <= 1e-4


def test_train_mode_logits_and_batch_statistics_match_torchvision():
    reference = torch_model("resnet18")
    x_torch, x = images(64, 4, seed=2)
    # Cloned: the converted arrays may share memory with the torch tensors (numpy views, and
    # jax's CPU backend can alias numpy buffers), which torch's training step updates in place.
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    variables = from_torch("resnet18", state)
    model = models.create_model("resnet18")
    train = functools.partial(model.apply, train=True, mutable=["batch_stats"])
    (logits, _), updates = jax.block_until_ready(
        compiled(train, variables, x, highest_precision=True)
    )
    reference.train()
    try:
        with torch.no_grad():
            expected = reference(x_torch).numpy()
    finally:
        reference.eval()
    # the model's state dict changed: compare the updated running means (Flax momentum 0.9 is
    # torch momentum 0.1; running variances differ by design, see cnnjax.layers.norm)
    assert relative_error(logits, expected) <= 1e-4
    stats = updates["batch_stats"]
    torch_state = reference.state_dict()
    for ours, theirs in [
        (stats["stem_bn"]["mean"], "bn1.running_mean"),
        (stats["stage4_block1"]["proj_bn"]["mean"], "layer4.0.downsample.1.running_mean"),
    ]:
        np.testing.assert_allclose(ours, torch_state[theirs].numpy(), rtol=1e-4, atol=1e-5)
    torch_model.cache_clear()  # the torch model's statistics moved: rebuild it for other tests


def test_converter_rejects_another_architecture():
    with pytest.raises(CheckpointError, match="not converted|do not fit"):
        from_torch("resnet34", torch_model("resnet18").state_dict())
    with pytest.raises(CheckpointError):
        from_torch("densenet169", torch_model("densenet121").state_dict())
