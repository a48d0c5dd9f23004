"""The suite-time page re-renders from its records, and README quotes the recorded minutes."""

import importlib.util
import json

from tests.conftest import ROOT

RECORDS = ROOT / "benchmarks" / "results" / "suite_time.jsonl"


def load_suite_time():
    spec = importlib.util.spec_from_file_location("suite_time", ROOT / "benchmarks/suite_time.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_page_renders_from_the_records_and_readme_quotes_them():
    suite_time = load_suite_time()
    records = suite_time.read_records(RECORDS)
    assert [r["suite"] for r in records] == ["default", "slow"]
    page = (ROOT / "benchmarks" / "results" / "suite_time.md").read_text()
    assert page == suite_time.render(records)
    readme = " ".join((ROOT / "README.md").read_text().split())  # line breaks as spaces
    default, slow = (r["wall_seconds"] / 60 for r in records)
    assert f"default suite {default:.1f} min" in readme
    assert f"and `python -m pytest -m slow` {slow:.1f} min" in readme


def test_outcome_counts_and_slowest_tests(tmp_path):
    suite_time = load_suite_time()
    line = "796 passed, 46 skipped, 184 deselected in 350.99s (0:05:50)"
    assert suite_time.outcome_counts(line) == {"passed": 796, "skipped": 46, "deselected": 184}
    junit = tmp_path / "junit.xml"
    junit.write_text(
        '<testsuites><testsuite><testcase classname="tests.a" name="t1" time="1.25"/>'
        '<testcase classname="tests.b" name="t2" time="3.5"/></testsuite></testsuites>'
    )
    assert suite_time.slowest_tests(str(junit), 1) == [[3.5, "tests.b::t2"]]
    record = {
        "suite": "default",
        "command": "python -m pytest ",
        "wall_seconds": 90.0,
        "counts": {"passed": 3},
        "cpu": "X",
        "cores": 2,
        "commit": "abc",
        "date": "2026-12-02",
        "slowest": [[3.5, "tests.b::t2"]],
    }
    page = suite_time.render([json.loads(json.dumps(record))])
    assert "| default | `python -m pytest` | 1.5 | 3 | 0 | X | 2 | abc | 2026-12-02 |" in page
