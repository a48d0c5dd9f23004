"""The lottery-ticket driver at its smoke size, and its checked-in results against their records."""

import json
import pathlib

import numpy as np
import pytest

from cnnjax.errors import ConfigError
from cnnjax.train.transfer import read_checkpoint
from configs.experiments import lottery as lt_config
from experiments import lottery
from experiments.ablation import differences_table, markdown_table, paired_differences, summarize


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    config = lt_config.get_config("smoke")
    workdir = tmp_path_factory.mktemp("lottery")
    text = lottery.run(config, str(workdir))
    return workdir, config, text, json.loads((workdir / "results.json").read_text())


def _kernels(workdir, folder):
    params = read_checkpoint(str(workdir / folder))[0]["params"]
    return {k: np.asarray(params[k]["kernel"]) for k in ("fc1", "fc2", "output")}


@pytest.mark.slow  # trains the driver's smoke runs; -m slow
def test_tickets_are_the_initialization_under_the_pruned_mask(smoke):
    workdir, config, text, results = smoke
    assert [(r["kind"], r["round"]) for r in results["runs"]] == [
        ("ticket", 0),
        ("ticket", 1),
        ("ticket", 2),
        ("random", 2),
    ]
    theta0 = lottery.initialization(config.train, 0)["params"]
    ticket = _kernels(workdir, "starts/ticket_r02_seed0")
    control = _kernels(workdir, "starts/random_r02_seed0")
    previous = _kernels(workdir, "ticket_r01/seed0")  # trained round 1: the mask's source
    for name, rate in {"fc1": 0.2, "fc2": 0.2, "output": 0.1}.items():
        kept = ticket[name] != 0
        # Round 2 keeps (1 - rate)^2 of each layer: the largest trained weights of round 1.
        assert kept.sum() == round((1 - rate) ** 2 * kept.size)
        np.testing.assert_array_equal(ticket[name][kept], np.asarray(theta0[name]["kernel"])[kept])
        assert np.abs(previous[name][kept]).min() >= np.abs(previous[name][~kept]).max()
        np.testing.assert_array_equal(control[name] != 0, kept)  # same mask, other values
        assert not np.allclose(control[name][kept], ticket[name][kept])
    trained = _kernels(workdir, "ticket_r02/seed0")
    for name in trained:  # pruned weights stayed zero through training
        np.testing.assert_array_equal(trained[name] != 0, ticket[name] != 0)
    saved = json.loads((workdir / "random_r02" / "seed0" / "config.json").read_text())
    assert saved["init_from"]["workdir"] == str(workdir / "starts" / "random_r02_seed0")
    assert saved["prune"]["method"] == "fixed"
    first = results["runs"][0]
    assert first["weights_remaining"] == 1.0 and len(first["curve"]["step"]) == 2
    assert first["early_stop_step"] in first["curve"]["step"]
    assert "| random_r02 - ticket_r02 | 1 |" in text and "Frankle & Carbin 2019" in text
    for name in lottery.FIGURES:
        assert (workdir / f"{name}.png").stat().st_size > 0


@pytest.mark.slow  # trains the driver's smoke runs; -m slow
def test_a_finished_study_is_reported_again_without_training(smoke, monkeypatch):
    workdir, config, text, _ = smoke
    monkeypatch.setattr(lottery, "run_ablation", _reads_only(lottery.run_ablation))
    assert lottery.run(config, str(workdir)) == text


def _reads_only(run_ablation):
    def wrapped(base, arms, seeds, workdir, measure=None, remeasure=False):
        for arm in arms:
            for seed in seeds:
                assert (pathlib.Path(workdir) / arm.name / f"seed{seed}" / "result.json").exists()
        return run_ablation(base, arms, seeds, workdir, measure, remeasure)

    return wrapped


def test_round_sparsities_compound_per_round():
    got = lottery.round_sparsities({"a": 0.2, "b": 0.1}, 3)
    assert got == pytest.approx({"a": 1 - 0.8**3, "b": 1 - 0.9**3})


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("random_rounds", (3,), r"random_rounds must be rounds in 1..rounds=2, got \[3\]"),
        ("rounds", 0, "rounds must be an integer >= 1, got 0"),
        ("per_round", {"fc1/kernel": 1.0}, r"per_round\['fc1/kernel'\] must be in \(0, 1\)"),
        ("per_round", {"conv9/kernel": 0.2}, "conv9/kernel"),
        ("seeds", (-1,), r"seeds must be integers >= 0, got \[-1\]"),
    ],
)
def test_bad_study_fields_are_refused_before_anything_is_made(tmp_path, key, value, message):
    config = lt_config.get_config("smoke")
    config[key] = value
    with pytest.raises(ConfigError, match=message):
        lottery.run(config, str(tmp_path / "lt"))
    assert not (tmp_path / "lt").exists()


RESULTS = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "results"


@pytest.mark.skipif(not (RESULTS / "lottery.json").exists(), reason="study not run yet")
def test_checked_in_page_is_the_table_of_its_records():
    payload = json.loads((RESULTS / "lottery.json").read_text())
    records = [
        json.loads(p.read_text())
        for p in sorted((RESULTS / "lottery_cpu_runs").glob("*/seed*/result.json"))
    ]
    lottery.add_errors(records)
    records.sort(key=lambda r: (r["kind"] != "ticket", r["round"], r["seed"]))
    assert records == payload["runs"] and records
    rows = summarize(records, list(lottery.COLUMNS))
    page = (RESULTS / "lottery.md").read_text()
    assert markdown_table(rows, lottery.COLUMNS, percent=lottery.PERCENT) in page
    differences = paired_differences(records, lottery.baseline_of, list(lottery.DIFFERENCES))
    percent = ("early_stop_error", "final_error")
    assert differences_table(differences, lottery.DIFFERENCES, percent=percent) in page
    assert {row["n"] for row in rows} == {3}
