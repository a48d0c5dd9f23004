"""Draws loss and accuracy curves of a run: `python -m cnnjax.plot WORKDIR [--out FILE]`.

Reads `WORKDIR/metrics.jsonl` and writes `WORKDIR/curves.png` (train and eval loss on the left,
accuracy on the right, against the training step).
"""

from __future__ import annotations

import argparse
import os
import sys

from cnnjax.train.metrics import read_metrics


def plot_run(workdir: str, out: str | None = None) -> str:
    """Saves the curves of `workdir` as a PNG and returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(workdir)
    out = out or os.path.join(workdir, "curves.png")
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for split, style in (("train", "-"), ("eval", "o-")):
        rows = [r for r in records if r["split"] == split]
        if not rows:
            continue
        steps = [r["step"] for r in rows]
        loss_ax.plot(steps, [r["loss"] for r in rows], style, label=split, markersize=3)
        acc_ax.plot(steps, [r["accuracy"] for r in rows], style, label=split, markersize=3)
    for ax, name in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    loss_ax.set_yscale("log")
    fig.suptitle(os.path.basename(os.path.normpath(workdir)))
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", help="run folder holding metrics.jsonl")
    parser.add_argument("--out", help="PNG path (default: WORKDIR/curves.png)")
    args = parser.parse_args(argv)
    if not os.path.exists(os.path.join(args.workdir, "metrics.jsonl")):
        print(
            f"error: no metrics.jsonl in {args.workdir}; is it a training workdir?", file=sys.stderr
        )
        return 2
    print(plot_run(args.workdir, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
