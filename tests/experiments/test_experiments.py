"""The experiment drivers end to end at their smoke size (synthetic data, seconds per run).

Every arm compiles its own network (about half a minute on a 2-core CPU), so the default suite
runs one arm of one experiment (blur pool) through the driver code all experiments share;
`pytest -m slow` runs one arm and then every arm of the smoke size of each.
"""

import json
import os
import pathlib

import pytest

from cnnjax.errors import ConfigError
from cnnjax.train.config import base_config
from configs.experiments import blur_pool as blur_config
from configs.experiments import bn_dropout as bn_config
from experiments import blur_pool, bn_dropout
from experiments.ablation import (
    Arm,
    apply_overrides,
    differences_table,
    markdown_table,
    paired_differences,
    summarize,
)
from tests.conftest import file_digests
from tests.train.compile_cache import persistent_compile_cache


def test_paired_differences_pair_runs_by_seed_and_give_a_t_interval():
    records = [
        {"arm": "base", "seed": 0, "acc": 0.50},
        {"arm": "base", "seed": 1, "acc": 0.60},
        {"arm": "base", "seed": 2, "acc": 0.70},
        {"arm": "new", "seed": 0, "acc": 0.52},
        {"arm": "new", "seed": 1, "acc": 0.63},
        {"arm": "new", "seed": 2, "acc": 0.71},
        {"arm": "new", "seed": 3, "acc": 0.99},  # no baseline run with seed 3: not paired
    ]
    (row,) = paired_differences(records, lambda arm: "base", ["acc"])
    # differences 0.02, 0.03, 0.01: mean 0.02, std 0.01, t(0.975, 2) = 4.3027
    assert (row["arm"], row["baseline"], row["n"]) == ("new", "base", 3)
    assert row["acc"] == pytest.approx(0.02) and row["acc_std"] == pytest.approx(0.01)
    assert row["acc_ci"] == pytest.approx(4.3027 * 0.01 / 3**0.5, rel=1e-4)
    table = differences_table([row], {"acc": "acc (%)"}, percent=("acc",))
    assert "| new - base | 3 | +2.00 [-0.48, +4.48] |" in table


def test_apply_overrides_sets_nested_keys_and_rejects_unknown_ones():
    config = apply_overrides(base_config(), {"optimizer.lr": 0.5, "model_kwargs.width": 4})
    assert config.optimizer.lr == 0.5 and config.model_kwargs.width == 4
    assert base_config().optimizer.lr != 0.5  # the base is not modified
    with pytest.raises(ConfigError, match="no key 'lrr'"):
        apply_overrides(base_config(), {"optimizer.lrr": 1.0})


def test_summarize_gives_mean_and_sample_std_per_arm():
    records = [{"arm": "a", "acc": 0.5}, {"arm": "a", "acc": 0.7}, {"arm": "b", "acc": 0.9}]
    rows = summarize(records, ["acc"])
    assert rows[0]["acc"] == pytest.approx(0.6) and rows[0]["acc_std"] == pytest.approx(
        0.1414, 1e-3
    )
    table = markdown_table(rows, {"acc": "accuracy (%)"}, percent=("acc",))
    assert "| a | 2 | 60.00 ± 14.14 |" in table and "| b | 1 | 90.00 |" in table


def test_arm_names_parse_and_bad_ones_are_explained():
    arm = bn_dropout.parse_arm("before_bn_uniform_0.3")
    assert arm.overrides["model_kwargs.dropout_kind"] == "uniform"
    assert arm.overrides["model_kwargs.dropout_rate"] == 0.3
    assert bn_dropout.parse_arm("none") == Arm(
        "none", {"model_kwargs.dropout_rate": 0.0}, "no dropout"
    )
    with pytest.raises(ConfigError, match="before_bn"):
        bn_dropout.parse_arm("beforebn_0.5")
    config = blur_config.get_config("cpu")
    vgg = blur_pool.parse_arm("vgg-blur5-noaug", config)
    assert vgg.overrides["model_kwargs.pool"] == "max_blur:5:replicate"
    assert vgg.overrides["augment.crop_padding"] == 0
    with pytest.raises(ConfigError, match="resnet20"):
        blur_pool.parse_arm("resnet18-blur3", config)


def _run_twice(module, config, workdir):
    text = module.run(config, str(workdir))
    first = {p: os.path.getmtime(p) for p in workdir.glob("*/seed*/result.json")}
    module.run(config, str(workdir))  # finished runs are skipped, not retrained
    assert first == {p: os.path.getmtime(p) for p in workdir.glob("*/seed*/result.json")}
    return text, json.loads((workdir / "results.json").read_text())


@pytest.fixture(scope="module", autouse=True)
def compile_once(tmp_path_factory):
    """ResNet-20 arms share their init (its program is the same for every arm), and the second
    run of a driver its toy's programs."""
    with persistent_compile_cache(tmp_path_factory.mktemp("xla_cache")):
        yield


# The one arm of each experiment that the default suite runs (both ResNet-20s, so they share
# the compiled init); "smoke" is the config's own arms.
ONE_ARM = {"bn_dropout": "before_bn_0.5", "blur_pool": "resnet20-blur3"}


@pytest.fixture(scope="module", params=["one_arm", pytest.param("smoke", marks=pytest.mark.slow)])
def size(request):
    return request.param


def _smoke(name, module, config, size, tmp_path_factory):
    """An experiment at its smoke size, run twice (the second finds every run done)."""
    if size == "one_arm":
        config.arms = ONE_ARM[name]
    workdir = tmp_path_factory.mktemp(name)
    return (workdir, config, *_run_twice(module, config, workdir))


@pytest.fixture(scope="module")
def bn_smoke(size, tmp_path_factory):
    return _smoke("bn_dropout", bn_dropout, bn_config.get_config("smoke"), size, tmp_path_factory)


@pytest.fixture(scope="module")
def blur_smoke(size, tmp_path_factory):
    return _smoke("blur_pool", blur_pool, blur_config.get_config("smoke"), size, tmp_path_factory)


@pytest.mark.slow
def test_bn_dropout_smoke_runs_end_to_end_and_resumes(bn_smoke):
    workdir, _, text, results = bn_smoke
    assert "| before_bn_0.5 (bernoulli 0.5, conv-drop-bn-relu) | 1 |" in text
    run = results["runs"][0]
    assert len(run["shift_per_layer"]) == 19 and run["layers"][0] == "stem_bn"
    assert all(r["measured"] > 0 for r in results["toy"])
    for name in ("results.md", "variance_shift.png", "accuracy.png"):
        assert (workdir / name).stat().st_size > 0


def test_a_changed_config_on_a_finished_experiment_is_refused_and_changes_nothing(blur_smoke):
    workdir, config, _, _ = blur_smoke
    before = file_digests(workdir)
    changed = blur_config.get_config("smoke")
    changed.arms = config.arms
    changed.train.optimizer.lr = 0.5
    with pytest.raises(ConfigError, match=r"seed0 was made by a different config \(optimizer.lr"):
        blur_pool.run(changed, str(workdir))
    assert file_digests(workdir) == before


def test_blur_pool_smoke_runs_end_to_end(blur_smoke):
    workdir, config, text, results = blur_smoke
    assert "resnet20-blur3" in text
    assert all(arm in text for arm in config.arms.split(","))  # smoke: and vgg-blur3-noaug
    run = results["runs"][0]
    assert run["curve_circular"]["shift"] == list(range(config.curve_max_shift + 1))
    assert 0.0 <= run["consistency_crop"] <= 1.0
    for name in ("results.md", "diagonal_shift.png", "consistency.png"):
        assert (workdir / name).stat().st_size > 0


@pytest.mark.slow
def test_notebook_redraws_the_figures_from_results_files(bn_smoke, blur_smoke, tmp_path):
    for name, (workdir, *_) in {"bn_dropout": bn_smoke, "blur_pool": blur_smoke}.items():
        (tmp_path / f"{name}.json").write_text((workdir / "results.json").read_text())
    notebook = json.loads(pathlib.Path("notebooks/ablations.ipynb").read_text())
    code = ["".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code"]
    namespace = {}
    exec(code[0], namespace)  # imports and load()
    namespace["RESULTS"] = tmp_path
    for cell in code[1:]:
        exec(cell, namespace)


RESULTS = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "results"


@pytest.mark.parametrize(
    "module, runs", [(bn_dropout, 6 * 3), (blur_pool, 10 * 3)], ids=["bn_dropout", "blur_pool"]
)
def test_checked_in_results_page_is_the_table_of_its_run_records(module, runs):
    name = module.__name__.split(".")[-1]
    payload = json.loads((RESULTS / f"{name}.json").read_text())
    records = [
        json.loads(p.read_text())
        for p in sorted((RESULTS / f"{name}_cpu_runs").glob("*/seed*/result.json"))
    ]
    if hasattr(module, "add_curve_scalars"):
        module.add_curve_scalars(records)
    assert len(records) == len(payload["runs"]) == runs
    key = lambda r: (r["arm"], r["seed"])  # noqa: E731
    assert sorted(records, key=key) == sorted(payload["runs"], key=key)
    rows = summarize(records, list(module.COLUMNS))
    order = [row["arm"] for row in payload["summary"]]
    rows.sort(key=lambda row: order.index(row["arm"]))
    table = markdown_table(rows, module.COLUMNS, percent=module.PERCENT)
    assert table in (RESULTS / f"{name}.md").read_text()
    assert {row["n"] for row in rows} == {3}
    if hasattr(module, "DIFFERENCE_COLUMNS"):  # the seed-paired differences, in the run order
        differences = paired_differences(
            payload["runs"], module.baseline_of, list(module.DIFFERENCE_COLUMNS)
        )
        assert differences == payload["differences"]
        page = differences_table(differences, module.DIFFERENCE_COLUMNS, percent=module.PERCENT)
        assert page in (RESULTS / f"{name}.md").read_text()
