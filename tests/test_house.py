"""The house rules ARCHITECTURE.md states, checked on the source: module and function sizes, no import cycles
(lazy imports inside functions included), only training imports ``train``, and ``config.py`` never asks which
family it holds."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "colab_utils"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, ast.Module]:
    return {
        ".".join(p.relative_to(PACKAGE).with_suffix("").parts): ast.parse(p.read_text())
        for p in sorted(PACKAGE.rglob("*.py"))
    }


def _imports(name: str, tree: ast.Module) -> set[str]:
    """The package modules ``name`` imports, at module level or inside functions."""
    package = name.split(".")[:-1]  # a module's package, and a package's own for its __init__
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            if node.module:
                out.add(target)
            for alias in node.names:  # "from . import geometry" names a module
                out.add(".".join([p for p in [target, alias.name] if p]))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("colab_utils."):
            out.add(node.module.removeprefix("colab_utils."))
    return out


def test_no_module_or_function_is_too_long():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        if (n := len(text.splitlines())) > MAX_MODULE_LINES:
            long.append(f"{path.name}: {n} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if (n := node.end_lineno - node.lineno + 1) > MAX_FUNCTION_LINES:
                    long.append(f"{path.name}:{node.lineno} {node.name}: {n} lines")
    assert not long, long


def test_modules_import_each_other_without_cycles():
    trees = _modules()
    known = set(trees) | {n.removesuffix(".__init__") for n in trees}
    graph = {n.removesuffix(".__init__"): {t for t in _imports(n, tree) if t in known and t != n.removesuffix(".__init__")}
             for n, tree in trees.items()}  # fmt: skip
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif not state.get(nxt):
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if not state.get(node):
            visit(node, [node])
    # a package imports its own modules (models/__init__ registers the families): not a cycle of the house
    cycles = [c for c in cycles if not any(a.startswith(b + ".") or b.startswith(a + ".") for a, b in zip(c, c[1:]))]
    assert not cycles, cycles


def test_only_training_imports_train():
    trees = _modules()
    importers = sorted(n for n, tree in trees.items() if "train" in _imports(n, tree))
    assert importers == ["cli", "session"], importers  # the train command and notebook 02's train step


def test_config_never_asks_which_family_it_holds():
    source = (PACKAGE / "config.py").read_text()
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(isinstance(c, ast.Constant) and c.value in ("unet", "memory_bank")
                                                 for c in [node.left, *node.comparators]):  # fmt: skip
            raise AssertionError(f"config.py:{node.lineno} compares with a family name")
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef)) and n.body
                  and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}  # fmt: skip
    words = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    words |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    words |= {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
              and id(n) not in docstrings}  # fmt: skip
    family_fields = {"coreset_ratio", "base_width", "bank_stride", "out_scales", "corruptions", "head_width"}
    assert not words & family_fields, words & family_fields
