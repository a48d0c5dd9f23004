"""MobileNet v2 and ConvNeXt against torchvision: parameter counts and eval logits.

torchvision's random init (`weights=None`, no downloads) is perturbed where it would hide a bug:
BatchNorm statistics and affine parameters are randomized (at init they are the identity), and
ConvNeXt's layer scale is raised from 1e-6 to O(1) (at 1e-6 the residual branches contribute
nothing measurable, so the blocks would go untested). Inputs are smaller than 224x224 to save
time: 96x96 for mobilenet_v2, 64x64 for the other MobileNets and ConvNeXt-T/S (a 2x2 final map at
stride 32), 32x32 and batch 1 for ConvNeXt-B (a 1x1 final map).
"""

import jax
import numpy as np
import pytest

from cnnjax import models
from cnnjax.errors import CheckpointError
from cnnjax.models.convert import from_torch
from tests.models.helpers import randomize_batch_norm, relative_error

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

CASES = {
    # name: (torchvision constructor, its kwargs, input size, batch)
    "mobilenet_v2": ("mobilenet_v2", {}, 96, 2),
    "mobilenet_v2_050": ("mobilenet_v2", {"width_mult": 0.5}, 64, 2),
    "mobilenet_v2_140": ("mobilenet_v2", {"width_mult": 1.4}, 64, 2),
    "convnext_tiny": ("convnext_tiny", {}, 64, 2),
    "convnext_small": ("convnext_small", {}, 64, 1),
    "convnext_base": ("convnext_base", {}, 32, 1),
}


def torch_model(name, seed=0):
    """torchvision's model in eval mode with its random init, perturbed (see module docstring)."""
    torch.manual_seed(seed)
    ctor, kwargs, _, _ = CASES[name]
    model = getattr(torchvision.models, ctor)(weights=None, **kwargs).eval()
    randomize_batch_norm(model)
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "layer_scale"):
                module.layer_scale.normal_(0.0, 0.5)
    return model


def run_ours(name, variables, x_nchw, train=False, **fields):
    """Our logits for a torch NCHW batch (eval mode, or train mode with batch statistics)."""
    model = models.create_model(name, **fields)
    x = np.moveaxis(x_nchw.numpy(), 1, -1)
    if train:
        fn = lambda v: model.apply(v, x, train=True, mutable=["batch_stats"])[0][0]  # noqa: E731
    else:
        fn = lambda v: model.apply(v, x)[0]  # noqa: E731
    # Full float32 products: on GPUs the default precision may use TF32 (10-bit mantissa).
    with jax.default_matmul_precision("highest"):
        return jax.jit(fn)(variables)


@pytest.mark.parametrize("name", list(CASES))
def test_eval_logits_match_torchvision(name):
    reference = torch_model(name)
    torch_params = sum(p.numel() for p in reference.parameters())
    assert models.model_info(name).params == torch_params
    _, _, size, batch = CASES[name]
    x = torch.randn(batch, 3, size, size)
    with torch.no_grad():
        expected = reference(x).numpy()
    logits = run_ours(name, from_torch(name, reference.state_dict()), x)
    assert logits.shape == expected.shape
    assert relative_error(logits, expected) <= 1e-4


def test_published_parameter_counts():
    assert models.model_info("mobilenet_v2").params == 3_504_872
    assert models.model_info("convnext_tiny").params == 28_589_128


def test_mobilenet_v2_training_mode_matches_torch_batch_statistics():
    # Train-mode BN normalizes with the batch's own statistics in both frameworks; dropout is
    # switched off on both sides so the comparison is deterministic.
    reference = torch_model("mobilenet_v2_050").train()
    reference.classifier[0].p = 0.0
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        expected = reference(x).numpy()
    variables = from_torch("mobilenet_v2_050", reference.state_dict())
    logits = run_ours("mobilenet_v2_050", variables, x, train=True, dropout_rate=0.0)
    assert relative_error(logits, expected) <= 1e-4


def test_converter_rejects_another_architecture():
    narrow = torch_model("mobilenet_v2_050").state_dict()
    with pytest.raises(CheckpointError, match="do not fit"):
        from_torch("mobilenet_v2", narrow)
    with pytest.raises(CheckpointError, match="not converted"):
        from_torch("mobilenet_v2", {**narrow, "extra.weight": torch.zeros(1)})
