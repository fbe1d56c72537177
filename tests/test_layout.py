"""The package's layout is its architecture (issue 17): layers, imports pointing down, no circle.

Layers, lowest first (a module may import its own layer and the layers below, never above):

0. private foundation: ``multireg._backend``, ``_checks``, ``_dtypes``, ``_threads``, ``_cache``,
   ``_version``;
1. numerics: ``grid``, ``gridops``, ``interpolation``, ``transforms``, ``distances``,
   ``regularizers``, ``optimize``, ``_bspline``, ``data``;
2. files: ``multireg.io``;
3. problems: ``multireg.problems`` (registration, batch, homotopy, separable, superres, dynamics);
4. workflow: ``multireg.workflow`` (apply, itk, metrics, many, validate, report, figures, demo);
5. the facade ``multireg`` (``multireg/__init__.py``), which only re-exports;
6. the command line ``multireg.cli``;
7. ``multireg.testing`` and ``multireg.__main__``.

Imports are read from the source (every ``import`` statement, at module level or inside a function:
a lazy import is still an arrow), so the test needs no import of torch or JAX.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "multireg"
FOUNDATION = {"_backend", "_checks", "_dtypes", "_threads", "_cache", "_version"}
NUMERICS = {"grid", "gridops", "interpolation", "transforms", "distances", "regularizers",
            "optimize", "_bspline", "data"}
PACKAGES = {"io": 2, "problems": 3, "workflow": 4, "cli": 6, "testing": 7}
MAX_LINES = 800
# A module over MAX_LINES lines says why in its docstring, under this heading.
LENGTH_NOTE = "Why this module is long:"


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def layer(name: str) -> int:
    parts = name.split(".")
    if name == "multireg":
        return 5
    if parts[1] == "__main__":
        return 7
    if parts[1] in FOUNDATION:
        return 0
    if parts[1] in NUMERICS:
        return 1
    return PACKAGES[parts[1]]


def _resolve(name: str) -> str:
    """The longest prefix of a dotted name that is one of our modules."""
    while name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def imports(name: str) -> set[str]:
    """The package's own modules that module ``name`` imports anywhere in its source."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # "from a.b import c" imports module a.b.c where c is a module, else a.b
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                       for a in node.names]
        else:
            continue
        found |= {_resolve(t) for t in targets if t == "multireg" or t.startswith("multireg.")}
    found.discard(name)
    return found


GRAPH = {name: imports(name) for name in MODULES}


def test_every_module_has_a_layer():
    unplaced = []
    for name in MODULES:
        try:
            layer(name)
        except (KeyError, IndexError):
            unplaced.append(name)
    assert not unplaced, f"modules outside every layer: {unplaced}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down(name):
    up = sorted(t for t in GRAPH[name] if layer(t) > layer(name))
    assert not up, f"{name} (layer {layer(name)}) imports a higher layer: {up}"


def test_no_circle():
    """No cycle among the modules, lazy imports included (Tarjan's strongly connected
    components)."""
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
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
                cycles.append(sorted(comp))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_walker_sees_every_kind_of_import(tmp_path):
    """The graph is only as good as its reader: a lazy import, a relative one and a submodule
    named in ``from package import module`` are arrows; a name from a module is not a module."""
    pkg = tmp_path / "multireg"
    (pkg / "problems").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "grid.py").write_text("X = 1\n")
    (pkg / "problems" / "__init__.py").write_text("")
    (pkg / "problems" / "a.py").write_text(
        "from multireg.grid import X\n"
        "def f():\n    from . import b\n    from multireg import grid\n"
    )
    (pkg / "problems" / "b.py").write_text("from ..grid import X\nfrom .a import f\n")
    global MODULES
    saved = MODULES
    try:
        MODULES = {"multireg": pkg / "__init__.py", "multireg.grid": pkg / "grid.py",
                   "multireg.problems": pkg / "problems" / "__init__.py",
                   "multireg.problems.a": pkg / "problems" / "a.py",
                   "multireg.problems.b": pkg / "problems" / "b.py"}
        assert imports("multireg.problems.a") == {"multireg.grid", "multireg.problems.b"}
        assert imports("multireg.problems.b") == {"multireg.grid", "multireg.problems.a"}
    finally:
        MODULES = saved


@pytest.mark.parametrize("name", sorted(MODULES))
def test_long_modules_say_why(name):
    path = MODULES[name]
    lines = len(path.read_text().splitlines())
    if lines <= MAX_LINES:
        return
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    assert LENGTH_NOTE in doc, (
        f"{path.relative_to(ROOT.parent)}: {lines} lines (> {MAX_LINES}), and its docstring "
        f"does not say why ({LENGTH_NOTE!r})")


def test_tests_mirror_the_layout():
    """A test module for a module in a sub-package sits in the matching tests/ sub-folder."""
    tests = Path(__file__).resolve().parent
    misplaced = []
    for path in tests.glob("test_*.py"):
        for pkg in PACKAGES:
            if f"multireg.{pkg}.{path.stem[5:]}" in MODULES:
                misplaced.append(f"{path.name} -> tests/{pkg}/")
    assert not misplaced, misplaced
