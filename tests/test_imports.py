"""Imports run one way (DESIGN.md, "Parts and their seams"): no rl_vf module imports one that imports
it back, not even through an import inside a function (the lazy imports that used to hide the
cli -> compare -> cli circle).

The graph is read from the source with ``ast``, nothing is imported. An edge A -> B is an import of
rl_vf module B anywhere in A's file (top level, inside a function or class, under an ``if``):
``import rl_vf.b``, ``from rl_vf.b import x``, ``from rl_vf import b`` (B = rl_vf.b when rl_vf/b.py or
rl_vf/b/ exists, else B = rl_vf, the name being something the package's __init__ defines) and
relative imports alike. Importing a submodule also runs its package's __init__, so A -> rl_vf.p.m
adds A -> rl_vf.p as well, except when A is itself inside rl_vf.p: a package whose __init__
re-exports its submodules (rl_vf.algos) would otherwise be a circle with each of them (Python
imports that fine: the package is already in sys.modules). The __init__'s own imports count like
any others.
"""
from __future__ import annotations

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def modules(root: str, package: str) -> dict[str, str]:
    """{module name: file} for every .py file of ``package`` (a folder under ``root``)."""
    out = {}
    for folder, dirs, files in os.walk(os.path.join(root, package)):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        parts = os.path.relpath(folder, root).split(os.sep)
        for name in sorted(files):
            if name.endswith(".py"):
                stem = name[:-3]
                out[".".join(parts if stem == "__init__" else [*parts, stem])] = os.path.join(folder, name)
    return out


def imported_modules(node: ast.AST, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The modules of ``known`` that one import statement in ``module`` imports."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from the module's package, one level up per extra dot
            here = module.split(".") if is_package else module.split(".")[:-1]
            here = here[:len(here) - (node.level - 1)]
            base = ".".join([*here, *([base] if base else [])])
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
    out = []
    for name in names:
        while name and name not in known:  # import rl_vf.x.y where y is not a module: rl_vf.x
            name = name.rpartition(".")[0]
        if name:
            out.append(name)
    return out


def import_graph(root: str, package: str) -> dict[str, dict[str, int]]:
    """{module: {imported module: line of its first import}} of every module of ``package``."""
    files = modules(root, package)
    graph = {}
    for module, path in files.items():
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        edges: dict[str, int] = {}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in imported_modules(node, module, path.endswith("__init__.py"), set(files)):
                    parts = target.split(".")
                    for name in (".".join(parts[:i]) for i in range(1, len(parts) + 1)):  # packages first
                        inside = module == name or module.startswith(name + ".")
                        if name in files and not inside:
                            edges[name] = min(edges.get(name, node.lineno), node.lineno)
        graph[module] = edges
    return graph


def find_cycles(graph: dict[str, dict | set]) -> list[list[str]]:
    """Every elementary cycle of ``graph``, each as [a, b, ..., a] starting at its smallest module."""
    order = sorted(graph)
    cycles = []

    def walk(start: str, path: list[str], on_path: set[str]) -> None:
        for nxt in sorted(graph.get(path[-1], ())):
            if nxt == start:
                cycles.append([*path, start])
            elif nxt > start and nxt not in on_path and nxt in graph:
                on_path.add(nxt)
                walk(start, [*path, nxt], on_path)
                on_path.discard(nxt)

    for start in order:
        walk(start, [start], {start})
    return cycles


def describe(cycle: list[str], graph: dict[str, dict[str, int]], root: str) -> str:
    files = modules(root, cycle[0].split(".")[0])
    sites = ", ".join(f"{os.path.relpath(files[a], root)}:{graph[a][b]} imports {b}" for a, b in zip(cycle, cycle[1:]))
    return f"{' -> '.join(cycle)}  ({sites})"


def test_no_import_cycles_in_rl_vf():
    graph = import_graph(ROOT, "rl_vf")
    assert "rl_vf.compare" in graph and "rl_vf.algos.ppo" in graph
    cycles = find_cycles(graph)
    assert not cycles, "import cycles (module -> module it imports):\n" + "\n".join(
        describe(c, graph, ROOT) for c in cycles)


def test_the_checker_finds_cycles_hidden_in_functions(tmp_path):
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert find_cycles({"a": {"b"}, "b": {"a", "c"}, "c": {"b"}, "d": {"a"}}) == [["a", "b", "a"], ["b", "c", "b"]]
    assert find_cycles({"x": {"y"}, "y": {"z"}, "z": {"x"}}) == [["x", "y", "z", "x"]]

    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from pkg.sub.leaf import LEAF\n")
    (pkg / "sub" / "leaf.py").write_text("from . import other\nLEAF = 1\n")  # relative: pkg.sub.other
    (pkg / "sub" / "other.py").write_text("import os\n")
    (pkg / "a.py").write_text("from pkg import b\nfrom pkg.sub import LEAF\n")
    (pkg / "b.py").write_text("def f():\n    from pkg.a import g  # lazy: still an edge\n    return g\n")
    (pkg / "c.py").write_text("import pkg.sub.other\n")  # runs pkg.sub's __init__ first
    graph = import_graph(str(tmp_path), "pkg")
    assert graph["pkg.a"] == {"pkg.b": 1, "pkg.sub": 2}
    assert graph["pkg.c"] == {"pkg.sub": 1, "pkg.sub.other": 1}
    assert graph["pkg.sub"] == {"pkg.sub.leaf": 1} and graph["pkg.sub.leaf"] == {"pkg.sub.other": 1}
    assert find_cycles(graph) == [["pkg.a", "pkg.b", "pkg.a"]]
    assert describe(["pkg.a", "pkg.b", "pkg.a"], graph, str(tmp_path)) == (
        f"pkg.a -> pkg.b -> pkg.a  ({os.path.join('pkg', 'a.py')}:1 imports pkg.b, "
        f"{os.path.join('pkg', 'b.py')}:2 imports pkg.a)")


def test_the_report_helpers_stand_alone():
    """rl_vf.report (used by compare and diagnostics) imports no rl_vf module and not torch."""
    with open(os.path.join(ROOT, "rl_vf", "report.py")) as f:
        tree = ast.parse(f.read())
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module or "." for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {n for n in names if n.split(".")[0] in ("rl_vf", "torch", ".")}, names
