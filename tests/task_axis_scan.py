"""Finds code that knows a task by name: comparisons, membership tests, dict keys, subscripts and ``.get`` of a
registered task name (``vlpeft.tasks.TASKS``) in a Python source (used by ``test_task_axis.py``)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterable

LOOKUPS = {"get", "pop", "setdefault"}


def _names_in(node: ast.AST, names: set[str]) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [n for e in node.elts for n in _names_in(e, names)]
    return []


class _Finder(ast.NodeVisitor):
    def __init__(self, names: set[str], skip_calls: set[str], aliases: dict[str, list[str]]):
        self.names, self.skip_calls, self.aliases, self.hits = names, skip_calls, aliases, []

    def _hit(self, node: ast.AST, kind: str, found: list[str]) -> None:
        self.hits.extend((node.lineno, kind, n) for n in found)

    def visit_Call(self, node: ast.Call) -> None:
        fn = node.func
        fname = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else ""
        if fname in self.skip_calls:  # a named config's data (e.g. loss_names={"vqa": 1})
            return
        if isinstance(fn, ast.Attribute) and fn.attr in LOOKUPS and node.args:
            self._hit(node, f".{fn.attr}", _names_in(node.args[0], self.names))
        if fname == "dict":
            self._hit(node, "dict key", [k.arg for k in node.keywords if k.arg in self.names])
        self.generic_visit(node)

    def visit_Compare(self, node: ast.Compare) -> None:
        for operand in [node.left, *node.comparators]:
            self._hit(node, "comparison", _names_in(operand, self.names))
            if isinstance(operand, ast.Name) and operand.id in self.aliases:  # t in CLASSIFIED = ("vqa", "gqa")
                self._hit(node, "comparison", self.aliases[operand.id])
        self.generic_visit(node)

    def visit_Dict(self, node: ast.Dict) -> None:
        for k in node.keys:
            if k is not None:
                self._hit(k, "dict key", _names_in(k, self.names))
        self.generic_visit(node)

    def visit_Subscript(self, node: ast.Subscript) -> None:
        self._hit(node, "subscript", _names_in(node.slice, self.names))
        self.generic_visit(node)


def _task_name_tuples(tree: ast.Module, names: set[str]) -> dict[str, list[str]]:
    """Module-level ``NAME = ("vqa", "gqa")``: collections of nothing but task names (a comparison with ``NAME``
    compares against those tasks)."""
    out = {}
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, (ast.Tuple, ast.List, ast.Set)):
            elts = node.value.elts
            if elts and all(isinstance(e, ast.Constant) and e.value in names for e in elts):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                out.update({t.id: [e.value for e in elts] for t in targets if isinstance(t, ast.Name)})
    return out


def task_name_uses(source: str, names: Iterable[str], skip_calls: Iterable[str] = ()) -> list[tuple[int, str, str]]:
    """``(line, kind, task name)`` for every place ``source`` compares against / keys by a task name."""
    names = set(names)
    tree = ast.parse(source)
    finder = _Finder(names, set(skip_calls), _task_name_tuples(tree, names))
    finder.visit(tree)
    return sorted(finder.hits)


def scan_package(root: Path, names: Iterable[str], exempt: Iterable[str] = (),
                 skip_calls: Iterable[str] = ()) -> dict[str, list[tuple[int, str, str]]]:
    """Hits per file (paths relative to ``root``'s parent, posix) of every ``*.py`` under ``root`` whose relative
    path does not start with an ``exempt`` prefix."""
    out = {}
    for path in sorted(Path(root).rglob("*.py")):
        rel = path.relative_to(Path(root).parent).as_posix()
        if any(rel == e or rel.startswith(e) for e in exempt):
            continue
        hits = task_name_uses(path.read_text(), names, skip_calls)
        if hits:
            out[rel] = hits
    return out


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package modules it imports, at any depth of its code (function-local imports count too)."""
    root = Path(root)
    mods = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in mods.items():
        out = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                out |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else node.module
                        for a in node.names}
            elif isinstance(node, ast.Import):
                out |= {a.name for a in node.names}
        graph[name] = {m for m in out if m in mods and m != name}
    return graph


def import_cycles(root: Path) -> list[list[str]]:
    """The strongly connected components of more than one module of ``import_graph(root)`` (each sorted)."""
    graph = import_graph(root)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out
