"""The package's layers, as docs/architecture.md draws them: a module imports only from its own layer or
the ones below it, and every module belongs to a layer. Read from the source with ast (every import,
inside functions too), so a new upward import fails here before it makes a cycle."""

from __future__ import annotations

import ast
import os

import inspector

ROOT = os.path.dirname(os.path.abspath(inspector.__file__))

# bottom to top; a module belongs to the longest prefix listed ("" is the package's own __init__)
LAYERS = [
    ["errors"],
    ["common"],
    ["config"],
    ["store"],
    ["integrations"],
    ["engine.explanation"],
    ["engine.runtime"],
    ["engine.method"],
    ["engine.methods", "engine.review"],
    ["engine.inspector", "engine"],
    ["jobs", "quality"],
    ["station"],
    ["cli", "demo", "doctor", "synthetic", "__main__", ""],
]
RANK = {prefix: rank for rank, prefixes in enumerate(LAYERS) for prefix in prefixes}


def modules() -> dict[str, str]:
    """Module name inside the package (``jobs.record``; ``""`` for the package) -> file."""
    found = {}
    for folder, _, names in os.walk(ROOT):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                found[rel.removesuffix("__init__").rstrip(".")] = path
    return found


def rank(module: str) -> int | None:
    parts = module.split(".") if module else []
    for k in range(len(parts), -1, -1):
        prefix = ".".join(parts[:k])
        if prefix in RANK and (k > 0 or not module):
            return RANK[prefix]
    return None


def imports(module: str, path: str, known: dict[str, str]) -> list[tuple[int, str]]:
    """(line, imported module inside the package) for every import of the package's own modules."""
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found = []
    with open(path) as f:
        tree = ast.parse(f.read())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[:len(base) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            elif node.module and (node.module == "inspector" or node.module.startswith("inspector.")):
                target = node.module.removeprefix("inspector").lstrip(".")
            else:
                continue
            for alias in node.names:  # `from . import preprocess`: the module itself
                sub = f"{target}.{alias.name}" if target else alias.name
                found.append((node.lineno, sub if sub in known else target))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("inspector."):
                    found.append((node.lineno, alias.name.removeprefix("inspector.")))
    return found


def test_every_module_has_a_layer():
    assert [m for m in modules() if rank(m) is None] == []


def test_imports_only_point_downward():
    known = modules()
    upward = []
    for module, path in known.items():
        for line, target in imports(module, path, known):
            if rank(target) > rank(module):
                upward.append(f"{os.path.relpath(path, ROOT)}:{line} imports {target or 'inspector'}")
    assert upward == []


def test_the_rule_sees_an_upward_import(tmp_path, monkeypatch):
    """The check itself: a module of the store importing the station is caught (a test that cannot fail
    would prove nothing)."""
    fake = tmp_path / "store_fake.py"
    fake.write_text("from ..station import app\n")
    known = {**modules(), "store.fake": str(fake)}
    assert imports("store.fake", str(fake), known) == [(1, "station.app")]
    assert rank("station.app") > rank("store.fake")
