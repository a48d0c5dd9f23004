"""Draws loss and accuracy curves of a run: `python -m cnnjax.plot WORKDIR [--out FILE]`.

Reads `WORKDIR/metrics.jsonl` and writes `WORKDIR/curves.png` (train and eval loss on the left,
accuracy on the right, against the training step).
"""

from __future__ import annotations

import os

from absl import flags

from cnnjax import cli
from cnnjax.errors import DataError


def define_flags() -> None:
    """The command's flags (defined when it runs, so that importing this module defines none)."""
    flags.DEFINE_string("out", None, "PNG path (default: WORKDIR/curves.png).")


def plot_run(workdir: str, out: str | None = None) -> str:
    """Saves the curves of `workdir` as a PNG and returns its path."""
    import matplotlib

    # Heavy imports here, after the command line's errors are reported.
    from cnnjax.train.metrics import read_metrics

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


def main(workdir: str) -> None:
    if not os.path.exists(os.path.join(workdir, "metrics.jsonl")):
        raise DataError(f"no metrics.jsonl in {workdir}; is it a training workdir?")
    out = flags.FLAGS.out
    folder = os.path.dirname(os.path.abspath(out)) if out else workdir
    if not os.path.isdir(folder):
        raise DataError(f"cannot write --out={out}: {folder} is not a folder")
    if not os.access(folder, os.W_OK):
        raise DataError(f"cannot write --out={out or 'WORKDIR/curves.png'}: {folder} is read-only")
    print(plot_run(workdir, out))


if __name__ == "__main__":
    define_flags()
    cli.run(main, arguments=["WORKDIR"])
