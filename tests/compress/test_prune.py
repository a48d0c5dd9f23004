"""Pruning: exact mask counts against numpy, the schedules' formulas, zeros kept through training,
masks saved and restored with the train state, and the loop's `prune` / `init_from` sections."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cnnjax.compress import prune, quantize
from cnnjax.errors import CheckpointError, ConfigError
from cnnjax.train import train
from cnnjax.train.optim import make_grouped_optimizer, parameter_groups
from cnnjax.train.state import init_variables
from tests.conftest import make_mlp_config as mlp_config
from tests.conftest import make_tiny_config
from tests.train.compile_cache import persistent_compile_cache


def toy_params(seed=0):
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    return {
        "conv": {"kernel": jax.random.normal(keys[0], (3, 3, 4, 8)), "bias": jnp.ones(8)},
        "fc": {"kernel": 0.1 * jax.random.normal(keys[1], (72, 30)), "bias": jnp.ones(30)},
        "output": {"kernel": jax.random.normal(keys[2], (30, 5)), "bias": jnp.zeros(5)},
    }


def test_layer_sparsities_globs_exclusions_and_errors():
    params = toy_params()
    assert prune.layer_sparsities(params, 0.5) == {
        "conv/kernel": 0.5,
        "fc/kernel": 0.5,
        "output/kernel": 0.5,
    }
    got = prune.layer_sparsities(params, {"fc/*": 0.9, "*": 0.3}, exclude=("output/*",))
    assert got == {"conv/kernel": 0.3, "fc/kernel": 0.9, "output/kernel": 0.0}
    with pytest.raises(ConfigError, match=r"'fcc/\*'.*conv/kernel"):
        prune.layer_sparsities(params, {"fcc/*": 0.5})
    with pytest.raises(ConfigError, match=r"in \[0, 1\), got 1.0"):
        prune.layer_sparsities(params, 1.0)


def numpy_keep_largest(values, fraction):
    flat = np.abs(np.asarray(values)).reshape(-1)
    pruned = np.argsort(flat, kind="stable")[: int(round(fraction * flat.size))]
    keep = np.ones(flat.size, bool)
    keep[pruned] = False
    return keep.reshape(np.shape(values))


def test_layer_wise_magnitude_masks_equal_a_numpy_sort():
    params = toy_params()
    sparsities = {"conv/kernel": 0.25, "fc/kernel": 0.9, "output/kernel": 0.0}
    masks = prune.magnitude_masks(params, sparsities)
    for layer, fraction in sparsities.items():
        name = layer.split("/")[0]
        np.testing.assert_array_equal(
            masks[name]["kernel"], numpy_keep_largest(params[name]["kernel"], fraction)
        )
        assert masks[name]["bias"].all()
    report = prune.sparsity_report(params, masks)
    assert report["fc/kernel"] == {"weights": 2160, "kept": 216}


def test_global_masks_share_one_threshold_and_prune_the_summed_count():
    params = toy_params()
    sparsities = {"conv/kernel": 0.5, "fc/kernel": 0.5, "output/kernel": 0.5}
    masks = prune.magnitude_masks(params, sparsities, scope="global")
    kept = np.concatenate([np.abs(params[n]["kernel"])[masks[n]["kernel"]] for n in params])
    gone = np.concatenate([np.abs(params[n]["kernel"])[~masks[n]["kernel"]] for n in params])
    assert gone.size == round(0.5 * 288) + round(0.5 * 2160) + round(0.5 * 150)
    assert kept.min() >= gone.max()
    # The fc layer's weights are 10x smaller: global pruning takes far more of them.
    report = prune.sparsity_report(params, masks)
    assert report["fc/kernel"]["kept"] < 0.5 * 2160 < report["conv/kernel"]["kept"] * 2160 / 288


def test_filter_masks_drop_whole_filters_by_l1_norm_with_their_bias():
    params = toy_params()
    masks = prune.filter_masks(params, {"conv/kernel": 0.25, "fc/kernel": 0.5})
    norms = np.abs(np.asarray(params["conv"]["kernel"])).sum(axis=(0, 1, 2))
    expected = np.ones(8, bool)
    expected[np.argsort(norms, kind="stable")[:2]] = False
    np.testing.assert_array_equal(masks["conv"]["kernel"], np.broadcast_to(expected, (3, 3, 4, 8)))
    np.testing.assert_array_equal(masks["conv"]["bias"], expected)
    assert int(masks["fc"]["kernel"].all(axis=0).sum()) == 15 and masks["output"]["kernel"].all()


def test_masks_never_revive_a_pruned_weight():
    params = toy_params()
    first = prune.magnitude_masks(params, {"fc/kernel": 0.5})
    # Pruned weights regrow in value: the next, sparser mask must still exclude them.
    regrown = jax.tree.map(lambda p, m: jnp.where(m, p, 10.0), params, first)
    second = prune.magnitude_masks(regrown, {"fc/kernel": 0.7}, previous=first)
    assert not np.any(np.asarray(second["fc"]["kernel"]) & ~np.asarray(first["fc"]["kernel"]))
    assert int(np.sum(second["fc"]["kernel"])) == 2160 - round(0.7 * 2160)


def test_schedule_fractions_follow_the_papers_formulas():
    gradual = prune.PruningSchedule("gradual", begin_step=100, end_step=1100, frequency=100)
    for step in (100, 300, 600, 1100, 2000):
        p = min((step - 100) / 1000, 1.0)
        expected = 0.9 + (0.0 - 0.9) * (1 - p) ** 3  # Zhu & Gupta 2017, Eq. 1
        np.testing.assert_allclose(gradual.fraction(0.9, step), expected, rtol=1e-6)
    assert float(gradual.fraction(0.9, 50)) == 0.0
    events = [s for s in range(2000) if gradual.is_pruning_step(s)]
    assert events == list(range(100, 1101, 100))

    iterative = prune.PruningSchedule("iterative", begin_step=0, frequency=1000, rounds=5)
    # Each round removes the same fraction of what is left: 1 - 0.8**r for 20% per round.
    final = 1 - 0.8**5
    for r in range(1, 6):
        np.testing.assert_allclose(iterative.fraction(final, (r - 1) * 1000 + 5), 1 - 0.8**r)
    assert [s for s in range(6000) if iterative.is_pruning_step(s)] == [0, 1000, 2000, 3000, 4000]

    one_shot = prune.PruningSchedule("one_shot", begin_step=7)
    assert float(one_shot.fraction(0.6, 6)) == 0 and float(
        one_shot.fraction(0.6, 7)
    ) == pytest.approx(0.6)
    with pytest.raises(ConfigError, match="end_step > begin_step"):
        prune.PruningSchedule("gradual", begin_step=5, end_step=5)
    with pytest.raises(ConfigError, match="'sometimes'.*one_shot"):
        prune.PruningSchedule("sometimes")


def quadratic_grads(params, target):
    return jax.grad(
        lambda p: sum(jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(p), target))
    )(params)


@pytest.mark.parametrize("method", ["magnitude", "l1_filters"])
def test_pruned_weights_stay_exactly_zero_while_kept_ones_train_as_usual(method):
    params = toy_params()
    target = [3.0 + x for x in jax.tree.leaves(toy_params(1))]  # pulls every weight away from 0
    inner = optax.chain(optax.add_decayed_weights(1e-2), optax.adam(3e-2))
    schedule = prune.PruningSchedule("gradual", begin_step=2, end_step=12, frequency=3)
    tx = prune.keep_pruned(inner, {"conv/kernel": 0.5, "fc/kernel": 0.8}, method, "layer", schedule)

    @jax.jit
    def step(params, state):
        updates, state = tx.update(quadratic_grads(params, target), state, params)
        return optax.apply_updates(params, updates), state

    state = tx.init(params)
    previous = prune.masks_of(state)
    for _ in range(20):
        params, state = step(params, state)
        masks = prune.masks_of(state)
        for p, m, old in zip(
            jax.tree.leaves(params), jax.tree.leaves(masks), jax.tree.leaves(previous)
        ):
            assert np.all(np.asarray(p)[~np.asarray(m)] == 0.0)
            assert not np.any(np.asarray(m) & ~np.asarray(old))
        previous = masks
    report = prune.sparsity_report(params, masks)
    assert report["conv/kernel"]["kept"] == 144 and report["fc/kernel"]["kept"] == 432
    assert prune.sparsity_report(params) == report  # kept weights moved off zero
    # After the last pruning event, a kept weight's update is exactly the inner optimizer's.
    grads = prune.apply_masks(quadratic_grads(params, target), masks)
    expected, _ = jax.jit(inner.update)(grads, state.inner_state, params)
    got, _ = jax.jit(tx.update)(quadratic_grads(params, target), state, params)
    for e, g, m in zip(jax.tree.leaves(expected), jax.tree.leaves(got), jax.tree.leaves(masks)):
        # Two compiled programs may fuse differently: equal up to rounding.
        np.testing.assert_allclose(
            np.asarray(g)[np.asarray(m)], np.asarray(e)[np.asarray(m)], rtol=1e-6
        )


def test_fixed_method_keeps_the_zeros_of_the_starting_weights():
    params = prune.apply_masks(
        toy_params(), prune.magnitude_masks(toy_params(), {"fc/kernel": 0.6})
    )
    tx = prune.keep_pruned(optax.sgd(0.1, momentum=0.9), method="fixed")
    state = tx.init(params)
    target = [3.0 + x for x in jax.tree.leaves(params)]
    for _ in range(3):
        updates, state = tx.update(quadratic_grads(params, target), state, params)
        params = optax.apply_updates(params, updates)
    assert prune.sparsity_report(params)["fc/kernel"]["kept"] == 2160 - round(0.6 * 2160)


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory):
    """A tiny LeNet-300-100 run (an MLP: it compiles in a fraction of a conv net's time) pruned
    to 75% in two iterative rounds (updates 0 and 4) of 8 steps."""
    workdir = str(tmp_path_factory.mktemp("pruned"))
    config = mlp_config(num_steps=8, checkpoint_every=8)
    config.prune.method, config.prune.sparsity = "magnitude", 0.75
    config.prune.schedule, config.prune.frequency, config.prune.rounds = "iterative", 4, 2
    with persistent_compile_cache(tmp_path_factory.mktemp("xla_cache")):
        return workdir, config, train(config, workdir)


def test_the_loop_prunes_exactly_and_restores_the_masks(pruned_run):
    workdir, config, run = pruned_run
    masks = prune.masks_of(run.state.opt_state)
    report = prune.sparsity_report(run.state.params, masks)
    for name, counts in report.items():
        assert counts["kept"] == counts["weights"] - round(0.75 * counts["weights"]), name
    assert prune.sparsity_report(run.state.params) == report  # zero exactly where masked
    again = train(config, workdir)  # a finished run: restores the checkpoint and evaluates
    restored = prune.masks_of(again.state.opt_state)
    for a, b in zip(jax.tree.leaves(masks), jax.tree.leaves(restored)):
        np.testing.assert_array_equal(a, b)
        assert np.asarray(b).dtype == bool
    for a, b in zip(jax.tree.leaves(run.state.params), jax.tree.leaves(again.state.params)):
        np.testing.assert_array_equal(a, b)


def test_init_from_with_reinit_frozen_groups_and_fixed_zeros(pruned_run, tmp_path):
    source_dir, _, source = pruned_run
    config = mlp_config(num_steps=3, checkpoint_every=3)
    config.init_from.workdir = source_dir
    config.init_from.reinit = ("output",)
    config.param_groups.frozen = ("fc1", "output")
    config.prune.method = "fixed"  # retraining: the source's zeros stay zero
    run = train(config, str(tmp_path / "target"))
    old, new = source.state.params, run.state.params
    np.testing.assert_array_equal(new["fc1"]["kernel"], old["fc1"]["kernel"])  # frozen
    assert not np.allclose(new["fc2"]["kernel"], old["fc2"]["kernel"])  # trained from the source
    assert prune.sparsity_report(new)["fc2/kernel"] == prune.sparsity_report(old)["fc2/kernel"]
    # The frozen, reinitialized head is exactly the fresh initialization, not the source's.
    fresh = init_variables(run.model, (28, 28, 1), config.seed)["params"]
    np.testing.assert_array_equal(new["output"]["kernel"], fresh["output"]["kernel"])
    assert not np.allclose(fresh["output"]["kernel"], old["output"]["kernel"])

    bad = make_tiny_config(num_steps=3)  # LeNet-5
    bad.init_from.workdir = source_dir
    with pytest.raises(CheckpointError, match=r"does not fit this model.*c1/kernel missing"):
        train(bad, str(tmp_path / "other_model"))
    assert not (tmp_path / "other_model").exists()


def test_lr_multipliers_scale_the_update_of_their_group():
    params = {"a": {"kernel": jnp.ones((2, 2))}, "b": {"kernel": jnp.ones((2, 2))}}
    labels = parameter_groups(params, frozen=(), lr_multipliers={"b": 0.25})
    assert labels == {"a": {"kernel": "default"}, "b": {"kernel": "lr*0.25"}}
    tx, _ = make_grouped_optimizer(
        {"name": "sgd", "lr": 0.1, "momentum": 0.0}, {"name": "constant"}, 10, labels
    )
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["a"]["kernel"], -0.1)
    np.testing.assert_allclose(updates["b"]["kernel"], -0.025)
    with pytest.raises(ConfigError, match=r"'zzz'.*a/kernel"):
        parameter_groups(params, frozen=("zzz",))


def test_the_loop_shares_a_pruned_runs_weights_and_restores_the_assignments(pruned_run, tmp_path):
    source_dir, _, source = pruned_run
    config = mlp_config(num_steps=3, checkpoint_every=3)
    config.init_from.workdir = source_dir
    config.prune.method = "fixed"
    config.share.bits, config.share.layer_bits = 3, {"fc2": 2}
    config.share.exclude = ("output/*",)
    workdir = str(tmp_path / "shared")
    run = train(config, workdir)
    assignments = quantize.assignments_of(run.state.opt_state)
    before, after = (
        prune.sparsity_report(source.state.params),
        prune.sparsity_report(run.state.params),
    )
    assert before == after  # the pruned zeros stay, nothing else becomes zero
    for name, leaf in run.state.params.items():
        kernel = np.asarray(leaf["kernel"])
        distinct = len(np.unique(kernel[kernel != 0]))
        if name == "output":
            assert distinct == np.count_nonzero(kernel) and assignments[name]["kernel"].ndim == 0
        else:
            assert distinct <= (4 if name == "fc2" else 8), name
    again = quantize.assignments_of(train(config, workdir).state.opt_state)
    for a, b in zip(jax.tree.leaves(assignments), jax.tree.leaves(again)):
        np.testing.assert_array_equal(a, b)
