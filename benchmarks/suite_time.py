"""How long the test suite takes here: the default run (what CI runs) and the `slow` tests.

    python benchmarks/suite_time.py --suite=default     # python -m pytest
    python benchmarks/suite_time.py --suite=slow        # python -m pytest -m slow

Runs the suite in a subprocess with this interpreter (pytest's options from pyproject.toml, so
two xdist workers), then replaces that suite's record in `benchmarks/results/suite_time.jsonl`
(wall seconds, outcome counts, the CPU, the commit, the slowest tests) and re-renders
`benchmarks/results/suite_time.md` from all records. README.md quotes the minutes from there
(`tests/test_suite_time.py` checks both). Run it on an otherwise idle machine: the point is CI's
budget (12 minutes for install + default suite on 2 cores).
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

from absl import flags

from cnnjax import cli
from cnnjax.errors import ConfigError, unknown_choice

ROOT = pathlib.Path(__file__).resolve().parents[1]
RECORDS = ROOT / "benchmarks" / "results" / "suite_time.jsonl"
SUITES = {"default": [], "slow": ["-m", "slow"]}
SLOWEST = 10


def define_flags() -> None:
    """The command's flags (defined when it runs, so that importing this module defines none)."""
    flags.DEFINE_string("suite", "default", f"Which tests: one of {sorted(SUITES)}.")
    flags.DEFINE_string("out", str(RECORDS), "Records (JSONL); the page is written beside it.")


def outcome_counts(summary_line: str) -> dict[str, int]:
    """`{"passed": 796, "skipped": 46, ...}` from pytest's last line."""
    return {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", summary_line)}


def slowest_tests(junit_path: str, count: int = SLOWEST) -> list[list]:
    """`[[seconds, test id], ...]`, the slowest `count` test calls of a JUnit XML report."""
    cases = [
        (float(case.get("time", 0)), f"{case.get('classname')}::{case.get('name')}")
        for case in ET.parse(junit_path).getroot().iter("testcase")
    ]
    return [[round(t, 1), name] for t, name in sorted(cases, reverse=True)[:count]]


def measure(suite: str) -> dict:
    """Runs one suite and returns its record (raises if any test failed)."""
    with tempfile.TemporaryDirectory() as tmp:
        junit = os.path.join(tmp, "junit.xml")
        command = [sys.executable, "-m", "pytest", *SUITES[suite], f"--junitxml={junit}"]
        began = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - began
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0:
            sys.stderr.write(done.stdout[-4000:] + done.stderr[-4000:])
            raise ConfigError(f"the {suite} suite failed (exit {done.returncode}): {lines[-1:]}")
        slowest = slowest_tests(junit)
    from cnnjax.analysis.devices import cpu_model  # imports jax: after the tests ran

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {
        "suite": suite,
        "command": "python -m pytest " + " ".join(SUITES[suite]),
        "wall_seconds": round(wall, 1),
        "counts": outcome_counts(lines[-1]),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "commit": commit,
        "date": datetime.date.today().isoformat(),
        "slowest": slowest,
    }


def render(records: list[dict]) -> str:
    """The markdown page of the records (one table row per suite, then each suite's slowest)."""
    lines = [
        "# Test suite time",
        "",
        "`python benchmarks/suite_time.py --suite=default` and `--suite=slow` (pytest's options "
        "from pyproject.toml: two xdist workers, one test file per worker at a time). Wall time "
        "of the tests alone; CI adds the install (`bash .ci/run`).",
        "",
        "| suite | command | minutes | passed | skipped | CPU | cores | commit | date |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: | --- | --- |",
    ]
    for r in records:
        c = r["counts"]
        lines.append(
            f"| {r['suite']} | `{r['command'].strip()}` | {r['wall_seconds'] / 60:.1f} | "
            f"{c.get('passed', 0)} | {c.get('skipped', 0)} | "
            f"{r['cpu']} | {r['cores']} | {r['commit']} | {r['date']} |"
        )
    for r in records:
        lines += ["", f"Slowest tests of the {r['suite']} suite (seconds):", ""]
        lines += [f"- {seconds:.1f} `{name}`" for seconds, name in r["slowest"]]
    return "\n".join(lines) + "\n"


def read_records(path: pathlib.Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main() -> int:
    args = flags.FLAGS
    if args.suite not in SUITES:
        raise ConfigError(unknown_choice("--suite", args.suite, SUITES))
    out = pathlib.Path(args.out)
    record = measure(args.suite)
    records = [r for r in read_records(out) if r["suite"] != args.suite] + [record]
    records.sort(key=lambda r: list(SUITES).index(r["suite"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in records))
    out.with_suffix(".md").write_text(render(records))
    print(render([record]))
    return 0


if __name__ == "__main__":
    define_flags()
    cli.run(main)
