"""Runs entry points with several command lines each in one process (tests/test_cli.py).

  python -m tests.cli_harness '{"cnnjax.summary": [["--bogus"], ["--batch=0"]], ...}'

An entry point is a module (`cnnjax.main`, run as `python -m` runs it) or a script path
(`benchmarks/conv_ops.py`), with a list of argument lists. Prints the same JSON object with, for
each command line, `{"code": exit status, "stderr": text}`. Each run executes the entry point
afresh as `__main__`; the flags it defined are removed before the next run, while jax and the
other imports stay loaded: one interpreter start and one jax import instead of one per case.
"""

import contextlib
import io
import json
import os
import runpy
import sys
import traceback

from absl import app, flags

# Flags of these modules are defined by the run (the command's own, its config's overrides);
# other libraries (grain, orbax) define theirs once, on import, and keep them.
PER_RUN = ("__main__", "cnnjax", "experiments", "ml_collections")


def defined_by_the_run(module: str) -> bool:
    # absl files a main module's flags under its path (sys.argv[0]).
    return module.endswith(".py") or module.split(".")[0] in PER_RUN


def error_line(stderr: str) -> str:
    """The one line of `stderr` starting with `error:` (the assertion fails for none, several,
    or a traceback beside it)."""
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return errors[0]


def run_once(entry: str, args: list[str]) -> dict:
    script = entry.endswith(".py")
    sys.argv = [entry, *args]
    # `python path/to/script.py` puts the script's folder first, `python -m` the working folder.
    sys.path[0] = os.path.dirname(os.path.abspath(entry)) if script else os.getcwd()
    stderr = io.StringIO()
    code = 0
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            if script:
                runpy.run_path(entry, run_name="__main__")
            else:
                runpy.run_module(entry, run_name="__main__", alter_sys=True)
        except SystemExit as exit:
            code = 0 if exit.code is None else exit.code if isinstance(exit.code, int) else 1
        except Exception:  # what the interpreter does with an uncaught exception
            traceback.print_exc()
            code = 1
    for module, defined in list(flags.FLAGS.flags_by_module_dict().items()):
        if defined_by_the_run(module):
            for flag in list(defined):  # deleting a flag edits this list
                if flag.name in flags.FLAGS:
                    delattr(flags.FLAGS, flag.name)
    # A config file's overrides (--config.x) are filed under absl's own module: remove them too.
    for name in [n for n in flags.FLAGS if n == "config" or n.startswith("config.")]:
        delattr(flags.FLAGS, name)
    flags.FLAGS.unparse_flags()
    return {"code": code, "stderr": stderr.getvalue()}


def main() -> None:
    app.define_help_flags()  # what app.run defines once per process: kept across runs
    commands = json.loads(sys.argv[1])
    results = {
        entry: [run_once(entry, args) for args in argvs] for entry, argvs in commands.items()
    }
    print(json.dumps(results))


if __name__ == "__main__":
    main()
