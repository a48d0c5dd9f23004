"""Every registered model: forward shapes, named intermediates, parameter counts, errors."""

import ast
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnnjax import models
from cnnjax.analysis import count_params
from cnnjax.errors import ConfigError, ShapeError
from cnnjax.models import registry
from cnnjax.models.convert import convertible_models, from_torch
from cnnjax.models.resnet_cifar import BLOCKS_PER_STAGE
from tests.models.helpers import compiled, host_variables


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


def test_list_models_sorts_numbers_by_value():
    resnets = models.list_models("resnet*")
    imagenet = [n for n in resnets if models.model_info(n).num_classes == 1000]
    assert imagenet == ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
    assert models.list_models("plain*") == ["plain20", "plain32", "plain44", "plain56", "plain110"]
    lenets = ["lenet5", "lenet5_1998", "lenet5_caffe", "lenet5_classic", "lenet300_100"]
    assert models.list_models("lenet*") == lenets
    # A name that extends another after a digit run sorts after it; ties fall back to the text.
    names = ["a10", "a1b2", "a9", "a1b", "a01", "a1"]
    assert sorted(names, key=registry.natural_key) == ["a01", "a1", "a1b", "a1b2", "a9", "a10"]


def test_default_class_count_is_the_constructors():
    assert models.model_info("resnet18").num_classes == 1000  # the ResNet field default
    assert models.model_info("densenet_bc_100").num_classes == 10  # the partial's keyword
    resnet18 = models.model_info("resnet18").constructor
    with pytest.raises(TypeError, match="num_classes"):  # stated once: not in the metadata too
        models.register("resnet18_again", resnet18, input_shape=(224, 224, 3), num_classes=1000)


def test_torchvision_converters_live_in_the_registry():
    assert models.model_info("resnet50").converter is not None
    assert models.model_info("resnet20").converter is None  # no torchvision CIFAR ResNet
    assert "resnet50" in convertible_models() and "resnet20" not in convertible_models()
    with pytest.raises(ConfigError, match="torchvision converter 'resnet20'"):
        from_torch("resnet20", {})


def test_every_registered_name_is_written_literally_as_the_first_argument_of_a_call():
    """Greppable names: no name is built by a loop or an f-string."""
    literal_first_args = set()
    for path in pathlib.Path(registry.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and node.args:
                first = node.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    literal_first_args.add(first.value)
    assert set(models.list_models()) <= literal_first_args


def has_batch_norm(variables) -> bool:
    return bool(jax.tree.leaves(variables.get("batch_stats", {})))


def is_large(name: str) -> bool:
    """ImageNet-sized models: compiling their training step costs 10-60 s each on 2 CPU cores."""
    height, width = models.model_info(name).input_shape[:2]
    return height * width > 64 * 64


# One cheap model per family kind checks each registry-wide property in the default suite; the
# rest of the registry runs with `pytest -m slow` (tracing every model costs minutes on 2 cores).
TRACE_REPRESENTATIVES = {
    "lenet5",
    "lenet5_classic",  # plain conv nets (with hand-counted parameters)
    "resnet20",  # residual (hand-counted parameters)
    "densenet_bc_100",  # dense / concatenation
    "googlenet_2014",  # inception branches
    "mobilenet_v1_050",  # depthwise separable
    "capsnet",  # capsules and routing
    "tcn1d",  # 1-D
}
# The training step is compiled: only small models, and of those one per kind that has one (no
# inception or depthwise model is small; DenseNet-BC-100's compile alone takes minutes).
TRAIN_REPRESENTATIVES = {"lenet5_classic", "resnet20", "capsnet", "tcn1d"}


def registry_params(representatives, slow=lambda name: False):
    """Every registered name; those outside `representatives` (or `slow(name)`) marked slow."""
    return [
        n if n in representatives and not slow(n) else pytest.param(n, marks=pytest.mark.slow)
        for n in models.list_models()
    ]


def cross_entropy(logits, labels):
    return -jnp.mean(
        jnp.sum(jax.nn.one_hot(labels, logits.shape[-1]) * jax.nn.log_softmax(logits), -1)
    )


@pytest.mark.parametrize("name", registry_params(TRACE_REPRESENTATIVES))
def test_every_model_traces_a_training_step_at_its_default_input(name):
    """Init, train-mode forward and gradient, traced on abstract shapes (no compilation)."""
    info = models.model_info(name)
    model = models.create_model(name, num_classes=7)
    x = jax.ShapeDtypeStruct((2, *info.input_shape), jnp.float32)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x.shape)))
    params = variables["params"]
    state = {k: v for k, v in variables.items() if k != "params"}

    def loss_fn(p, images, state):
        (logits, features), _ = model.apply(
            {"params": p, **state},
            images,
            train=True,
            mutable=["batch_stats"],
            rngs={"dropout": jax.random.key(2)},
        )
        return cross_entropy(logits, jnp.array([1, 5])), (logits, features)

    (loss, (logits, features)), grads = jax.eval_shape(
        jax.value_and_grad(loss_fn, has_aux=True), params, x, state
    )
    assert logits.shape == (2, 7) and loss.shape == ()
    assert jax.tree.map(lambda g: g.shape, grads) == jax.tree.map(lambda p: p.shape, params)
    assert {"stem", "stage1", "pre_logits"} <= set(features), sorted(features)
    default = jax.eval_shape(
        lambda: models.create_model(name).init(jax.random.key(0), jnp.zeros(x.shape))
    )
    assert count_params(default["params"]) == info.params
    if name in EXPECTED_PARAMS:
        assert info.params == EXPECTED_PARAMS[name]


@pytest.mark.parametrize("name", registry_params(TRAIN_REPRESENTATIVES, slow=is_large))
def test_every_model_trains_and_evaluates_at_its_default_input(name):
    """One jitted training step and one jitted evaluation at the registered input shape.

    ImageNet-sized models, and all but `TRAIN_REPRESENTATIVES`, are marked `slow` (run them
    with `pytest -m slow`): their compile time would take the suite past its CI budget.
    """
    info = models.model_info(name)
    model = models.create_model(name, num_classes=7)
    x = jax.random.normal(jax.random.key(0), (2, *info.input_shape))
    labels = jnp.array([1, 5])
    variables = host_variables(model, x, train=False)
    params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}

    def train_step(params, state):
        def loss_fn(p):
            (logits, features), updates = model.apply(
                {"params": p, **state},
                x,
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": jax.random.key(2)},
            )
            return cross_entropy(logits, labels), (logits, updates)

        return jax.value_and_grad(loss_fn, has_aux=True)(params)

    (loss, (train_logits, updates)), grads = compiled(train_step, params, state)
    assert train_logits.shape == (2, 7) and np.isfinite(float(loss))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))

    (logits, features), eval_updates = compiled(
        lambda v: model.apply(v, x, train=False, mutable=["batch_stats"]), variables
    )
    assert logits.shape == (2, 7) and bool(jnp.all(jnp.isfinite(logits)))
    assert {"stem", "stage1", "pre_logits"} <= set(features), sorted(features)
    assert features["pre_logits"].shape[0] == 2
    if has_batch_norm(variables):  # statistics move in training, never in evaluation
        moved = jax.tree.map(
            lambda a, b: bool(jnp.any(a != b)), updates["batch_stats"], state["batch_stats"]
        )
        assert any(jax.tree.leaves(moved))
        jax.tree.map(
            np.testing.assert_array_equal, eval_updates["batch_stats"], state["batch_stats"]
        )


def test_resnet20_parameter_count_is_the_papers_0_27m():
    assert EXPECTED_PARAMS["resnet20"] == 269_722


def test_batchnorm_statistics_update_only_in_training():
    model = models.create_model("resnet20", width=4)
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 16, 16, 3)) * 3 + 1
    # Compiled: op-by-op dispatch of a 20-layer init and apply costs most of a minute.
    variables = compiled(lambda x: model.init(jax.random.PRNGKey(1), x), x)
    _, updates = compiled(
        lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]), variables, x
    )
    before = np.asarray(variables["batch_stats"]["stem_bn"]["mean"])
    after = np.asarray(updates["batch_stats"]["stem_bn"]["mean"])
    assert not np.allclose(before, after)
    (eval_logits, _) = compiled(lambda v, x: model.apply(v, x, train=False), variables, x)
    (eval_again, _) = compiled(lambda v, x: model.apply(v, x, train=False), variables, x[:1])
    np.testing.assert_allclose(eval_logits[:1], eval_again, rtol=1e-5, atol=1e-5)


def test_option_b_shortcut_adds_projections():
    a = models.create_model("resnet20")
    b = models.create_model("resnet20", shortcut="B")
    x = jnp.zeros((1, 32, 32, 3))
    count = [
        sum(
            p.size
            for p in jax.tree.leaves(jax.eval_shape(m.init, jax.random.PRNGKey(0), x)["params"])
        )
        for m in (a, b)
    ]
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
        jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 12, 12, 1)))


def test_bad_resnet_depth_is_a_config_error():
    model = models.create_model("resnet20", depth=21)
    with pytest.raises(ConfigError, match="6n\\+2"):
        model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
