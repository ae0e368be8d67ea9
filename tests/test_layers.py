"""The package's structure: every module imports, no import runs back up the layers, no import cycle.

    core (errors, data, sources, backbones, plots, ...) < cloze < methods < training < run_config, api, export
    < bench, demo, probe < cli, cli_options, cli_run < __main__

An import inside a function counts too: it is an edge of the design even where it is lazy. The
package's `__init__` (the public facade, loading the API on first use) stands outside the layers.
"""

import ast
import importlib
from pathlib import Path

import pytest

import pretune

ROOT = Path(pretune.__file__).parent
LAYERS = {"cloze": 1, "methods": 2, "training": 3, "api": 4, "run_config": 4, "export": 4, "bench": 5, "demo": 5, "probe": 5,
          "cli": 6, "cli_options": 6, "cli_run": 6, "__main__": 7}


def modules() -> list[str]:
    names = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(("pretune", *parts[:-1])) if parts[-1] == "__init__" else ".".join(("pretune", *parts)))
    return names


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.get(parts[1], 0) if len(parts) > 1 else -1  # the package facade: outside the layers


def imports(module: str, module_level_only: bool = False) -> set[str]:
    """The pretune modules a module imports (a name imported from a package counts as its submodule when it is one)."""
    path = ROOT.joinpath(*module.split(".")[1:])
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            if not base.startswith("pretune"):
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in ALL else base)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("pretune"))
    return found - {module}


ALL = set(modules())


@pytest.mark.parametrize("module", sorted(ALL - {"pretune.__main__"}))  # __main__ runs the command
def test_every_module_imports(module):
    importlib.import_module(module)


def test_no_import_runs_back_up_the_layers():
    upward = [(m, target) for m in sorted(ALL) if layer(m) >= 0 for target in imports(m) if layer(target) > layer(m)]
    assert not upward, f"imports back up the layers: {upward}"


def test_no_import_cycle():
    graph = {m: imports(m, module_level_only=True) & ALL for m in ALL}
    visiting, done, cycles = set(), set(), []

    def visit(node, path):
        visiting.add(node)
        for target in graph[node]:
            if target in visiting:
                cycles.append(path[path.index(target):] + [target])
            elif target not in done:
                visit(target, [*path, target])
        visiting.discard(node)
        done.add(node)

    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    assert not cycles, f"import cycles: {cycles}"


def test_no_module_is_longer_than_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in ROOT.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_the_public_api_imports_from_the_package():
    from pretune import Predictor, RunConfig, load_run, train_run

    assert all(callable(x) for x in (Predictor, RunConfig, load_run, train_run))
