"""The package's import graph: no cycles, and every import goes to the same rank or lower.

The ranks are those of docs/ARCHITECTURE.md. Every `import` statement counts, also one inside a
function: a cycle that only works because one side imports late is still a cycle.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCANNED = ("cnnjax", "experiments", "benchmarks", "docs")

# (prefix, rank): a module takes the rank of its longest matching prefix.
RANKS = (
    ("cnnjax", 0),  # the package itself: __version__ only
    ("cnnjax.errors", 0),
    ("cnnjax.ext", 0),
    ("cnnjax.layers.backend", 0),
    ("cnnjax.layers", 1),
    ("cnnjax.models", 2),
    ("cnnjax.data", 2),
    ("cnnjax.train", 3),
    ("cnnjax.analysis", 4),
    ("cnnjax.compress", 5),
    # Array numerics with no cnnjax imports but errors, used by the training loop's optimizer.
    ("cnnjax.compress.prune", 1),
    ("cnnjax.compress.quantize", 1),
    ("cnnjax.compress.coding", 1),
    # Model-level compression the training loop applies (compact models, BatchNorm folding, QAT).
    ("cnnjax.compress.compact", 2),
    ("cnnjax.compress.ptq", 2),
    ("cnnjax.compress.qat", 2),
    ("cnnjax.viz", 5),
    ("cnnjax.parallel", 5),
    ("cnnjax.testing", 6),
    ("cnnjax.cli", 6),
    ("cnnjax.main", 6),
    ("cnnjax.summary", 6),
    ("cnnjax.bench", 6),
    ("cnnjax.plot", 6),
    ("cnnjax.compress.__main__", 6),  # the `python -m cnnjax.compress` command
    ("experiments", 7),
    ("benchmarks", 7),
    ("docs", 7),
)


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, pathlib.Path]:
    modules = {}
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            modules[module_name(path)] = path
    return modules


MODULES = all_modules()


def rank(module: str) -> int:
    best = max((p for p, _ in RANKS if module == p or module.startswith(p + ".")), key=len)
    return dict(RANKS)[best]


def resolve(module: str, path: pathlib.Path, node: ast.AST) -> list[str]:
    """The project modules an import statement names (a name that is a submodule counts)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name in MODULES]
    assert isinstance(node, ast.ImportFrom)
    base = node.module or ""
    if node.level:
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{base}".strip(".")
    targets = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
    if len(targets) < len(node.names) and base in MODULES:
        targets.append(base)
    return targets


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[module] = {
            target
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for target in resolve(module, path, node)
            if target != module
        }
    return graph


GRAPH = import_graph()


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_scan_sees_the_whole_package():
    assert {"cnnjax.layers.conv", "cnnjax.models.registry", "cnnjax.train.loop"} <= set(MODULES)
    assert "cnnjax.layers.conv" in GRAPH["cnnjax.layers"]


def test_no_import_cycles():
    assert cycles(GRAPH) == []


def test_imports_go_to_the_same_rank_or_lower():
    upward = sorted(
        f"{module} (rank {rank(module)}) imports {target} (rank {rank(target)})"
        for module, targets in GRAPH.items()
        for target in targets
        if rank(target) > rank(module)
    )
    assert upward == []


def test_no_private_name_crosses_modules():
    crossing = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in SCANNED:
                names = [a.name for a in node.names if a.name.startswith("_")]
                crossing += [f"{module}: from {node.module} import {n}" for n in names]
    assert crossing == []


@pytest.mark.parametrize(
    "graph, expected",
    [
        ({"a": {"b"}, "b": {"a"}, "c": {"a"}}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ],
)
def test_the_cycle_finder_finds_cycles(graph, expected):
    assert cycles(graph) == expected
