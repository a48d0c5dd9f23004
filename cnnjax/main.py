"""Command-line entry point.

  python -m cnnjax.main --config=configs/default.py --workdir=runs/default [--config.key=value ...]

Restarting the same command resumes from the latest checkpoint in the workdir. Errors caused by
the input (unknown key, model or dataset, missing data, bad shapes, corrupt checkpoint, diverged
loss) are printed as one line starting with "error:" and exit with status 2.
"""

from absl import app, flags, logging
from ml_collections import config_dict, config_flags

from cnnjax.errors import CnnjaxError, fail

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics and config.")
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv):
    """absl flag parsing whose config errors become one clear line instead of a traceback."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        fail(str(error).splitlines()[0])
    except (AttributeError, KeyError):
        fail(unknown_override(argv))
    except Exception as error:  # e.g. a config file that does not load
        fail(f"{type(error).__name__}: {error}")


def unknown_override(argv) -> str:
    """Names the `--config.key=value` flag whose key the config lacks, with a suggestion."""
    from cnnjax.errors import unknown_choice
    from cnnjax.train.config import known_keys

    known = known_keys()
    keys = [
        a.split("=")[0].removeprefix("--config.") for a in argv[1:] if a.startswith("--config.")
    ]
    bad = next((key for key in keys if key not in known), "")
    if bad.startswith("model_kwargs."):
        return (
            f"--config.{bad} overrides a model field the config file does not set; add it to "
            "config.model_kwargs in the config file first"
        )
    return unknown_choice("config key", bad, known) if bad else "bad --config.key=value override"


def main(argv):
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}; use --config.key=value to change the config")
    config = _CONFIG.value
    if not isinstance(config, config_dict.ConfigDict):
        fail(f"could not load --config={flags.FLAGS['config'].config_filename}: {config}")
    from cnnjax.train import train_and_evaluate  # heavy imports after flag errors are reported

    try:
        train_and_evaluate(config, _WORKDIR.value)
    except CnnjaxError as error:
        fail(str(error))
    except KeyboardInterrupt:
        fail("interrupted; run the same command again to resume from the latest checkpoint")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
