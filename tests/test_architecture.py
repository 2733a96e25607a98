"""The import structure issue #17 asks for, read from the source (no module is imported):

- no import cycle among ``vlpeft/`` modules and the root scripts (``run*.py``), counting imports inside functions;
- ``vlpeft/_protocol.py`` (the contract) imports nothing of the project;
- an import of a project module inside a function is one of ``DEFERRED`` (each defers a heavy dependency a run
  may never need, named in a comment on its line) or of ``LOCAL_IMPORT_ALLOWED`` (another branch removes it).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "vlpeft"

# Cycles among files another branch owns; each entry is the cycle's set of modules. The lead empties this list
# after merging that branch.
KNOWN_CYCLES: list[frozenset[str]] = []

# The function-local imports of project modules that stay: (file, module imported) -> the heavy dependency each
# defers. Anything else inside a function is an error: it hides an import cycle (issue #17).
DEFERRED: dict[tuple[str, str], str] = {
    ("vlpeft/__init__.py", "vlpeft.loading"): "torch, Lightning and the model code: `import vlpeft.<x>` runs "
                                              "vlpeft/__init__.py, so `vlpeft.load` is resolved on first use",
    ("vlpeft/search/_base.py", "vlpeft.search.plot"): "matplotlib, only when a search plot is asked for",
}

# The one cycle another branch removes (issue #17 item 1, tasks as classes: tasks/_base.py <-> tasks/generative.py,
# whose back edge is a function-local import); the lead empties this after merging that branch.
LOCAL_IMPORT_ALLOWED: dict[tuple[str, str], str] = {}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    mods = {_module_name(p): p for p in sorted((ROOT / PACKAGE).rglob("*.py"))}
    for script in sorted(ROOT.glob("run*.py")):  # run.py, run_search.py, run_train.py: the package never imports them
        mods[script.stem] = script
    return mods


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _resolve_from(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names (``from .x import y`` resolved against ``module``)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if _is_package(path) else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str, path: Path, mods: dict[str, Path]) -> list[tuple[str, int, bool, ast.stmt]]:
    """(imported project module, line, inside a function?, the statement) for each import of a project module.

    ``from a import b`` counts as an import of ``a.b`` where that is a module, else of ``a``."""
    tree = ast.parse(path.read_text(), str(path))
    out: list[tuple[str, int, bool, ast.stmt]] = []

    def add(name: str, node: ast.stmt, local: bool) -> None:
        # the module named; the packages above it, which run too, are added by _graph
        if name in mods and name != module:
            out.append((name, node.lineno, local, node))

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    add(alias.name, child, local)
            elif isinstance(child, ast.ImportFrom):
                base = _resolve_from(module, path, child)
                names = [f"{base}.{a.name}" for a in child.names]
                subs = [n for n in names if n in mods]  # `from pkg import mod` imports mod
                for n in subs:
                    add(n, child, local)
                if len(subs) < len(names):  # `from mod import name` (or a mix): mod itself
                    add(base, child, local)
            visit(child, inner)

    visit(tree, False)
    return out


def _graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules importing it runs: each one named and the packages above it (importing
    ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first), except the importer's own packages, which are
    already running when it is imported."""
    graph: dict[str, set[str]] = {}
    for m, p in mods.items():
        parts = m.split(".")
        own = {".".join(parts[:i]) for i in range(1, len(parts) + (1 if _is_package(p) else 0))}
        edges: set[str] = set()
        for target, *_ in _imports(m, p, mods):
            t = target.split(".")
            edges.update(a for a in (".".join(t[:i]) for i in range(1, len(t) + 1)) if a in mods and a not in own)
        graph[m] = edges - {m}
    return graph


def import_graph() -> dict[str, set[str]]:
    return _graph(_sources())


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module: the shortest through the component's
    first module. A component holds every module on some cycle, so an empty answer means no cycle."""
    return [_one_cycle(graph, set(c)) for c in strongly_connected(graph)]


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for v in sorted(graph):
        if v not in index:
            strong(v)
    return comps


def _one_cycle(graph: dict[str, set[str]], comp: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first), to print."""
    start = min(comp)
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & comp):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return [start] + path[::-1][1:] + [start] if len(path) > 1 else [start, v, start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return sorted(comp)


def function_local_project_imports() -> list[tuple[str, str, int, str]]:
    """(path, module imported, line, source line) of each import of a project module made inside a function."""
    mods = _sources()
    out = []
    for m, p in mods.items():
        lines = p.read_text().splitlines()
        rel = p.relative_to(ROOT).as_posix()
        for target, line, local, node in _imports(m, p, mods):
            if local:
                end = getattr(node, "end_lineno", line) or line
                out.append((rel, target, line, "\n".join(lines[line - 1: end])))
    return sorted(out)


def test_the_graph_sees_local_and_relative_imports(tmp_path):
    # the checker itself: a cycle made only by a function-local relative import is found
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n")
    (pkg / "b.py").write_text("def f():\n    from . import a\n")
    mods = {"pkg": pkg / "__init__.py", "pkg.a": pkg / "a.py", "pkg.b": pkg / "b.py"}
    graph = _graph(mods)
    assert graph["pkg.b"] == {"pkg.a"}
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.a"]]


def test_the_graph_sees_a_cycle_through_a_package_init(tmp_path):
    # importing pkg.x.b runs pkg/x/__init__.py first: y -> x.b is also y -> x, and x's __init__ imports x.a, which
    # imports y (importing pkg.y first fails: `f` is not defined yet when x.a asks for it)
    for rel, text in {"pkg/__init__.py": "", "pkg/x/__init__.py": "from pkg.x.a import A\n",
                      "pkg/x/a.py": "from pkg.y import f\nA = 1\n", "pkg/x/b.py": "B = 2\n",
                      "pkg/y.py": "from pkg.x.b import B\n\ndef f():\n    return B\n"}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    mods = {"pkg": tmp_path / "pkg/__init__.py", "pkg.x": tmp_path / "pkg/x/__init__.py",
            "pkg.x.a": tmp_path / "pkg/x/a.py", "pkg.x.b": tmp_path / "pkg/x/b.py", "pkg.y": tmp_path / "pkg/y.py"}
    graph = _graph(mods)
    assert graph["pkg.y"] == {"pkg.x", "pkg.x.b"}  # not pkg: every module's own package runs before it
    assert graph["pkg.x.a"] == {"pkg.y"}
    assert strongly_connected(graph) == [["pkg.x", "pkg.x.a", "pkg.y"]]


def test_no_import_cycle_among_project_modules():
    graph = import_graph()
    comps = strongly_connected(graph)
    unexpected = [c for c in comps if frozenset(c) not in KNOWN_CYCLES]
    assert not unexpected, "import cycles (counting imports inside functions):\n" + "\n".join(
        f"  {' -> '.join(_one_cycle(graph, set(c)))}   (modules on cycles here: {', '.join(c)})" for c in unexpected)
    stale = [sorted(k) for k in KNOWN_CYCLES if k not in {frozenset(c) for c in comps}]
    assert not stale, f"KNOWN_CYCLES lists cycles that are gone; remove them: {stale}"


def test_the_contract_imports_nothing_of_the_project():
    mods = _sources()
    got = {t for t, *_ in _imports("vlpeft._protocol", mods["vlpeft._protocol"], mods)} - {"vlpeft"}
    assert got == set(), f"vlpeft/_protocol.py must import nothing of vlpeft; it imports {sorted(got)}"


def test_function_local_project_imports_only_defer_heavy_dependencies():
    found = function_local_project_imports()
    bad = [f"  {rel}:{line}: {src.strip()}" for rel, target, line, src in found
           if (rel, target) not in DEFERRED and (rel, target) not in LOCAL_IMPORT_ALLOWED]
    assert not bad, ("imports of project modules inside functions hide import cycles (issue #17); move them to "
                     "the top of the file (split the module where that makes a cycle):\n" + "\n".join(bad))
    silent = [f"  {rel}:{line}: {src.strip()}" for rel, target, line, src in found
              if (rel, target) in DEFERRED and "#" not in src]
    assert not silent, "a deferred import says on its line which dependency it defers:\n" + "\n".join(silent)
    stale = sorted((set(DEFERRED) | set(LOCAL_IMPORT_ALLOWED)) - {(rel, target) for rel, target, *_ in found})
    assert not stale, f"DEFERRED / LOCAL_IMPORT_ALLOWED list imports that are gone; remove them: {stale}"


def test_the_local_import_check_sees_a_hidden_project_import(tmp_path, monkeypatch):
    # the checker itself: an import inside a method, not on the lists, is reported with its file and target
    pkg = tmp_path / PACKAGE
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("X = 1\n")
    (pkg / "b.py").write_text("class C:\n    def f(self):\n        from vlpeft.a import X  # why\n        return X\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert function_local_project_imports() == [("vlpeft/b.py", "vlpeft.a", 3, "        from vlpeft.a import X  # why")]


if __name__ == "__main__":  # python tests/test_architecture.py: the cycles and local imports, as measured
    g = import_graph()
    for c in strongly_connected(g):
        print(f"cycle: {' -> '.join(_one_cycle(g, set(c)))}\n  component ({len(c)}): {', '.join(c)}")
    local = function_local_project_imports()
    print(f"function-local project imports: {len(local)}")
    for rel, _target, line, src in local:
        print(f"  {rel}:{line}: {src.strip()}")


# --- the trainable set follows where modules landed, not what a site's name predicts ----------------------------
def _toy_backbone():
    from torch import nn

    from vlpeft._protocol import Backbone, Candidates, Site

    class Toy(Backbone):
        """Registers every attached module in its own ModuleDict, under a key unrelated to the site's name."""

        def __init__(self):
            super().__init__()
            self.block = nn.Linear(4, 4)
            self.pets = nn.ModuleDict()

        @property
        def hidden_size(self) -> int:
            return 4

        def candidates(self):
            return Candidates(count=1)

        def sites(self):
            return [Site("toy", 0, "block", "par", 4, "block.adapter")]

        def attach(self, site, module):
            self.pets[f"m{len(self.pets)}"] = module

        def base_trainable(self, policy):
            return []

    return Toy()


def test_the_trainable_set_comes_from_where_attach_put_the_modules():
    from vlpeft.pet._base import PetSpec, Recipe, inject
    from vlpeft.pet.trainable import apply_trainable

    bb = _toy_backbone()
    report = inject(bb, Recipe("toy", (PetSpec("parallel_adapter", ("par",), {"bottleneck": 2}),)))
    landed = {n for n, _ in bb.pets.named_parameters(prefix="pets")}
    assert landed and report.param_names() == landed  # the old report said block.adapter.*, which is no parameter
    trainable = set(apply_trainable(bb, report, "none"))
    assert trainable == landed
    assert all(p.requires_grad for p in bb.pets.parameters())
    assert not any(p.requires_grad for p in bb.block.parameters())


def test_an_attach_that_registers_nothing_is_refused_by_name():
    import pytest

    from vlpeft.pet._base import PetError, PetSpec, Recipe, inject

    bb = _toy_backbone()
    kept = []
    type(bb).attach = lambda self, site, module: kept.append(module)  # held outside the module tree
    with pytest.raises(PetError, match="without registering its parameter"):
        inject(bb, Recipe("toy", (PetSpec("parallel_adapter", ("par",), {"bottleneck": 2}),)))
