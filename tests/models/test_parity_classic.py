"""AlexNet and VGG against torchvision: converted weights give the same eval-mode logits.

torchvision's randomly initialized models (`weights=None`, no downloads), batch norm layers given
random statistics and affine parameters so that the converter's mapping of them is tested.
Inputs are smaller than 224x224 to save time: the adaptive average pools before the classifiers
make any size from 32x32 (VGG) or 63x63 (AlexNet) up valid. VGG-11 runs at 64x64, where a 2x2
map is spread over the 7x7 classifier input; the deeper VGGs at 32x32, where the 1x1 map is
replicated 7x7 (still a test of the NCHW-to-NHWC row order of fc6: channel-major and
position-major flattening differ). AlexNet runs at 96x96 (2x2 before the pool) and at its
default 224x224.
"""

import jax
import numpy as np
import pytest

from cnnjax import models
from cnnjax.models.convert import convertible_models, from_torch
from tests.models.helpers import randomize_batch_norm

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

CASES = [
    ("alexnet", 96),
    ("alexnet", 224),
    ("vgg11", 64),
    ("vgg11_bn", 64),
    ("vgg13", 32),
    ("vgg13_bn", 32),
    ("vgg16", 32),
    ("vgg16_bn", 32),
    ("vgg19", 32),
    ("vgg19_bn", 32),
]


def test_every_torchvision_classic_has_a_converter():
    assert {name for name, _ in CASES} <= set(convertible_models())


@pytest.mark.parametrize("name, size", CASES)
def test_logits_match_torchvision(name, size):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)(weights=None).eval()
    randomize_batch_norm(reference)
    assert sum(p.numel() for p in reference.parameters()) == models.model_info(name).params

    variables = from_torch(name, reference.state_dict())
    x = np.random.default_rng(0).normal(size=(2, size, size, 3)).astype(np.float32)
    with torch.no_grad():
        theirs = reference(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))
    theirs = theirs.numpy()
    model = models.create_model(name)
    with jax.default_matmul_precision("float32"):  # no TF32/bfloat16 passes on accelerators
        ours = np.asarray(jax.jit(lambda v, x: model.apply(v, x)[0])(variables, x))
    assert ours.shape == theirs.shape == (2, 1000)
    scale = np.abs(theirs).max()
    assert scale > 0
    assert np.abs(ours - theirs).max() <= 1e-4 * scale, np.abs(ours - theirs).max() / scale
