"""Every registered model: forward shapes, named intermediates, parameter counts, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import models
from cnnjax.errors import ConfigError, ShapeError
from cnnjax.models.resnet_cifar import BLOCKS_PER_STAGE


def lenet5_params(classes=10):
    """C1 6@5x5x1, C3 16@5x5x6 (full map), C5 120@5x5x16, F6 84, output: weights + biases."""
    return (
        (25 + 1) * 6 + (25 * 6 + 1) * 16 + (25 * 16 + 1) * 120 + (120 + 1) * 84 + (84 + 1) * classes
    )


def cifar_resnet_params(n, classes=10):
    """Stem 3x3x3x16 + BN; per stage 2n 3x3 convs (the first may widen) with BN; dense head."""
    total = 3 * 3 * 3 * 16 + 2 * 16
    in_ch = 16
    for width in (16, 32, 64):
        for _ in range(n):
            total += 9 * in_ch * width + 9 * width * width + 4 * width
            in_ch = width
    return total + 64 * classes + classes


EXPECTED_PARAMS = {"lenet5": lenet5_params(), "lenet5_classic": lenet5_params()}
EXPECTED_PARAMS.update({f"resnet{d}": cifar_resnet_params(n) for d, n in BLOCKS_PER_STAGE.items()})


def test_registry_lists_the_foundation_models():
    assert {"lenet5", "lenet5_classic", "resnet20", "resnet110"} <= set(models.list_models())
    assert models.list_models("resnet2*") == ["resnet20"]


@pytest.mark.parametrize("name", models.list_models())
def test_forward_shape_intermediates_and_params(name):
    info = models.model_info(name)
    model = models.create_model(name, num_classes=7)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, *info.input_shape))
    variables = jax.jit(lambda k: model.init(k, x))(jax.random.PRNGKey(1))
    logits, intermediates = jax.jit(lambda v: model.apply(v, x))(variables)
    assert logits.shape == (2, 7) and bool(jnp.all(jnp.isfinite(logits)))
    assert {"stem", "pre_logits"} <= set(intermediates)
    assert intermediates["pre_logits"].shape[0] == 2
    default = models.create_model(name).init(jax.random.PRNGKey(1), x)
    assert sum(p.size for p in jax.tree.leaves(default["params"])) == EXPECTED_PARAMS[name]


def test_resnet20_parameter_count_is_the_papers_0_27m():
    assert EXPECTED_PARAMS["resnet20"] == 269_722


def test_batchnorm_statistics_update_only_in_training():
    model = models.create_model("resnet20", width=4)
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 32, 32, 3)) * 3 + 1
    variables = model.init(jax.random.PRNGKey(1), x)
    _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    before = np.asarray(variables["batch_stats"]["stem_bn"]["mean"])
    after = np.asarray(updates["batch_stats"]["stem_bn"]["mean"])
    assert not np.allclose(before, after)
    (eval_logits, _) = model.apply(variables, x, train=False)
    (eval_again, _) = model.apply(variables, x[:1], train=False)
    np.testing.assert_allclose(eval_logits[:1], eval_again, rtol=1e-5, atol=1e-5)


def test_option_b_shortcut_adds_projections():
    a = models.create_model("resnet20")
    b = models.create_model("resnet20", shortcut="B")
    x = jnp.zeros((1, 32, 32, 3))
    count = [sum(p.size for p in jax.tree.leaves(m.init(jax.random.PRNGKey(0), x)["params"]))
             for m in (a, b)]  # fmt: skip
    assert count[1] - count[0] == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)


def test_unknown_model_suggests_the_closest_name():
    with pytest.raises(ConfigError, match="unknown model 'resnet21'; did you mean 'resnet20'"):
        models.create_model("resnet21")


def test_unknown_model_field_lists_valid_fields():
    with pytest.raises(ConfigError, match="'widht'.*did you mean 'width'"):
        models.create_model("resnet20", widht=8)


def test_input_too_small_is_a_shape_error_naming_the_layer():
    model = models.create_model("lenet5")
    with pytest.raises(ShapeError, match="c3"):
        model.init(jax.random.PRNGKey(0), jnp.zeros((1, 12, 12, 1)))


def test_bad_resnet_depth_is_a_config_error():
    model = models.create_model("resnet20", depth=21)
    with pytest.raises(ConfigError, match="6n\\+2"):
        model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
