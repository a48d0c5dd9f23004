"""The command line every entry point shares: absl flags, config files and one-line errors.

An entry point (`python -m cnnjax.main`, `cnnjax.summary`, `cnnjax.bench`, `cnnjax.plot`, the
experiment drivers, `experiments/smoke_zoo.py`, `benchmarks/*.py`) defines its flags with absl
(`flags.DEFINE_*`, and `config_file()` for an experiment config) only when it runs as a command, so
that importing it defines none; its `main` does the work; `run(main, ...)` parses the command line
and calls it. Every mistake of the user ends the command with ONE line `error: <what is wrong>` on
stderr and exit status 2:

* an unknown flag (with the closest defined one), a bad flag value, a missing required flag,
  positional arguments the command does not take;
* a config file that does not exist, raises while loading (its exception type, message and
  line), or rejects its variant (`configs.common.variant`);
* a `--config.key=value` override of a key the config does not have (with the closest key);
* a `CnnjaxError` raised by `main` (unknown model, missing data, a diverged loss, ...);
* Ctrl-C, with what to do next (`on_interrupt`).

This module imports only absl and ml_collections: the entry points import jax, flax and the
training code inside `main`, after the flags are parsed, so that a typo costs a fraction of a
second.
"""

from __future__ import annotations

import difflib
import importlib.machinery
import importlib.util
import os
import re
import sys
import sysconfig
import traceback
from collections.abc import Callable, Iterator, Sequence

from absl import app, flags, logging
from ml_collections import config_dict, config_flags

from cnnjax.errors import CnnjaxError, ConfigError, Preempted, fail, unknown_choice

RESUME = "interrupted; run the same command again to resume from the latest checkpoint"


def config_file(help_string: str, name: str = "config") -> flags.FlagHolder:
    """Defines `--<name>=FILE[:variant]` and its `--<name>.key=value` overrides.

    ml_collections' config flag, whose loading failures say why (see `load_config`) instead of
    absl's "Error whilst parsing config file" or a deferred error object.

    Args:
      help_string: the flag's help, e.g. "Experiment config file (configs/*.py)."
      name: the flag's name.

    Returns:
      The flag's holder; `.value` is the loaded and overridden `ConfigDict`.
    """
    holder = config_flags.DEFINE_config_file(name, None, help_string)
    flags.FLAGS[name].parser = _ConfigFileParser(name)
    return holder


def load_config(spec: str, module_name: str = "config_config") -> config_dict.ConfigDict:
    """`get_config([variant])` of the config file `spec` = "path/to/config.py[:variant]".

    A config file inside a package (`configs/` has an `__init__.py`) is loaded with the folder
    above its top package on `sys.path`, so that its `from configs.common import ...` works from
    any working directory.

    Raises:
      ConfigError: the file does not exist, raises while loading (the message names the
        exception, its line in the file and its message), has no `get_config`, rejects the
        variant, or returns something other than a `ConfigDict`.
    """
    path, *variant = spec.split(":", 1)  # like ml_collections: no ":" calls get_config()
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} not found")
    root = _import_root(path)
    if root and root not in sys.path:
        sys.path.insert(0, root)
    loader = importlib.machinery.SourceFileLoader(module_name, path)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(module_name, loader))
    try:
        loader.exec_module(module)
    except Exception as error:  # the config file's own bug: name it, not absl's wrapper
        raise ConfigError(f"config file {path!r} raised {_described(error, path)}") from error
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path!r} has no get_config()")
    try:
        config = module.get_config(*variant)
    except CnnjaxError as error:  # e.g. an unknown variant: the message says what is wrong
        raise ConfigError(f"{path}: {error}") from error
    except Exception as error:
        raise ConfigError(f"config file {path!r} raised {_described(error, path)}") from error
    if not isinstance(config, config_dict.ConfigDict):
        raise ConfigError(
            f"{path}: get_config() returned {type(config).__name__}, not a ConfigDict"
        )
    return config


def run(
    main: Callable[..., int | None],
    *,
    required: Sequence[str] = (),
    arguments: Sequence[str] = (),
    on_interrupt: str = "interrupted",
) -> None:
    """Parses the command line and calls `main(*arguments)`; exits with its return value.

    Args:
      main: the command; its positional arguments are the command line's `arguments`, its flags
        are read from `flags.FLAGS`. It returns None or an exit status.
      required: names of flags that must be given.
      arguments: names of the positional arguments the command takes (e.g. "WORKDIR"); any other
        number of them is an error.
      on_interrupt: the `error:` line of a Ctrl-C (e.g. `RESUME` for resumable training).
    """

    def absl_main(argv: list[str]) -> int | None:
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
        missing = [f"--{name}" for name in required if flags.FLAGS[name].value is None]
        if missing:
            fail(f"missing required flag{'s' * (len(missing) > 1)} {', '.join(missing)}")
        given = argv[1:]
        if len(given) > len(arguments):
            hint = "".join(
                f"; use --{flag.name}.key=value to change the config" for flag in _config_flags()
            )
            fail(f"unexpected arguments {given[len(arguments) :]}{hint}")
        if len(given) < len(arguments):
            fail(f"missing argument {arguments[len(given)]}")
        try:
            return main(*given)
        except Preempted as error:
            fail(str(error), Preempted.EXIT_STATUS)
        except CnnjaxError as error:
            fail(str(error))
        except KeyboardInterrupt:
            fail(on_interrupt)

    app.run(absl_main, flags_parser=_parse_flags)


def _parse_flags(argv: list[str]) -> list[str]:
    """`flags.FLAGS(argv)`, whose errors become one `error:` line instead of absl's usage text."""
    try:
        return flags.FLAGS(argv)
    except flags.UnrecognizedFlagError as error:
        fail(_unknown_flag(error.flagname))
    except flags.Error as error:
        # absl re-raises a parser's ValueError with "flag --config=...:" and the message; a
        # config file's own error (ConfigError) already names the file.
        cause = error.__context__
        fail(str(cause) if isinstance(cause, CnnjaxError) else str(error).splitlines()[0])
    except (AttributeError, KeyError):  # ml_collections: an override of a key the config lacks
        fail(_unknown_override(argv))


class _ConfigFileParser(flags.ArgumentParser):
    """Loads and locks the config (`load_config`), and keeps it to name an unknown override."""

    def __init__(self, name: str):
        self.name = name
        self.loaded: config_dict.ConfigDict | None = None

    def parse(self, argument):
        config = load_config(argument, f"{self.name}_config")
        config.lock()  # as ml_collections does: an override cannot add keys
        self.loaded = config
        return config

    def flag_type(self) -> str:
        return "config object"


def _config_flags() -> list[flags.Flag]:
    return [flags.FLAGS[name] for name in flags.FLAGS if _is_config_flag(flags.FLAGS[name])]


def _is_config_flag(flag: flags.Flag) -> bool:
    return isinstance(flag.parser, _ConfigFileParser)


def _import_root(path: str) -> str | None:
    """The folder above the outermost package holding `path`; None outside a package."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isfile(os.path.join(folder, "__init__.py")):
        return None
    while os.path.isfile(os.path.join(folder, "__init__.py")):
        folder = os.path.dirname(folder)
    return folder


def _described(error: Exception, path: str) -> str:
    """ "NameError at line 12: name 'x' is not defined" (the line of the config file's frame)."""
    lines = [
        frame.lineno
        for frame in traceback.extract_tb(error.__traceback__)
        if os.path.abspath(frame.filename) == os.path.abspath(path)
    ]
    where = f" at line {lines[-1]}" if lines else ""
    return f"{type(error).__name__}{where}: {error}"


def _unknown_flag(name: str) -> str:
    """ "unknown flag --bach; did you mean --batch? (flags: ...)", among the command's flags."""
    ours = _command_flags()
    close = difflib.get_close_matches(name, ours, n=1)
    hint = f"; did you mean --{close[0]}?" if close else ""
    return f"unknown flag --{name}{hint} (flags: {', '.join(f'--{n}' for n in ours)})"


def _command_flags() -> list[str]:
    """Names of the flags the command defined, not absl's nor those libraries define on import
    (grain, orbax): flags of the main module (absl names it by `sys.argv[0]`), of cnnjax, and of
    modules outside the Python installation."""
    paths = sysconfig.get_paths()
    libraries = tuple(paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib"))
    names = set()
    for module, defined in flags.FLAGS.flags_by_module_dict().items():
        path = os.path.abspath(getattr(sys.modules.get(module), "__file__", None) or "")
        ours = module in ("__main__", sys.argv[0]) or module.split(".")[0] == "cnnjax"
        if ours or not path.startswith(libraries):
            names.update(flag.name for flag in defined if "." not in flag.name)  # no overrides
    return sorted(names)


def _unknown_override(argv: list[str]) -> str:
    """Names the `--config.key=value` override whose key the loaded config lacks."""
    for flag in _config_flags():
        if flag.parser.loaded is None:
            continue
        known = set(_keys(flag.parser.loaded))
        for arg in argv[1:]:
            match = re.match(rf"--?(?:no)?{re.escape(flag.name)}\.([^=]+)", arg)
            if not match or match.group(1) in known:
                continue
            key = match.group(1)
            parent = key.rpartition(".")[0]
            if parent.rpartition(".")[2] == "model_kwargs":  # any field the model has
                return (
                    f"--{flag.name}.{key} overrides a model field the config file does not set; "
                    f"add it to {flag.name}.{parent} in the config file first"
                )
            return unknown_choice(f"{flag.name} key", key, known)
    return "bad --config.key=value override"


def _keys(config: config_dict.ConfigDict, prefix: str = "") -> Iterator[str]:
    """Dotted names of the config's leaves, e.g. "optimizer.lr" (an empty dict has none)."""
    for key, value in config.items():
        if isinstance(value, config_dict.ConfigDict):
            yield from _keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"
