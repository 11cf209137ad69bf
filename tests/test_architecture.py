"""The house: stages in folders, imports only down the layers of ``pyproject.toml``, no circle, no private name
taken from another module, an import inside a function only to defer an optional or heavy dependency (saying
so), the paper's modules and the scripts alone at the root, no module past 400 lines."""

from __future__ import annotations

import ast
import graphlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import lint_imports  # noqa: E402

#: the paper's seven modules (the root keeps them, under their names)
PAPER_MODULES = {"Attacker", "DatasetManager", "DeepFailGuard", "FaultInjector", "ModelManager", "ModelTrainer",
                 "utils"}
#: what a deferred import's comment says
DEFERRED = "# deferred:"


def project_modules() -> dict[str, Path]:
    """Every module of the project's code (root modules and packages, not tests, benchmarks or scripts), by its
    dotted name."""
    modules, packages = lint_imports.top_level_names(REPO)
    found = {name: REPO / f"{name}.py" for name in modules}
    for package in packages:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


#: run in a fresh interpreter: in this one the root modules are imported already, as the modules they are
EDGES = """
import json, sys
import grimp
graph = grimp.build_graph(*sys.argv[1:], cache_dir=None)
print(json.dumps({module: sorted(graph.find_modules_directly_imported_by(module)) for module in graph.modules}))
"""


@pytest.fixture(scope="module")
def edges(tmp_path_factory) -> dict[str, list[str]]:
    """The import graph of the whole tree, module -> the modules it imports (grimp, over the root modules linked
    as one-file packages)."""
    folder = tmp_path_factory.mktemp("linked")
    names = lint_imports.linked_tree(folder, REPO)
    result = subprocess.run([sys.executable, "-c", EDGES, *names], cwd=folder, env={"PYTHONPATH": str(folder)},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_the_contracts_hold_over_the_whole_tree():
    """``lint-imports`` on ``pyproject.toml``'s contracts with every root module as a package of its own."""
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "lint_imports.py")], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "BROKEN" not in result.stdout and " kept, 0 broken" in result.stdout


def test_no_module_imports_itself_back_through_others(edges):
    try:
        list(graphlib.TopologicalSorter(edges).static_order())
    except graphlib.CycleError as error:
        pytest.fail(f"import cycle: {' -> '.join(error.args[1])}")
    assert sum(len(targets) for targets in edges.values()) > 100  # the graph was really read


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    functions = [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    inside = {id(inner) for function in functions for inner in ast.walk(function)
              if isinstance(inner, (ast.Import, ast.ImportFrom))}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, id(node) in inside


def test_no_private_name_is_taken_from_another_module():
    modules = project_modules()
    taken = [f"{path.relative_to(REPO)}:{node.lineno} {node.module}.{alias.name}"
             for path in modules.values() for node, _ in _imports(path) if isinstance(node, ast.ImportFrom)
             and (node.module or "").split(".")[0] in {name.split(".")[0] for name in modules}
             for alias in node.names if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert not taken, taken


def test_an_import_inside_a_function_defers_an_optional_or_heavy_dependency_and_says_so():
    lines = {path: path.read_text().splitlines() for path in project_modules().values()}
    unexplained = [f"{path.relative_to(REPO)}:{node.lineno}: {lines[path][node.lineno - 1].strip()}"
                   for path in lines for node, in_function in _imports(path)
                   if in_function and DEFERRED not in lines[path][node.lineno - 1]]
    assert not unexplained, unexplained


def test_the_root_holds_the_paper_modules_and_the_scripts_alone():
    root = {path.stem for path in REPO.glob("*.py")}
    assert PAPER_MODULES <= root
    assert root - PAPER_MODULES == {name for name in root if name.startswith("main_")}


def test_no_module_grows_past_four_hundred_lines():
    long = {str(path.relative_to(REPO)): count for path in project_modules().values()
            if (count := len(path.read_text().splitlines())) > 400}
    assert not long, long
