"""The speed benchmark runs and reports what it promises (no timing is asserted)."""

import pytest

from cnnjax import bench, models

KEYS = {
    "model",
    "batch_size",
    "backend",
    "jax_train_ips",
    "torch_train_ips",
    "train_ratio",
    "jax_eval_ips",
    "torch_eval_ips",
    "eval_ratio",
    "compile_s",
}


def test_jax_side_reports_the_promised_fields():
    result = bench.run("lenet5", batch=4, windows=1, steps=1)
    assert KEYS <= set(result)
    assert result["jax_train_ips"] > 0 and result["jax_eval_ips"] > 0 and result["compile_s"] > 0
    assert (
        result["torch_train_ips"] is None and result["params"] == models.model_info("lenet5").params
    )
    assert "lenet5 batch 4" in bench.render(result)


@pytest.mark.parametrize("name", ["resnet20", "vgg16_cifar", "densenet_bc_100"])
def test_torch_twins_have_the_same_parameter_count(name):
    pytest.importorskip("torch")
    from cnnjax.testing.torch_reference import create_torch_model

    twin = create_torch_model(name, 10)
    assert sum(p.numel() for p in twin.parameters()) == models.model_info(name).params


def test_torch_comparison_fills_the_ratios():
    pytest.importorskip("torch")
    result = bench.run("resnet20", batch=2, windows=1, steps=1, compare="torch")
    assert result["params_match"] and result["train_ratio"] > 0 and result["eval_ratio"] > 0


def test_timed_windows_alternate_between_the_measurements():
    calls = []
    runners = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    rates = bench.median_ips(runners, batch=8, windows=3, steps=2)
    assert calls == ["a", "a", "b", "b", "c", "c"] * 3
    assert set(rates) == {"a", "b", "c"} and all(rate > 0 for rate in rates.values())
