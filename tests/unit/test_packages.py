"""The package layout: pyproject's package list is the folders, and the layers import one way
(core ← adapters ← harness; leaderboards only reads the harness; core imports no layer)."""

from __future__ import annotations

import ast
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# what each top-level package may import from robustad_bench (beside itself)
MAY_IMPORT = {"core": set(), "adapters": {"core"}, "harness": {"core", "adapters", "leaderboards"}, "leaderboards": {"core", "harness"}}


def test_the_package_list_is_the_folders():
    listed = PYPROJECT["tool"]["setuptools"]["packages"]
    folders = PYPROJECT["tool"]["setuptools"]["package-dir"]
    for package in listed:
        folder = ROOT / folders.get(package, package.replace("robustad_bench.", "").replace(".", "/"))
        if package not in folders:  # a subpackage: its parent's folder + its name
            parent, _, name = package.rpartition(".")
            folder = ROOT / folders[parent] / name
        assert (folder / "__init__.py").is_file(), package
    on_disk = {f"robustad_bench.{p.parent.relative_to(ROOT).as_posix().replace('/', '.')}"
               for top in MAY_IMPORT for p in (ROOT / top).rglob("__init__.py")}
    assert on_disk <= set(listed), sorted(on_disk - set(listed))


def imported_layers(path: Path) -> set[str]:
    """The robustad_bench top-level packages a module imports (anywhere in it, lazily too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n.split(".")[1] for n in names if n.startswith("robustad_bench.") and n.count(".") >= 1}
    return found


def test_layers_import_one_way():
    wrong = []
    for layer, allowed in MAY_IMPORT.items():
        for path in sorted((ROOT / layer).rglob("*.py")):
            if extra := imported_layers(path) - allowed - {layer}:
                wrong.append(f"{path.relative_to(ROOT)} imports {sorted(extra)}")
    assert not wrong, wrong
