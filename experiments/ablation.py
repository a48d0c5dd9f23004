"""Ablation runner: every arm x seed of an experiment, resumable, summarized as mean ± std.

An experiment names its arms (each a set of `--config.key=value`-style overrides of one training
config) and a `measure(run, arm)` function computing extra numbers from the trained model. Each
run lives in `workdir/<arm>/seed<k>/`: a run with a `result.json` is finished and skipped; an
interrupted run resumes from its latest checkpoint (`cnnjax.train.train`). Results are aggregated
per arm as mean and sample standard deviation over seeds.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from cnnjax.errors import ConfigError
from cnnjax.train.checkpoint import config_differences
from cnnjax.train.config import schema_defaults, validate_config
from cnnjax.train.files import write_json_atomic
from cnnjax.train.loop import TrainedRun, check_workdir, print_progress, train


@dataclasses.dataclass(frozen=True)
class Arm:
    """One experimental condition.

    Attributes:
      name: folder-safe identifier, e.g. "before_bn_0.5".
      overrides: dotted config keys and values, e.g. `{"model_kwargs.dropout_rate": 0.5}`.
      label: human-readable description for tables.
    """

    name: str
    overrides: Mapping[str, Any]
    label: str = ""


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]):
    """A copy of `config` with dotted-key `overrides` set (new keys allowed in `model_kwargs`)."""
    config = ml_collections.ConfigDict(config.to_dict())
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for parent in parents:
            if parent not in node:
                raise ConfigError(f"override {key!r}: the config has no {parent!r}")
            node = node[parent]
        if leaf not in node and parents != ["model_kwargs"]:
            raise ConfigError(f"override {key!r}: the config has no key {leaf!r}")
        if isinstance(value, tuple):
            value = list(value)
        if leaf in node:
            node[leaf] = value
        else:
            with node.unlocked():
                node[leaf] = value
    return config


def run_ablation(
    base: ml_collections.ConfigDict,
    arms: Sequence[Arm],
    seeds: Sequence[int],
    workdir: str,
    measure: Callable[[TrainedRun, Arm], dict] | None = None,
    remeasure: bool = False,
) -> list[dict]:
    """Trains and measures every arm x seed not finished yet; returns all records.

    Args:
      base: the training config every arm starts from.
      arms: the conditions.
      seeds: `config.seed` values (model init, data order, augmentation and dropout).
      workdir: experiment folder.
      measure: extra measurements of a trained run, merged into its record.
      remeasure: also measure the finished runs again (their checkpoints restored, nothing
        trained; the training fields of their records kept): for a changed measurement.

    Returns:
      One dict per run: arm, seed, test loss/accuracy, wall seconds and the measurements.
    """
    names = [arm.name for arm in arms]
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"arm names must be unique and at least one, got {names}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be unique and at least one, got {list(seeds)}")
    # Every run's config is checked before the first one starts: a bad arm or seed found after
    # hours of training (or after making its folder) would waste them.
    check_workdir(workdir)
    configs = {}
    for arm in arms:
        for seed in seeds:
            configs[arm.name, seed] = apply_overrides(base, {**arm.overrides, "seed": seed})
            validate_config(configs[arm.name, seed])
            _check_same_run(os.path.join(workdir, arm.name, f"seed{seed}"), configs[arm.name, seed])
    records = []
    for arm in arms:
        for seed in seeds:
            run_dir = os.path.join(workdir, arm.name, f"seed{seed}")
            result_path = os.path.join(run_dir, "result.json")
            if os.path.exists(result_path):
                with open(result_path) as f:
                    record = json.load(f)
                if remeasure and measure is not None:
                    print_progress(f"== {arm.name} seed {seed}: measuring again ({run_dir})")
                    record.update(measure(train(configs[arm.name, seed], run_dir), arm))
                    write_json_atomic(result_path, record)
                records.append(record)
                continue
            print_progress(f"== {arm.name} seed {seed} ({run_dir})")
            config = configs[arm.name, seed]
            start = time.perf_counter()
            run = train(config, run_dir)
            record = {
                "arm": arm.name,
                "label": arm.label,
                "seed": seed,
                "test_accuracy": run.result["accuracy"],
                "test_loss": run.result["loss"],
                "steps": run.result["step"],
            }
            if measure is not None:
                record.update(measure(run, arm))
            record["wall_seconds"] = time.perf_counter() - start
            write_json_atomic(result_path, record)
            records.append(record)
    return records


def _check_same_run(run_dir: str, config: ml_collections.ConfigDict) -> None:
    """Refuses a run folder made by a different config: its finished result would otherwise be
    reused (and reported) under the new config's name."""
    saved_path = os.path.join(run_dir, "config.json")
    if not os.path.exists(saved_path):
        return
    with open(saved_path) as f:
        saved = json.load(f)
    differences = config_differences(saved, json.loads(config.to_json()), schema_defaults())
    if differences:
        raise ConfigError(
            f"{run_dir} was made by a different config ({'; '.join(differences)}); use a new "
            "--workdir, or restore those values"
        )


def run_study(
    config: ml_collections.ConfigDict,
    parse_arm: Callable[[str], Arm],
    workdir: str,
    measure: Callable[[TrainedRun, Arm, ml_collections.ConfigDict], dict],
) -> list[dict]:
    """`run_ablation` driven by a study config: the arms named in `config.arms` (comma-separated),
    every one of `config.seeds`, `config.train` as the base, `measure(run, arm, config)`."""
    arms = [parse_arm(name.strip()) for name in config.arms.split(",") if name.strip()]
    seeds = list(config.seeds)
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"seeds must be integers, got {seeds}")
    return run_ablation(
        config.train, arms, seeds, workdir, lambda run, arm: measure(run, arm, config)
    )


def check_study_fields(config: ml_collections.ConfigDict, rules: Mapping[str, tuple]) -> None:
    """Checks a study's own fields (not the training config's) before anything runs.

    Args:
      config: the study config.
      rules: `{field: (test, rule in words)}`, e.g. `{"toy_steps": (lambda v: v >= 1, ">= 1")}`.

    Raises:
      ConfigError: naming the first field whose value fails its test, and the rule.
    """
    for key, (test, rule) in rules.items():
        value = config[key]
        try:
            ok = test(value)
        except TypeError:  # a string where a number belongs
            ok = False
        if not ok:
            raise ConfigError(f"{key} must be {rule}, got {value!r}")


def study_models(config: ml_collections.ConfigDict) -> list[str]:
    """The models named in `config.models` (comma-separated), each one that `config.stages`
    (keys `<model>_<stage>`) has a training config for; refused before anything runs."""
    names = [m.strip() for m in config.models.split(",") if m.strip()]
    known = sorted({key.rsplit("_", 1)[0] for key in config.stages})
    for name in names:
        if name not in known:
            raise ConfigError(
                f"unknown model {name!r} in models (valid choices: {', '.join(known)})"
            )
    if not names or len(set(names)) != len(names):
        raise ConfigError(f"models must be unique and at least one, got {config.models!r}")
    return names


def positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def summarize(records: Sequence[dict], metrics: Sequence[str]) -> list[dict]:
    """Per arm (in first-seen order): n, and mean/std over seeds of each numeric metric."""
    arms: dict[str, list[dict]] = {}
    for record in records:
        arms.setdefault(record["arm"], []).append(record)
    rows = []
    for arm, runs in arms.items():
        row = {"arm": arm, "label": runs[0].get("label", ""), "n": len(runs)}
        for metric in metrics:
            values = [r[metric] for r in runs if r.get(metric) is not None]
            row[metric] = float(np.mean(values)) if values else math.nan
            row[metric + "_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
        rows.append(row)
    return rows


def _table(
    first: str,
    rows: Sequence[dict],
    columns: Mapping[str, str],
    percent,
    label: Callable[[dict], str],
    cell: Callable[[dict, str, float, int], str],
) -> str:
    """Markdown table: per row `label(row)`, its seed count, then `cell(row, metric, scale,
    decimals)` per column (percentages x100 with 2 decimals, else 3)."""
    head = f"| {first} | seeds | " + " | ".join(columns.values()) + " |"
    sep = "| --- | ---: | " + " | ".join("---:" for _ in columns) + " |"
    lines = []
    for row in rows:
        cells = [
            cell(row, metric, *((100.0, 2) if metric in percent else (1.0, 3)))
            for metric in columns
        ]
        lines.append(f"| {label(row)} | {row['n']} | " + " | ".join(cells) + " |")
    return "\n".join([head, sep, *lines])


def _mean_std_cell(row: dict, metric: str, scale: float, digits: int) -> str:
    mean, std = row[metric] * scale, row[metric + "_std"] * scale
    return f"{mean:.{digits}f}" + ("" if math.isnan(std) else f" ± {std:.{digits}f}")


def markdown_table(rows: Sequence[dict], columns: Mapping[str, str], percent=()) -> str:
    """Markdown table of `summarize` rows: `columns` maps metric -> header; `percent` x100."""

    def label(row):
        return f"{row['arm']}" + (f" ({row['label']})" if row.get("label") else "")

    return _table("arm", rows, columns, percent, label, _mean_std_cell)


def paired_differences(
    records: Sequence[dict],
    baseline_of: Callable[[str], str | None],
    metrics: Sequence[str],
    confidence: float = 0.95,
) -> list[dict]:
    """Per arm, the seed-paired difference of each metric from its baseline arm.

    Runs of an arm and of its baseline with the same seed share the data order, so differencing
    per seed removes that source of variance. Gives the mean difference, its sample std, the
    half-width of the two-sided Student-t confidence interval of the mean, and n (seeds present
    in both arms). Skips arms whose `baseline_of(arm)` is None or themselves, and arms sharing
    no seed with their baseline.
    """
    from scipy import stats

    by_key = {(r["arm"], r["seed"]): r for r in records}
    rows = []
    for arm in dict.fromkeys(r["arm"] for r in records):
        base = baseline_of(arm)
        if base is None or base == arm:
            continue
        seeds = sorted(s for a, s in by_key if a == arm and (base, s) in by_key)
        if not seeds:
            continue
        n = len(seeds)
        row = {"arm": arm, "baseline": base, "n": n}
        t = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) if n > 1 else math.nan
        for metric in metrics:
            diffs = np.array([by_key[arm, s][metric] - by_key[base, s][metric] for s in seeds])
            std = float(diffs.std(ddof=1)) if n > 1 else math.nan
            row[metric], row[metric + "_std"] = float(diffs.mean()), std
            row[metric + "_ci"] = t * std / math.sqrt(n)
        rows.append(row)
    return rows


def _difference_cell(row: dict, metric: str, scale: float, digits: int) -> str:
    mean, ci = row[metric] * scale, row[metric + "_ci"] * scale
    interval = "" if math.isnan(ci) else f" [{mean - ci:+.{digits}f}, {mean + ci:+.{digits}f}]"
    return f"{mean:+.{digits}f}" + interval


def differences_table(rows: Sequence[dict], columns: Mapping[str, str], percent=()) -> str:
    """Markdown table of `paired_differences` rows: mean difference [confidence interval]."""

    def label(row):
        return f"{row['arm']} - {row['baseline']}"

    return _table("arm - baseline", rows, columns, percent, label, _difference_cell)


def write_results(workdir: str, header: str, tables: Sequence[str], payload: dict) -> str:
    """Writes `workdir/results.md` (header + tables) and `workdir/results.json`; returns the md."""
    text = header.rstrip() + "\n\n" + "\n\n".join(t.rstrip() for t in tables) + "\n"
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(text)
    write_json_atomic(os.path.join(workdir, "results.json"), payload)
    return text
