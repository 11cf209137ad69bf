"""The import contracts of ``pyproject.toml`` checked over the whole tree, the paper's root modules included.

import-linter builds its graph from packages only, and the paper's modules (``Attacker.py``, ``utils.py``, the
``main_*`` scripts, ...) are single files at the root. So each of them is linked, under its own name, into a
temporary folder as a one-file package (``utils/__init__.py`` -> ``utils.py``), beside links to the real packages,
and ``lint-imports`` runs there on the same contracts with every top-level name as a root package: the same
names, the same imports, nothing copied or rewritten. Usage: ``python scripts/lint_imports.py`` (exit status as
``lint-imports``'); ``make check`` and ``.ci/run`` run it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: folders at the root that are not the project's code
NOT_CODE = {"tests", "benchmarks", "examples", "scripts", "docs"}


def top_level_names(repo: Path = REPO) -> tuple[list[str], list[str]]:
    """The project's root modules (``utils``, ``main_train_model``, ...) and packages (``storage``, ...)."""
    modules = sorted(p.stem for p in repo.glob("*.py") if p.stem not in ("conftest", "setup"))
    packages = sorted(p.name for p in repo.iterdir()
                      if p.is_dir() and (p / "__init__.py").is_file() and p.name not in NOT_CODE)
    return modules, packages


def linked_tree(folder: Path, repo: Path = REPO) -> list[str]:
    """Link the whole tree into ``folder``, each root module as a one-file package; returns every top-level name."""
    modules, packages = top_level_names(repo)
    for name in modules:
        (folder / name).mkdir()
        (folder / name / "__init__.py").symlink_to(repo / f"{name}.py")
    for name in packages:
        (folder / name).symlink_to(repo / name, target_is_directory=True)
    return modules + packages


def whole_tree_config(folder: Path, names: list[str], repo: Path = REPO) -> Path:
    """``pyproject.toml``'s import-linter section with every top-level name as a root package (TOML written by
    hand: the section holds strings, lists of strings, booleans and tables of them)."""
    section = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["importlinter"]
    lines = ["[tool.importlinter]", f"root_packages = {_toml(names)}"]
    lines += [f"{key} = {_toml(value)}" for key, value in section.items()
              if key not in ("root_packages", "contracts")]
    for contract in section.get("contracts", []):
        lines += ["", "[[tool.importlinter.contracts]]"]
        lines += [f"{key} = {_toml(value)}" for key, value in contract.items()]
    path = folder / "importlinter.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "[" + ", ".join(_toml(item) for item in value) + "]"


def main() -> int:
    lint = Path(sys.executable).with_name("lint-imports")
    with tempfile.TemporaryDirectory(prefix="lint-imports-") as tmp:
        folder = Path(tmp)
        config = whole_tree_config(folder, linked_tree(folder))
        env = {**os.environ, "PYTHONPATH": str(folder)}
        return subprocess.run([str(lint), str(config), "--no-cache"], cwd=folder, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
