"""Every shipped config loads and validates; the README's commands are the ones CI runs."""

import importlib.util
import json
import re

import pytest

from cnnjax import models
from cnnjax.train.config import validate_config
from tests.conftest import ROOT

# The config files, not the package's __init__.py and configs/common.py.
CONFIG_FILES = sorted(
    p for p in (ROOT / "configs").glob("*.py") if "def get_config" in p.read_text()
)
README = (ROOT / "README.md").read_text()


def load_module(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config(path, arg=None):
    return load_module(path).get_config(arg)


def config_args(path):
    """The `:arg` variants a config's docstring launches (plus the default)."""
    text = path.read_text()
    return [None, *sorted(set(re.findall(rf"configs/{path.stem}\.py:(\w+)", text)))]


@pytest.mark.parametrize(
    "path, arg", [(p, a) for p in CONFIG_FILES for a in config_args(p)], ids=str
)
def test_config_loads_and_validates(path, arg):
    validate_config(load_config(path, arg))


def test_config_docstrings_show_their_launch_command():
    for path in CONFIG_FILES:
        assert f"--config=configs/{path.name}" in path.read_text(), path


def test_readme_starts_with_the_two_commands_and_ci_runs_the_second():
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", README, re.S)
    main_command, test_command = blocks[0].strip(), blocks[1].strip()
    assert "cnnjax.main --config=configs/default.py" in main_command
    assert "pytest" in test_command
    ci = (ROOT / ".ci" / "run").read_text()
    assert f'README_TEST_COMMAND="{test_command}"' in ci


def test_readme_commands_name_existing_configs():
    for name in re.findall(r"--config=configs/(\w+)\.py", README):
        assert (ROOT / "configs" / f"{name}.py").exists(), name


def model_file(name):
    """The module defining a registered model (its architecture family)."""
    constructor = models.model_info(name).constructor
    return getattr(constructor, "func", constructor).__module__


def test_every_model_family_has_a_validating_smoke_config():
    smoke = load_module(ROOT / "configs" / "smoke.py")
    for name in smoke.SMOKE:
        validate_config(smoke.get_config(name))
    families = {model_file(name) for name in models.list_models()}
    assert families == {model_file(name) for name in smoke.SMOKE}


def test_readme_smoke_accuracies_are_the_recorded_runs():
    records_path = ROOT / "experiments" / "results" / "smoke_zoo.jsonl"
    quoted = re.findall(r"(\d+\.\d+)% \(smoke `(\w+)`\)", README)
    if not records_path.exists():
        assert not quoted, "README quotes smoke results but the records file is missing"
        return
    records = {}
    for line in records_path.read_text().splitlines():
        record = json.loads(line)
        records[record["model"]] = record
    assert quoted
    for value, name in quoted:
        assert name in records, name
        assert value == f"{100 * records[name]['test_accuracy']:.2f}", name
