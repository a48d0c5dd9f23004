"""Command-line entry point.

  python -m cnnjax.main --config=configs/default.py --workdir=runs/default [--config.key=value ...]

Restarting the same command resumes from the latest checkpoint in the workdir. Errors caused by
the input (unknown key, model or dataset, missing data, bad shapes, corrupt checkpoint, diverged
loss) are printed as one line starting with "error:" and exit with status 2.
"""

from absl import flags

from cnnjax import cli


def define_flags() -> None:
    """The command's flags (defined when it runs, so that importing this module defines none)."""
    cli.config_file("Experiment config file (configs/*.py), FILE[:variant].")
    flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics and config.")


def main() -> None:
    from cnnjax.train import train_and_evaluate  # heavy imports after flag errors are reported

    train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == "__main__":
    define_flags()
    cli.run(main, required=["config", "workdir"], on_interrupt=cli.RESUME)
