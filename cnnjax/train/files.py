"""Run files written so that a kill at any moment leaves either the old or the new version."""

from __future__ import annotations

import json
import os


def write_text_atomic(path: str, text: str) -> None:
    """Writes `text` to `path` through a temporary file and a rename.

    A process killed mid-write leaves `path` as it was (and a stray `path.tmp`), never half of
    the new text: `os.replace` is atomic on POSIX and Windows file systems.
    """
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: str, payload, indent: int | None = 2) -> None:
    """`json.dump` of `payload` into `path`, atomically (see `write_text_atomic`)."""
    write_text_atomic(path, json.dumps(payload, indent=indent))
