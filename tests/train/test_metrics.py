"""metrics.jsonl survives kills: a torn last line is dropped on resume, a rewrite is atomic."""

import json
import os

import pytest

from cnnjax.errors import CnnjaxError
from cnnjax.train import files
from cnnjax.train.metrics import MetricWriter, read_metrics


def write_lines(path, lines):
    with open(path, "w") as f:
        f.write("".join(lines))


def test_a_torn_last_line_is_dropped_and_the_run_resumes(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records = [{"step": s, "split": "train", "loss": 1.0 / s} for s in (1, 2, 3)]
    write_lines(path, [json.dumps(r) + "\n" for r in records] + ['{"step": 4, "spl'])
    assert read_metrics(str(tmp_path)) == records
    writer = MetricWriter(str(tmp_path), resume_step=2)  # resumed from the step-2 checkpoint
    writer.write(3, "train", {"loss": 0.25})
    assert [r["step"] for r in read_metrics(str(path))] == [1, 2, 3]
    assert read_metrics(str(path))[-1]["loss"] == 0.25
    assert not os.path.exists(str(path) + ".tmp")


def test_damage_before_the_last_line_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_lines(
        path, ['{"step": 1, "split": "train"}\n', "garbage\n", '{"step": 2, "split": "train"}\n']
    )
    with pytest.raises(CnnjaxError, match=r"metrics.jsonl: line 2 is not a JSON record"):
        read_metrics(str(path))


def test_a_kill_during_a_rewrite_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    files.write_json_atomic(str(path), {"lr": 0.1})

    def killed(src, dst):
        raise KeyboardInterrupt  # the process dies between writing the new file and the rename

    monkeypatch.setattr(files.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        files.write_json_atomic(str(path), {"lr": 0.2})
    assert json.loads(path.read_text()) == {"lr": 0.1}
