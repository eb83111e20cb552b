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
