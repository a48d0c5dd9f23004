"""Metrics as JSON lines in `workdir/metrics.jsonl`, one record per log or eval event."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping


class MetricWriter:
    """Appends `{"step": ..., "split": ..., **values}` records.

    On resume from step k, records with step > k came from work that was lost with the
    interrupted process; they are dropped so the file describes one consistent run.
    """

    def __init__(self, workdir: str, resume_step: int = 0):
        self.path = os.path.join(workdir, "metrics.jsonl")
        if os.path.exists(self.path):
            kept = [r for r in read_metrics(self.path) if r["step"] <= resume_step]
            with open(self.path, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in kept)

    def write(self, step: int, split: str, values: Mapping[str, float]) -> None:
        record = {"step": int(step), "split": split}
        record.update({k: _plain(v) for k, v in values.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _plain(value):
    value = float(value) if not isinstance(value, str | int) else value
    return None if isinstance(value, float) and not math.isfinite(value) else value


def read_metrics(path: str) -> list[dict]:
    """Records of a `metrics.jsonl` file (or of `path/metrics.jsonl` for a workdir)."""
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
