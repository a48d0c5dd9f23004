"""Plotting helpers shared by the experiment drivers' figures (each study draws its own).

A study's figure functions take the `summary` rows and `runs` records of its `results.json` (see
`experiments.ablation`) and return a matplotlib figure; they live with the study's driver, which
names them in its `FIGURES` table for `save_figures`:

    import json
    from experiments import bn_dropout
    results = json.load(open("experiments/results/bn_dropout.json"))
    bn_dropout.variance_shift_figure(results["summary"], results["runs"])
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping


def pyplot():
    """`matplotlib.pyplot`, switched to the file-only Agg backend unless a notebook's is active.

    Imported here rather than at module top so that the backend is chosen before pyplot loads.
    """
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def runs_of(records, arm: str) -> list[dict]:
    """The run records of one arm (every seed), in record order."""
    return [r for r in records if r["arm"] == arm]


def save_figures(figures: Mapping[str, Callable], rows, records, folder: str) -> list[str]:
    """Draws every `name -> draw(rows, records)` of `figures` into `folder/<name>.png`."""
    plt = pyplot()
    paths = []
    for name, draw in figures.items():
        fig = draw(rows, records)
        path = os.path.join(folder, f"{name}.png")
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths
