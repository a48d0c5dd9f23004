"""make_compact: channel-pruned models turned into smaller dense models of the same family."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import models
from cnnjax.compress import compact, prune
from cnnjax.errors import ConfigError
from cnnjax.layers import BatchNorm
from cnnjax.models.vgg import VGG


def _init(module, shape, seed=0):
    return module.init(jax.random.PRNGKey(seed), jnp.zeros((1, *shape)), train=False)


def _zero_filters(params, layer, filters, with_bias=False):
    """Zeroes whole output filters of `layer` (its bias too if `with_bias`)."""
    params = jax.tree.map(np.array, params)
    params[layer]["kernel"][..., filters] = 0
    if with_bias and "bias" in params[layer]:
        params[layer]["bias"][filters] = 0
    return params


def _logits(module, variables, x):
    return np.asarray(module.apply(variables, x, train=False)[0])


def _compare(module, variables, shape, tolerance=1e-5):
    fields, small, report = compact.make_compact(module, variables)
    smaller = module.clone(**fields)
    x = jax.random.normal(jax.random.PRNGKey(1), (4, *shape))
    for a, b in zip(jax.tree.leaves(_init(smaller, shape)), jax.tree.leaves(small), strict=True):
        assert a.shape == b.shape  # the variables fit the model the fields make
    np.testing.assert_allclose(
        _logits(smaller, small, x), _logits(module, variables, x), rtol=tolerance, atol=tolerance
    )
    return fields, small, report


def test_lenet_300_100_loses_its_zero_units_and_computes_the_same_function():
    module = models.create_model("lenet300_100")
    variables = _init(module, (28, 28, 1))
    params = _zero_filters(variables["params"], "fc1", np.arange(0, 300, 3))  # biases kept
    params = _zero_filters(params, "fc2", [0, 5, 7], with_bias=True)
    fields, small, report = _compare(module, {"params": params}, (28, 28, 1))
    assert fields == {"hidden": [200, 97]}
    assert small["params"]["fc2"]["kernel"].shape == (200, 97)
    assert [(r["layer"], r["width"], r["kept"], r["exact"]) for r in report] == [
        ("fc1", 300, 200, True),
        ("fc2", 100, 97, True),
    ]


def test_lenet5_caffe_folds_the_biases_of_removed_filters_through_conv_and_flatten():
    module = models.create_model("lenet5_caffe")
    variables = _init(module, (28, 28, 1))
    bias = np.asarray(variables["params"]["conv1"]["bias"])
    params = jax.tree.map(np.array, variables["params"])
    for layer in ("conv1", "conv2"):  # nonzero biases: the removed filters emit constants
        params[layer]["bias"] = np.linspace(-0.5, 0.5, params[layer]["bias"].size, dtype=np.float32)
    params = _zero_filters(params, "conv1", [1, 4, 19])
    params = _zero_filters(params, "conv2", np.arange(0, 50, 2))
    params = _zero_filters(params, "ip1", np.arange(100))
    fields, _, _ = _compare(module, {"params": params}, (28, 28, 1))
    assert fields == {"features": [17, 25], "hidden": 400}
    assert bias.shape == (20,)


@pytest.mark.slow  # eager VGG applies, about 20 s
def test_l1_filter_masks_then_compact_on_a_batchnorm_vgg():
    module = VGG(widths=[[8, 8], [16, 16]], hidden=(32,), norm=BatchNorm, pool_size=None)
    shape = (8, 8, 3)
    variables = jax.tree.map(np.array, _init(module, shape))
    rng = np.random.default_rng(0)
    for stats in variables["batch_stats"].values():  # trained-looking running statistics
        stats["mean"] = rng.normal(0, 0.3, stats["mean"].shape).astype(np.float32)
        stats["var"] = rng.uniform(0.5, 2.0, stats["var"].shape).astype(np.float32)
    params = variables["params"]
    sparsities = prune.layer_sparsities(params, {"conv*": 0.5, "fc6/*": 0.25})
    masks = prune.filter_masks(params, sparsities)
    params = jax.tree.map(np.array, prune.apply_masks(params, masks))
    for b, i in ((1, 1), (1, 2), (2, 1), (2, 2)):  # removed filters emit act(BN(0)) = 0
        dead = ~np.any(params[f"conv{b}_{i}"]["kernel"] != 0, axis=(0, 1, 2))
        params[f"bn{b}_{i}"]["bias"][dead] = 0
        variables["batch_stats"][f"bn{b}_{i}"]["mean"][dead] = 0
    pruned = {"params": params, "batch_stats": variables["batch_stats"]}
    fields, small, report = _compare(module, pruned, shape)
    assert fields == {"widths": [[4, 4], [8, 8]], "hidden": [24]}
    assert small["batch_stats"]["bn2_2"]["var"].shape == (8,)
    assert all(r["exact"] for r in report)
    # With the BatchNorm shift left in, the padded convs fold it exactly only away from the
    # border, which the report says.
    params["bn1_1"]["bias"][:] = 0.3
    _, _, report = compact.make_compact(module, pruned)
    assert [r["exact"] for r in report] == [False, True, True, True, True]


def test_a_family_without_a_plan_is_refused_with_the_known_ones():
    module = models.create_model("resnet20")
    with pytest.raises(
        ConfigError, match=r"family CifarResNet .*\(valid: LeNetCaffe, LeNetMLP, VGG\)"
    ):
        compact.make_compact(module, {"params": {}})


@pytest.mark.parametrize(
    "widths",
    [[[8, 0]], [], [[8], []], [[8.5]], [[True]]],
    ids=["zero", "none", "empty", "float", "bool"],
)
def test_vgg_widths_must_be_blocks_of_positive_ints(widths):
    with pytest.raises(ConfigError, match="VGG widths must be blocks of positive ints"):
        _init(VGG(widths=widths, hidden=(), pool_size=None), (8, 8, 3))
