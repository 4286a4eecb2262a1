"""The package imports downwards only: no import cycles (function-level imports included), and every module
imports alone in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]


PACKAGE = "anvm_stats"


def modules(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """Every module of ``package`` under ``root``: dotted name -> file."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` names (before its imported names)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its body (top level or inside functions)."""
    mods = modules(root, package)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_package, node)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in mods else base)
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            for t in targets:
                while t and t not in mods and "." in t:     # import anvm_stats.x.y.attr -> anvm_stats.x.y
                    t = t.rsplit(".", 1)[0]
                if t in mods and t != name:
                    graph[name].add(t)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[frozenset[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v] & graph.keys()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(frozenset(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_function_level_relative_and_absolute_imports(tmp_path):
    """A cycle hidden in a function-level import, or written ``import pkg.x``, is still a cycle."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .x import f\n")
    (pkg / "x.py").write_text("def f():\n    from .sub.y import g\n    return g\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "y.py").write_text("import pkg.x\nfrom .. import z\n")
    (pkg / "z.py").write_text("")
    graph = import_graph(tmp_path, "pkg")
    assert graph == {"pkg": {"pkg.x"}, "pkg.x": {"pkg.sub.y"}, "pkg.sub": set(), "pkg.sub.y": {"pkg.x", "pkg.z"},
                     "pkg.z": set()}
    assert cycles(graph) == [frozenset({"pkg.x", "pkg.sub.y"})]
    assert "anvm_stats.montecarlo" in import_graph()["anvm_stats.parallel.tasks"]


def test_no_import_cycles():
    """Modules import downwards only; the package __init__ (which re-exports) is left out: nothing may import it
    from inside the package."""
    graph = import_graph()
    inward = sorted(m for m, deps in graph.items() if PACKAGE in deps and m != PACKAGE)
    assert not inward, f"modules importing the package root: {inward}"
    del graph[PACKAGE]
    found = cycles(graph)
    assert not found, "import cycles: " + "; ".join(" <-> ".join(sorted(c)) for c in found)


@pytest.mark.slow
def test_every_module_imports_alone():
    """Each module imported first, in a process that holds only the third-party libraries (forked per module),
    raises nothing: no module depends on another having been imported before it."""
    names = sorted(modules())
    script = f"""
import os, sys, traceback
sys.path.insert(0, {str(ROOT)!r})
import numpy, scipy.stats, torch, xarray, dask, tqdm  # noqa: E401  heavy libraries, shared by the forks
failed = []
for name in {names!r}:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            __import__(name)
            code = 0
        except BaseException:
            os.write(w, traceback.format_exc().encode()[-2000:])
            code = 1
        os._exit(code)
    os.close(w)
    msg = os.read(r, 4000).decode()
    os.close(r)
    if os.waitpid(pid, 0)[1] != 0:
        failed.append(name + ": " + msg)
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""
    if not hasattr(__import__("os"), "fork"):
        pytest.skip("needs os.fork")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr


def _module_imports(path, package):
    """(module, names) imported by ``path``'s module-level code (``if`` blocks included, functions excluded)."""
    import ast

    tree = ast.parse(path.read_text())
    out, todo = [], list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If):
            todo += node.body + node.orelse
        elif isinstance(node, ast.ImportFrom) and node.level:
            base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
            out.append((f"{base}.{node.module}" if node.module else base, [a.name for a in node.names]))
    return out


@pytest.mark.parametrize("sub", ["training", "calibration", "hessian", "devices", "testing"])
def test_subpackage_modules_import_downwards_without_private_names(sub):
    """No import cycle between the modules of a subpackage (also none hidden under TYPE_CHECKING or at the bottom
    of a file), and no private ``_name`` imported from a sibling module."""
    from pathlib import Path

    import anvm_stats

    root = Path(anvm_stats.__file__).parent / sub
    package = f"anvm_stats.{sub}"
    graph = {}
    for path in root.glob("*.py"):
        mod = package if path.stem == "__init__" else f"{package}.{path.stem}"
        imports = _module_imports(path, package)
        private = [(m, n) for m, names in imports for n in names if n.startswith("_") and m.startswith(package)]
        assert not private, (mod, private)
        graph[mod] = {m for m, _ in imports if m.startswith(package + ".") and m != mod}
    state = {}

    def visit(m, stack):
        assert state.get(m) != "open", " -> ".join(stack + [m])
        if state.get(m) is None:
            state[m] = "open"
            for n in graph.get(m, ()):
                visit(n, stack + [m])
            state[m] = "done"

    for m in graph:
        visit(m, [])
