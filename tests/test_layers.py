"""The layers of docs/architecture.md: core/ and pipeline/ never import Qt, napari or argparse
(nor the front ends), core/ never imports pipeline/, and the pipeline starts without torch."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "napari_deepdewedge"
GUI_OR_PARSER = {"argparse", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui",
                 "superqt", "vispy"}
FRONT_ENDS = {"widgets", "cli", "_launch", "_reader", "_writer", "_sample_data"}


def _modules(layer: str) -> list[Path]:
    """Every module of a layer, its subpackages' included."""
    return sorted((PACKAGE / layer).rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = ["napari_deepdewedge", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path):
    """Every import in a module, including those inside functions: (absolute name, line)."""
    try:
        package = _module_name(path).split(".")
        if path.name != "__init__.py":
            package = package[:-1]
    except ValueError:  # a module outside the package (the self-test below)
        package = ["napari_deepdewedge", path.parent.name]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            yield name, node.lineno
            for alias in node.names:  # from .. import widgets
                yield f"{name}.{alias.name}", node.lineno


def _forbidden(name: str, layer: str) -> bool:
    parts = name.split(".")
    if parts[0] in GUI_OR_PARSER:
        return True
    if parts[0] == "napari_deepdewedge" and len(parts) > 1:
        if parts[1] in FRONT_ENDS:
            return True
        if layer == "core" and parts[1] == "pipeline":
            return True
    return False


@pytest.mark.parametrize("layer", ["core", "pipeline"])
def test_no_gui_parser_or_front_end_imports_in_any_module(layer):
    modules = _modules(layer)
    assert len(modules) >= (10 if layer == "core" else 5)
    bad = [f"{path.relative_to(PACKAGE)}:{line} imports {name}"
           for path in modules for name, line in _imports(path) if _forbidden(name, layer)]
    assert not bad, bad


def test_the_rule_catches_an_offender(tmp_path):
    """The check above is not vacuous: a lazy import inside a function is found."""
    fake = tmp_path / "pipeline" / "x.py"
    fake.parent.mkdir()
    fake.write_text("def f():\n    from ..widgets import _fit\n    import argparse\n")
    found = [name for name, _ in _imports(fake) if _forbidden(name, "pipeline")]
    assert "napari_deepdewedge.widgets" in found and "argparse" in found


def test_importing_every_core_and_pipeline_module_loads_no_qt_or_napari():
    names = [_module_name(p) for layer in ("core", "pipeline") for p in _modules(layer)]
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(GUI_OR_PARSER - {'argparse'})!r}"
        " or m.startswith(('napari_deepdewedge.widgets', 'napari_deepdewedge.cli')))\n"
        "print(len(bad), bad[:10])\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)})
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "0 []", res.stdout


def test_pipeline_import_does_not_load_torch():
    code = "import sys, napari_deepdewedge.pipeline; print('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)})
    assert res.stdout.strip() == "False", res.stderr[-2000:]


def test_no_module_reaches_into_argparse_private_attributes():
    """Config merging reads the CLI's own option specs, not argparse internals."""
    private = {"_actions", "_SubParsersAction", "_option_string_actions", "_StoreAction",
               "_action_groups", "_mutually_exclusive_groups", "_defaults"}
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in private:
                bad.append(f"{path.relative_to(PACKAGE)}:{node.lineno} .{node.attr}")
    assert not bad, bad


# ------------------------------------------------------------------ the rooms of core/ and cycles

#: what each room of core/ may import (docs/architecture.md): "base" is the modules directly in
#: core/ (errors, device, perf, oom, fourier), the others are its subpackages, in flow order
ROOMS = {
    "base": set(),
    "io": {"base"},
    "reconstruct": {"base", "io"},
    "model": {"base", "io"},
    "refine": {"base", "io", "reconstruct", "model"},
    "evaluate": {"base", "io", "reconstruct"},
    # fit.signals measures the fit's progress with evaluate.metrics' FSC (issue 22)
    "fit": {"base", "io", "reconstruct", "model", "refine", "evaluate"},
}


def _graph(paths) -> dict[str, set[str]]:
    """Module → the package modules it imports (any import, also inside functions or under
    ``TYPE_CHECKING``), each name resolved to the longest module it names. A package that
    contains the module is left out (``from . import x`` names it, but Python runs a package's
    ``__init__`` before any of its modules anyway)."""
    known = {_module_name(p) for p in paths}
    graph = {}
    for path in paths:
        me = _module_name(path)
        edges = set()
        for name, _ in _imports(path):
            parts = name.split(".")
            for n in range(len(parts), 0, -1):
                target = ".".join(parts[:n])
                if target in known:
                    if target != me and not me.startswith(target + "."):
                        edges.add(target)
                    break
        graph[me] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _room(module: str) -> str:
    parts = module.split(".")  # napari_deepdewedge.core[.room].module
    return parts[2] if len(parts) > 3 else "base"


def test_no_import_cycle_between_modules_of_core_and_pipeline():
    graph = _graph(_modules("core") + _modules("pipeline"))
    assert len(graph) >= 40
    assert not _cycles(graph), _cycles(graph)


def test_the_cycle_finder_finds_a_cycle_hidden_in_a_function(tmp_path):
    pkg = tmp_path / "napari_deepdewedge" / "core"
    pkg.mkdir(parents=True)
    (pkg / "a.py").write_text("from .b import x\n")
    (pkg / "b.py").write_text("def f():\n    from .c import y\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import z\n")
    (pkg / "d.py").write_text("from .a import x\n")
    names = {p: f"napari_deepdewedge.core.{p.stem}" for p in pkg.glob("*.py")}
    graph = {names[p]: {f"napari_deepdewedge.core.{n.split('.')[-2]}" for n, _ in _imports(p)
                        if n.count(".") == 3} for p in names}
    assert _cycles(graph) == [["napari_deepdewedge.core.a", "napari_deepdewedge.core.b",
                               "napari_deepdewedge.core.c"]]


def test_each_room_of_core_imports_only_the_rooms_before_it():
    paths = _modules("core")
    graph = _graph(paths)
    rooms = {_room(m) for m in graph}
    assert rooms == set(ROOMS), f"a room without rules (add it to ROOMS and architecture.md): {rooms - set(ROOMS)}"
    bad = sorted(f"{m} imports {t}" for m, targets in graph.items() for t in targets
                 if _room(t) != _room(m) and _room(t) not in ROOMS[_room(m)]
                 and not t.endswith(".core"))
    assert not bad, bad
