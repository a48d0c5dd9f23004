"""Metrics as JSON lines in `workdir/metrics.jsonl`, one record per log or eval event."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping

from cnnjax.errors import CnnjaxError
from cnnjax.train.files import write_text_atomic


class MetricWriter:
    """Appends `{"step": ..., "split": ..., **values}` records.

    On resume from step k, records with step > k came from work that was lost with the
    interrupted process, and so does a torn last line (a kill during a write); they are dropped
    so the file describes one consistent run. The file is rewritten atomically: a kill during
    the rewrite keeps the old history.
    """

    def __init__(self, workdir: str, resume_step: int = 0):
        self.path = os.path.join(workdir, "metrics.jsonl")
        if os.path.exists(self.path):
            kept = [r for r in read_metrics(self.path) if r["step"] <= resume_step]
            write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, step: int, split: str, values: Mapping[str, float]) -> None:
        record = {"step": int(step), "split": split}
        record.update({k: _plain(v) for k, v in values.items()})
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _plain(value):
    value = float(value) if not isinstance(value, str | int) else value
    return None if isinstance(value, float) and not math.isfinite(value) else value


def read_metrics(path: str) -> list[dict]:
    """Records of a `metrics.jsonl` file (or of `path/metrics.jsonl` for a workdir).

    A last line that does not parse is what a kill during `write` leaves: it is skipped. Any
    other line that does not parse is damage, reported with its line number.

    Raises:
      CnnjaxError: a line other than the last is not JSON.
    """
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    with open(path) as f:
        lines = [(number, line) for number, line in enumerate(f, 1) if line.strip()]
    records = []
    for index, (number, line) in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            if index == len(lines) - 1:
                break  # torn by a kill mid-write
            raise CnnjaxError(f"{path}: line {number} is not a JSON record ({error})") from None
    return records
