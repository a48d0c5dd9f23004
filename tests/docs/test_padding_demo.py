"""The padding demo figure of `docs/layers.md` renders."""

import os

from docs.tools.padding_demo import render_padding_demo


def test_padding_demo_writes_a_png(tmp_path):
    path = render_padding_demo(str(tmp_path / "padding.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(path) > 5000
