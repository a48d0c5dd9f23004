"""Every entry point reports a user's mistake as one `error:` line and exit status 2 (cnnjax.cli).

The shared mechanism is tested here, in this process; tests/test_bad_inputs.py runs the table of
bad command lines through every entry point.
"""

import sys

import pytest
from absl import app, flags

from cnnjax import cli
from cnnjax.errors import ConfigError, DataError
from tests.cli_harness import error_line

RAISES = "import math\n\n\ndef get_config(arg=None):\n    return math.log(0)\n"
VARIANTS = """import ml_collections
from cnnjax.errors import ConfigError


def get_config(arg=None):
    if arg not in (None, "a"):
        raise ConfigError(f"unknown variant {arg!r} (valid choices: a)")
    return ml_collections.ConfigDict({"lr": 0.1, "model_kwargs": {}, "optimizer": {"lr": 1.0}})
"""


@pytest.fixture
def command(monkeypatch, capsys):
    """Runs `cli.run` in this process on a command line; returns (exit status, error line).

    The flags a command defines are removed afterwards, so that each test defines its own.
    """
    app.define_help_flags()  # app.run's once-per-process flags stay defined
    before = set(flags.FLAGS)

    def invoke(argv, main=lambda: None, define=lambda: None, **run_args):
        monkeypatch.setattr(sys, "argv", ["prog", *argv])  # config overrides are read from it
        define()
        with pytest.raises(SystemExit) as exit:
            cli.run(main, **run_args)
        err = capsys.readouterr().err
        return exit.value.code, (error_line(err) if exit.value.code == 2 else err)

    yield invoke
    for name in set(flags.FLAGS) - before:
        delattr(flags.FLAGS, name)
    flags.FLAGS.unparse_flags()


@pytest.fixture
def config_files(tmp_path):
    (tmp_path / "raises.py").write_text(RAISES)
    (tmp_path / "variants.py").write_text(VARIANTS)
    (tmp_path / "empty.py").write_text("X = 1\n")
    return tmp_path


def with_config():
    cli.config_file("a config")
    flags.DEFINE_string("workdir", None, "a folder")


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--workdi=x"], "unknown flag --workdi; did you mean --workdir? (flags: --config, --"),
        (["--config={d}/nope.py"], "config file '{d}/nope.py' not found"),
        (["--config={d}/raises.py"], "raised ValueError at line 5: math domain error"),
        (["--config={d}/empty.py"], "config file '{d}/empty.py' has no get_config()"),
        (["--config={d}/variants.py:b"], "{d}/variants.py: unknown variant 'b' (valid choices"),
        (["--config={d}/variants.py", "--config.lrr=1"], "unknown config key 'lrr'; did you "),
        (["--config={d}/variants.py", "--config.optimizer.l=1"], "did you mean 'optimizer.lr'"),
        (["--config={d}/variants.py", "--config.lr=x"], "--config.lr=x: could not convert"),
        (["--config={d}/variants.py", "--config.model_kwargs.width=2"], "add it to config.model"),
        (["--config={d}/variants.py:a"], "missing required flag --workdir"),
        (["--config={d}/variants.py", "--workdir=w", "x"], "unexpected arguments ['x']; use --c"),
    ],
)
def test_config_and_flag_mistakes_are_one_line(command, config_files, argv, match):
    argv = [a.format(d=config_files) for a in argv]
    code, line = command(argv, define=with_config, required=["config", "workdir"])
    assert code == 2 and match.format(d=config_files) in line


def test_a_good_command_line_runs_main_with_its_config_and_arguments(command, config_files):
    seen = {}

    def main(workdir):
        seen.update(workdir=workdir, lr=flags.FLAGS.config.lr)
        return 3

    code, _ = command(
        [f"--config={config_files}/variants.py:a", "--config.lr=0.5", "runs/x"],
        main,
        lambda: cli.config_file("a config"),
        arguments=["WORKDIR"],
    )
    assert code == 3 and seen == {"workdir": "runs/x", "lr": 0.5}


@pytest.mark.parametrize(
    "raised, run_args, match",
    [
        (DataError("no metrics.jsonl in x"), {}, "error: no metrics.jsonl in x"),
        (KeyboardInterrupt(), {"on_interrupt": cli.RESUME}, "error: interrupted; run the same"),
        (KeyboardInterrupt(), {}, "error: interrupted"),
    ],
)
def test_errors_of_the_run_are_one_line(command, raised, run_args, match):
    def main():
        raise raised

    code, line = command([], main, **run_args)
    assert code == 2 and line.startswith(match)


def test_missing_and_bad_values_of_plain_flags(command):
    def define():
        flags.DEFINE_integer("batch", 1, "a batch", lower_bound=1)

    assert command(["--batch=0"], define=define) == (
        2,
        "error: flag --batch=0: 0 is not a positive integer",
    )
    assert command([], arguments=["WORKDIR"]) == (2, "error: missing argument WORKDIR")


def test_load_config_names_the_reason(config_files):
    assert cli.load_config(f"{config_files}/variants.py:a").lr == 0.1
    with pytest.raises(ConfigError, match="raised ValueError at line 5: math domain error"):
        cli.load_config(f"{config_files}/raises.py")
