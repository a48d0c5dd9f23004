"""The distillation driver at its smoke size, and its checked-in results against their records."""

import json
import pathlib

import pytest

from cnnjax.errors import ConfigError
from configs.experiments import distillation as kd_config
from experiments import distillation
from experiments.ablation import markdown_table, summarize


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    config = kd_config.get_config("smoke")
    workdir = tmp_path_factory.mktemp("distillation")
    text = distillation.run(config, str(workdir))
    return workdir, config, text, json.loads((workdir / "results.json").read_text())


@pytest.mark.slow  # trains the driver's smoke runs; -m slow
def test_students_learn_from_the_one_teacher(smoke):
    workdir, config, text, results = smoke
    assert [(r["arm"], r["seed"]) for r in results["runs"]] == [
        ("teacher", 0),
        ("alone", 0),
        ("T4", 0),
    ]
    alone = json.loads((workdir / "alone" / "seed0" / "config.json").read_text())
    distilled = json.loads((workdir / "T4" / "seed0" / "config.json").read_text())
    assert alone["distill"]["teacher"] == ""
    assert distilled["distill"]["teacher"] == str(workdir / "teacher" / "seed0")
    assert distilled["distill"]["temperature"] == 4.0
    teacher, *students = results["runs"]
    assert teacher["teacher_agreement"] == 1.0 and teacher["parameters"] > students[0]["parameters"]
    assert "| T4 (distilled, T = 4) | 1 |" in text and "Hinton et al. 2015" in text
    assert (workdir / "test_error.png").stat().st_size > 0


@pytest.mark.parametrize("arm", ["T0", "Tx", "hot"])
def test_bad_arms_are_refused_before_the_teacher_trains(tmp_path, arm):
    config = kd_config.get_config("smoke")
    config.arms = f"alone,{arm}"
    with pytest.raises(ConfigError, match=rf"unknown arm '{arm}' \(valid: alone, or T<temp"):
        distillation.run(config, str(tmp_path / "kd"))
    assert not (tmp_path / "kd").exists()


RESULTS = pathlib.Path(__file__).resolve().parents[2] / "experiments" / "results"


def test_checked_in_page_is_the_table_of_its_records():
    payload = json.loads((RESULTS / "distillation.json").read_text())
    records = [
        json.loads(p.read_text())
        for p in sorted((RESULTS / "distillation_cpu_runs").glob("*/seed*/result.json"))
    ]
    key = lambda r: (r["arm"], r["seed"])  # noqa: E731
    distillation.add_errors(records)
    assert sorted(records, key=key) == sorted(payload["runs"], key=key) and records
    order = [r["arm"] for r in payload["runs"]]
    records.sort(key=lambda r: (order.index(r["arm"]), r["seed"]))
    rows = summarize(records, list(distillation.COLUMNS))
    table = markdown_table(rows, distillation.COLUMNS, percent=distillation.PERCENT)
    assert table in (RESULTS / "distillation.md").read_text()
    assert {row["n"] for row in rows if row["arm"] != "teacher"} == {3}
